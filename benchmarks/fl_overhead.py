"""Federated overhead: a simulated federated run vs the same local training in one plain loop.

On the smoke federation (3 sites, generated once and cached) it runs, with one CPU for
Ray (one simulated site at a time, like the plain loop) and DP off (the federated
machinery only):

1. a *start-up* run: the same simulation for one round whose ClientApp only imports the
   training stack and echoes the weights back: Ray and Flower start-up, actor start-up
   (each imports torch) and one message round trip;
2. the federated run: ``flwr.simulation.run_simulation`` with our ServerApp and ClientApp
   (``server.app.build_server_app`` / ``client.app.build_client_app``), federated
   evaluation off;
3. the plain loop: the same rounds, sites, examples, epochs, seeds, optimizer and model
   through ``client.training.train.train_local`` plus a FedAvg, in this process with data in
   memory; it runs before and after the federated runs and their mean is used.

Figures: wall times; ``fl_over_local_ratio`` (everything included); ``ray_startup_s`` (run 1);
``fl_first_round_extra_s`` (the federated run's first round minus the plain loop's: actor
start-up, imports and first data load inside the run); ``fl_steady_rounds_over_local_ratio``
(rounds 2.. as the server loop times them vs the same rounds of the plain loop: the
overhead once start-up is over, what the 1.2x target is about);
``fl_overhead_per_site_round_s``, the fixed cost per site and round (load the cached
tensors, build the model, ledger, messages, validation, aggregation), which sets the ratio
for any other amount of local work; and, from a fourth run with ``secure-aggregation``
(SecAgg+: four message exchanges per train round, masking and unmasking),
``secagg_steady_rounds_over_fl_ratio`` (rounds 2.. vs the plain federated run) and
``secagg_round1_max_weight_diff_vs_fl`` (its model after round 1 vs the plain run's, from
the same site updates: SecAgg+'s quantisation; later rounds amplify any difference). Subtracting run 1 from run 2 is not reported: actor
start-up under load varies by more than the whole local training of this federation.
Writes ``benchmarks/results/fl_overhead.json``. Full: 6 rounds of 5 epochs; ``--quick``: 2 rounds of 2.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy / torch load; Ray workers inherit it

from benchmarks._util import bench_main, single_thread  # noqa: E402

SMOKE = "smoke"


@dataclass
class SimTiming:
    total_s: float  # run_simulation wall, Ray start and shutdown included
    rounds_s: list[float] = field(default_factory=list)  # each round's wall as the server loop times it
    sites_used: list[int] = field(default_factory=list)  # accepted replies per round
    update_bytes: list[float] = field(default_factory=list)  # mean bytes per update received, per round
    final_arrays: Any = None  # the global model after the last round (ArrayRecord)
    first_arrays: Any = None  # the global model after round 1


def smoke_federation() -> Path:
    """The smoke preset's synthetic federation (generated once into the ImplantFL cache)."""
    from simulations.federation import ensure_synthetic

    return ensure_synthetic(SMOKE, 0)


def cache_root_for(root: Path) -> Path:
    """Where the simulation runner keeps this federation's preprocessed tensors."""
    import hashlib

    from simulations.federation import default_cache_root

    return default_cache_root() / "preprocessed" / hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]


def build_noop_client_app():  # noqa: ANN201
    """A ClientApp that imports the training stack and echoes the weights: start-up cost only."""
    from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def _train(msg: Message, _context: Any) -> Message:
        import client.task  # noqa: F401 - the real ClientApp's imports (torch, opacus set-up code)
        import client.training.train  # noqa: F401

        arrays = next(iter(msg.content.array_records.values()))
        metrics = MetricRecord({"num-examples": 1, "train-loss": 0.0, "train-accuracy": 0.0})
        content = RecordDict({"arrays": arrays, "metrics": metrics, "site": ConfigRecord({"status": "ok"})})
        return Message(content=content, reply_to=msg)

    return app


NO_DP_POLICY = {"require-dp": False}  # the simulated sites' policy: a plain run is allowed


def simulate(sites: Sequence[Any], cfg: Any, catalog: Any, *, num_cpus: int, client_app: Any = None,
             expect_sites: int | None = None, ray_address: str | None = None) -> SimTiming:
    """Run our ServerApp over ``sites`` on Flower's simulation engine; time it.

    Raises ``RuntimeError`` when a round used fewer than ``expect_sites`` replies (default:
    all sites), so that a benchmark never times rounds in which sites refused or failed.
    Ray is a local instance of ``num_cpus`` CPUs, or the cluster at ``ray_address``
    (:mod:`simulations.ray_cluster`, as ``implantfl-sim run`` uses it).
    """
    from flwr.simulation import run_simulation

    from client.app import build_client_app
    from server.app import RunSetup, build_server_app
    from simulations.ray_cluster import ray_session

    timing = SimTiming(total_s=0.0)

    def on_round_end(record: Any, arrays: Any) -> None:
        if timing.first_arrays is None:
            timing.first_arrays = arrays
        timing.rounds_s.append(record.wall_s)
        timing.sites_used.append(int(record.aggregate.get("sites-used", 0)))
        timing.update_bytes.append(float(record.aggregate.get("update-bytes", 0.0)))

    setup = RunSetup(config=cfg, catalog=catalog, checkpoint_dir=None, on_round_end=on_round_end)
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}}
    flwr_logger = logging.getLogger("flwr")
    old = flwr_logger.level
    flwr_logger.setLevel(logging.ERROR)  # Flower's per-round INFO and deprecation notices
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    t0 = time.perf_counter()
    try:
        with ray_session(ray_address, cpus=num_cpus):
            run_simulation(server_app=build_server_app(setup), client_app=client_app or build_client_app(list(sites)),
                           num_supernodes=len(sites), backend_config=backend)
    finally:
        flwr_logger.setLevel(old)
    timing.total_s = time.perf_counter() - t0
    timing.final_arrays = setup.final.arrays if setup.final is not None else None
    if setup.final is None or len(timing.rounds_s) != cfg.num_server_rounds:
        raise RuntimeError("the simulation ended early; run it with the flwr logger at INFO to see why")
    want = len(sites) if expect_sites is None else expect_sites
    if min(timing.sites_used) < want:
        raise RuntimeError(f"sites used per round {timing.sites_used}, expected {want}: replies were refused or failed")
    return timing


def task_settings(cfg: Any, n: int, rnd: int) -> Any:
    """The TrainSettings ``client.task`` builds for a site with ``n`` images in round ``rnd``.

    The server sends the run config's ``proximal-mu`` whatever the strategy, and
    ``client.task`` applies it (runs here set it to 0). The noise multiplier is the run
    config's (no ``target-epsilon`` planning).
    """
    from client.task import train_settings

    return train_settings(cfg, n, rnd, noise=cfg.noise_multiplier, proximal_mu=cfg.proximal_mu)


def max_abs_diff(a: Any, b: Any) -> float:
    """Largest absolute difference between two ArrayRecords' values (same keys)."""
    import numpy as np

    return max(float(np.max(np.abs(a[k].numpy().astype(np.float64) - b[k].numpy()))) for k in a.keys())


def local_loop(data: Sequence[tuple[Any, Any]], cfg: Any, num_classes: int) -> list[float]:
    """The same training as the federation, in one plain loop; wall per round."""
    import torch

    from client.training.train import train_local
    from common.models import build_model

    torch.manual_seed(cfg.seed)
    global_state = build_model(cfg.model, num_classes=num_classes, image_size=cfg.image_size).state_dict()
    model = build_model(cfg.model, num_classes=num_classes, image_size=cfg.image_size)
    walls = []
    for rnd in range(1, cfg.num_server_rounds + 1):
        t0 = time.perf_counter()
        states, weights = [], []
        for x, y in data:
            model.load_state_dict(global_state)
            res = train_local(model, x, y, task_settings(cfg, len(y), rnd), device=torch.device("cpu"))
            states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            weights.append(res.num_examples)
        total = sum(weights)
        global_state = {k: sum(s[k] * (w / total) for s, w in zip(states, weights, strict=True)) for k in states[0]}
        walls.append(time.perf_counter() - t0)
    return walls


def run(quick: bool) -> tuple[dict[str, float], dict[str, str], dict[str, object]]:
    from client.data.site_data import load_site
    from common.preprocess_params import PreprocessParams
    from simulations.federation import Federation, simulated_sites
    from simulations.presets import load_preset

    single_thread()
    rounds, epochs = (2, 2) if quick else (6, 5)
    cfg = load_preset(SMOKE).run_config(**{"num-server-rounds": rounds, "local-epochs": epochs, "dp": False,
                                           "fraction-evaluate": 0.0, "proximal-mu": 0.0, "head": "none"})
    fed = Federation.open(smoke_federation())
    params = PreprocessParams(image_size=cfg.image_size)
    cache = cache_root_for(fed.root)
    data = [load_site(fed.site_dirs[n], catalog=fed.catalog, params=params, cache_dir=cache / n,
                      val_fraction=cfg.val_fraction).train() for n in fed.site_dirs]  # fills the cache
    import flwr.simulation  # noqa: F401 - import cost is not start-up of a run
    import ray  # noqa: F401

    with tempfile.TemporaryDirectory() as tmp:
        sites = simulated_sites(fed, state_dir=Path(tmp) / "state", cache_dir=cache, params=params,
                                policy=NO_DP_POLICY)
        local = local_loop(data, cfg, len(fed.catalog))
        startup = simulate(sites, cfg.replace(num_server_rounds=1), fed.catalog, num_cpus=1,
                           client_app=build_noop_client_app())
        fl = simulate(sites, cfg, fed.catalog, num_cpus=1)
        secure = simulate(sites, cfg.replace(secure_aggregation=True), fed.catalog, num_cpus=1)
        local_again = local_loop(data, cfg, len(fed.catalog))  # before and after the federation: load averages out
    local = [(a + b) / 2 for a, b in zip(local, local_again, strict=True)]
    local_s = sum(local)
    steady_fl, steady_local = sum(fl.rounds_s[1:]), sum(local[1:])
    figures = {
        "fl_total_s": round(fl.total_s, 2),
        "local_loop_s": round(local_s, 2),
        "fl_over_local_ratio": round(fl.total_s / local_s, 3),
        "ray_startup_s": round(startup.total_s, 2),
        "fl_first_round_extra_s": round(fl.rounds_s[0] - local[0], 2),
        "fl_steady_rounds_over_local_ratio": round(steady_fl / steady_local, 3),
        "fl_overhead_per_site_round_s": round((steady_fl - steady_local) / ((rounds - 1) * len(sites)), 3),
        "secagg_total_s": round(secure.total_s, 2),
        "secagg_steady_rounds_over_fl_ratio": round(sum(secure.rounds_s[1:]) / steady_fl, 3),
        "secagg_round1_max_weight_diff_vs_fl": float(f"{max_abs_diff(secure.first_arrays, fl.first_arrays):.3g}"),
    }
    units = {k: "x" if "ratio" in k else "weight" if "diff" in k else "s" for k in figures}
    info = {"quick": quick, "preset": SMOKE, "sites": len(sites), "rounds": rounds, "local_epochs": epochs,
            "train_examples": [len(y) for _, y in data], "model": cfg.model, "optimizer": cfg.optimizer, "dp": False, "ray_num_cpus": 1,
            "federated_evaluation": False, "threads": 1, "fl_rounds_s": [round(r, 3) for r in fl.rounds_s],
            "local_rounds_s": [round(r, 3) for r in local], "secagg_rounds_s": [round(r, 3) for r in secure.rounds_s]}
    return figures, units, info


def main(argv: list[str] | None = None) -> int:
    return bench_main("fl_overhead", __doc__, run, argv, quick_help="2 rounds of 2 local epochs (< 2 min)")


if __name__ == "__main__":
    sys.exit(main())
