"""Where a simulated federation runs: a local Ray instance of its own, or a Ray cluster the researcher names.

Ray's convention, as its own tools follow it: ``--ray-address ADDR`` or ``RAY_ADDRESS``
names a running cluster, which the run joins without sizing it (``num_cpus`` /
``num_gpus`` belong to whoever started the cluster). Without one, a run starts its own
local instance (``address="local"``), never one it happens to find on the machine: a
cluster once started with ``ray start`` leaves ``/tmp/ray/ray_current_cluster`` behind,
and a plain run must not attach to it.

On a cluster the simulated sites' ClientApps run on any node, so everything they read or
write (data, caches, privacy ledgers, the encoder) must live where every node sees it at
the same path (``--shared-dir``), and every node must run the same ImplantFL code.
:func:`check_nodes` proves both before round 1: the driver writes a token under each
path, a task pinned to every node reads it back and hashes its code.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import ConfigError
from common.parallel import available_cores

ENV = "RAY_ADDRESS"
PACKAGES = ("common", "client", "server", "simulations")
CHECK_TIMEOUT_S = 120.0
CONNECT_TIMEOUT_S = 5.0
_MARKER = ".implantfl-node-check"


@dataclass(frozen=True)
class Execution:
    """Where the run's simulation engine ran: ``local`` or the cluster address, and what that held."""

    where: str
    nodes: int
    cpus: float
    gpus: float

    def to_dict(self) -> dict[str, Any]:
        return {"ray": self.where, "nodes": self.nodes, "cpus": self.cpus, "gpus": self.gpus}


def cluster_address(flag: str | None) -> str | None:
    """The cluster to join: ``--ray-address``, else ``RAY_ADDRESS``; None (or "local") = a local instance."""
    value = (flag if flag is not None else os.environ.get(ENV, "")).strip()
    return None if value in ("", "local") else value


def init_kwargs(address: str | None, *, cpus: int | None = None, gpus: float | None = None,
                verbose: bool = False) -> dict[str, Any]:
    """``ray.init`` arguments: a cluster is joined as it is; a local instance is sized to this machine."""
    pythonpath = os.pathsep.join([*sys.path, *([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])])
    kwargs: dict[str, Any] = {
        "runtime_env": {"env_vars": {"PYTHONPATH": pythonpath}},  # workers import this checkout, as the driver does
        "include_dashboard": False,
        "logging_level": logging.INFO if verbose else logging.ERROR,
        "log_to_driver": verbose,
    }
    if address is not None:
        return {"address": address, **kwargs}
    return {"address": "local", "num_cpus": cpus or available_cores(), "num_gpus": gpus if gpus is not None else _gpus(),
            **kwargs}


def reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> str:
    """``address`` if something listens there; else ConfigError (Ray itself would retry a dead head forever).

    ``auto`` is resolved as Ray does, from the cluster file ``ray start`` leaves, and then checked.
    """
    import socket

    if address == "auto":
        current = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
        try:
            address = current.read_text().split()[0]
        except (OSError, IndexError):
            raise ConfigError("--ray-address auto: no Ray cluster was started on this machine") from None
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray-address / {ENV} must be HOST:PORT (or ray://HOST:PORT), not {address!r}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise ConfigError(f"no Ray cluster answers at {address} ({type(e).__name__}); start its head "
                          f"(ray start --head --port {port}) or leave --ray-address and {ENV} unset for a local run"
                          ) from None
    return address


def _gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable CUDA: no GPUs for Ray either
        return 0


@contextmanager
def ray_session(address: str | None, *, cpus: int | None = None, verbose: bool = False) -> Iterator[Execution]:
    """Start (or join) Ray for one run; Flower's engine then finds it running and uses it.

    ``cpus`` sizes a local instance (default: every available core); a cluster is joined as it is.
    """
    import ray

    if ray.is_initialized():
        ray.shutdown()
    if address is not None:
        address = reachable(address)
    try:
        ray.init(**init_kwargs(address, cpus=cpus, verbose=verbose))
    except Exception as e:  # noqa: BLE001 - Ray's own message says what failed
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise ConfigError(f"cannot start or join {where}: {type(e).__name__}: {e}") from None
    try:
        resources = ray.cluster_resources()
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        yield Execution(address or "local", nodes, float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0)))
    finally:
        if ray.is_initialized():
            ray.shutdown()


def code_version(root: Path | None = None) -> str:
    """SHA-256 over ImplantFL's Python sources (relative path and bytes), as this node has them."""
    base = root or Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for package in PACKAGES:
        for path in sorted((base / package).rglob("*.py")):
            digest.update(path.relative_to(base).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _probe(paths: list[str], tokens: list[str]) -> dict[str, Any]:
    """Run on one node: which paths show the driver's token, and this node's code version."""
    seen = []
    for path, token in zip(paths, tokens, strict=True):
        try:
            seen.append((Path(path) / _MARKER).read_text() == token)
        except OSError:
            seen.append(False)
    return {"seen": seen, "code": code_version()}


def check_nodes(paths: Sequence[Path]) -> int:
    """Every alive node sees ``paths`` (the same storage) and runs this code; else ConfigError. Nodes checked."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    tokens, folders = [], []
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(16)
        (path / _MARKER).write_text(token)
        tokens.append(token)
        folders.append(str(path))
    expected = code_version()
    probe = ray.remote(num_cpus=0)(_probe)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    try:
        refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(folders, tokens) for n in nodes]
        answers = ray.get(refs, timeout=CHECK_TIMEOUT_S)
    except Exception as e:  # noqa: BLE001 - a node that cannot run the probe cannot run a site either
        raise ConfigError(f"the Ray cluster's nodes could not be checked ({type(e).__name__}: {e})") from None
    finally:
        for path in paths:
            (path / _MARKER).unlink(missing_ok=True)
    problems = []
    for node, answer in zip(nodes, answers, strict=True):
        name = node.get("NodeManagerAddress", node["NodeID"][:8])
        missing = [f for f, ok in zip(folders, answer["seen"], strict=True) if not ok]
        if missing:
            problems.append(f"node {name} does not see {', '.join(missing)}")
        if answer["code"] != expected:
            problems.append(f"node {name} runs other ImplantFL code ({answer['code'][:12]}, here {expected[:12]})")
    if problems:
        raise ConfigError("the Ray cluster cannot run this simulation: " + "; ".join(problems) + ". Put --shared-dir "
                          "on storage every node mounts at the same path, and the same checkout and environment "
                          "on every node (docs/cluster.md).")
    return len(nodes)
