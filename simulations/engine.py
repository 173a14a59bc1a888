"""Drive Flower's simulation engine for one run: Ray started or joined, nodes checked, a crash ends the run.

The ServerApp runs in a thread beside the engine. If the engine crashes, the ServerApp
is told (:class:`server.abortable_grid.AbortableGrid`) and ends within a poll, so the
command exits with the reason instead of waiting for replies that never come.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import ImplantFLError

logger = logging.getLogger(__name__)


class SimulationCrashed(ImplantFLError):
    """Flower's simulation runtime failed; ``reason`` says how (the run directory records it)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the simulation runtime crashed: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class EngineOptions:
    """Where and how big: the cluster (None = a local Ray instance) and each simulated site's share."""

    ray_address: str | None = None
    site_cpus: float = 1.0
    site_gpus: float | None = None  # None: 0.5 with CUDA, else 0
    shared_paths: tuple[Path, ...] = ()  # what every node must see (checked on a cluster)
    progress: bool = True
    verbose: bool = False


def simulate(setup: Any, sites: list, num_rounds: int, opts: EngineOptions,
             execution: dict[str, Any]) -> tuple[Any, float]:
    """Run the federation; (final LoopState, seconds). ``execution`` is filled with where it ran."""
    from flwr.simulation import run_simulation

    from client.app import build_client_app
    from common.device import pick_device
    from server.app import build_server_app
    from simulations.ray_cluster import check_nodes, ray_session

    gpus = opts.site_gpus if opts.site_gpus is not None else (0.5 if pick_device().type == "cuda" else 0.0)
    backend = {"client_resources": {"num_cpus": opts.site_cpus, "num_gpus": gpus}}
    setup.abort = threading.Event()
    flwr_logger = logging.getLogger("flwr")
    old = flwr_logger.level
    if not opts.verbose:
        flwr_logger.setLevel(logging.CRITICAL)  # Flower's per-round INFO and its own crash trace: ours says why
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    t0 = time.monotonic()
    try:
        with ray_session(opts.ray_address, verbose=opts.verbose) as where:
            execution.update(where.to_dict(), site_cpus=opts.site_cpus, site_gpus=gpus)
            if opts.ray_address is not None:
                execution["nodes_checked"] = check_nodes(list(opts.shared_paths))
            with _round_progress(num_rounds) if opts.progress else nullcontext(None) as bar:
                if bar is not None:
                    setup.on_round_end = lambda rec, _a: bar(rec)
                t0 = time.monotonic()
                try:
                    run_simulation(server_app=build_server_app(setup), client_app=build_client_app(sites),
                                   num_supernodes=len(sites), backend_config=backend)
                except ImplantFLError as e:
                    if setup.final is None:
                        raise
                    logger.warning("the federation ended failed: %s", e)  # its rounds are recorded: results say why
                except Exception as e:  # noqa: BLE001 - the engine died: stop the ServerApp, say why
                    reason = _root_cause(e)
                    setup.abort_reason.append(f"the simulation runtime crashed ({reason})")
                    setup.abort.set()
                    raise SimulationCrashed(reason) from None
    finally:
        crashed = setup.abort.is_set()
        setup.abort.set()  # whatever happened, a ServerApp thread still waiting stops now
        if not crashed:  # after a crash the ServerApp thread is still winding down: keep its debug lines quiet
            flwr_logger.setLevel(old)
    if setup.final is None:
        raise SimulationCrashed("the federation ended without a result; rerun with --verbose for Flower's logs")
    return setup.final, time.monotonic() - t0


def _root_cause(e: BaseException) -> str:
    while (e.__cause__ or e.__context__) is not None:
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return f"{type(e).__name__}: {e}"


def _round_progress(total: int):  # noqa: ANN202
    from contextlib import contextmanager

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    @contextmanager
    def ctx():  # noqa: ANN202
        with Progress(TextColumn("[bold]federated rounds"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[info]}"), TimeElapsedColumn(), transient=False) as prog:
            task = prog.add_task("rounds", total=total, info="")

            def update(rec: Any) -> None:
                agg = rec.aggregate
                info = f"test acc {agg.get('test-accuracy', float('nan')):.3f}  sites {int(agg.get('sites-used', 0))}"
                prog.update(task, advance=1, info=info)

            yield update

    return ctx()
