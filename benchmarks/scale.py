"""Scale: simulated federations of many tiny sites with the small CNN: wall time and peak memory.

Two simulations on Flower's simulation engine (Ray, one CPU per simulated site, as many
workers as this machine has cores), each with our real ServerApp and ClientApp:

- 100 sites x 5 rounds, every site trains every round;
- 1000 sites sampling 5% (50 sites) per round x 5 rounds;
- the first scenario again on a Ray cluster of two nodes on this machine (Ray's own
  ``ray.cluster_utils.Cluster``, the cores split between them), joined as
  ``implantfl-sim run --ray-address`` joins one: ``..._cluster_wall_s`` and its ratio to
  the local instance of the same run. The cluster is running before the clock starts (a
  researcher's cluster is); the local figure includes starting its own instance.

``min-available-sites`` is the number of sites: Flower's sampler draws its fraction from
the nodes registered *so far*, and in round 1 of a 1000-node simulation that can be a
few hundred. Federated evaluation is off (``fraction-evaluate = 0``): it would double the messages, and
tiny sites have no validation split.

Sites are tiny: the smoke federation's images are split into distinct folders of
``PER_SITE`` images (preprocessed once, outside the timing), and site ``i`` uses split
``i mod K``, each with its own name and privacy ledger. DP-SGD is on, as by default
(noise 1.0; the sites' budget is raised so that tiny sites are not refused).

Peak memory is sampled every 0.25 s over this process and all its descendants (the Ray
GCS, raylet and workers) from ``/proc``: the sum of RSS (shared pages counted once per
process) and of PSS (shared pages split between processes: the memory actually used).

Writes ``benchmarks/results/scale.json``. ``--quick``: 20 sites x 2 rounds and 200 sites
at 5% x 2 rounds.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy / torch load; Ray workers inherit it

from benchmarks._util import bench_main, single_thread  # noqa: E402

PER_SITE = 4  # images per tiny site
SITE_POLICY = {"max-epsilon": 1e6}  # tiny sites spend a lot of epsilon; the budget is not what is measured


@dataclass(frozen=True)
class Scenario:
    sites: int
    fraction: float  # fraction of sites sampled to train per round
    rounds: int

    @property
    def name(self) -> str:
        pct = "" if self.fraction >= 1 else f"{round(self.fraction * 100)}pct_"
        return f"cnn_{self.sites}_sites_{pct}{self.rounds}_rounds"

    @property
    def per_round(self) -> int:
        return max(2, int(self.sites * self.fraction))


def scenarios(quick: bool) -> list[Scenario]:
    if quick:
        return [Scenario(20, 1.0, 2), Scenario(200, 0.05, 2)]
    return [Scenario(100, 1.0, 5), Scenario(1000, 0.05, 5)]


# ------------------------------------------------------------------ memory of a process tree
def _children_map() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _tree(root: int) -> list[int]:
    children, out, todo = _children_map(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _rss_pss_kb(pid: int) -> tuple[int, int]:
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def tree_memory_mb(root: int | None = None) -> tuple[float, float]:
    """(sum of RSS, sum of PSS) in MiB over ``root`` (default: this process) and its descendants."""
    totals = [_rss_pss_kb(pid) for pid in _tree(root or os.getpid())]
    return sum(t[0] for t in totals) / 1024, sum(t[1] for t in totals) / 1024


class PeakMemory:
    """Samples :func:`tree_memory_mb` in a thread; ``peak_rss_mb`` / ``peak_pss_mb`` after ``stop``."""

    def __init__(self, every_s: float = 0.25) -> None:
        self.every_s = every_s
        self.peak_rss_mb = self.peak_pss_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, pss = tree_memory_mb()
            self.peak_rss_mb, self.peak_pss_mb = max(self.peak_rss_mb, rss), max(self.peak_pss_mb, pss)
            self._stop.wait(self.every_s)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------------ tiny sites
def tiny_splits(root: Path, per_site: int) -> tuple[Any, list[Path]]:
    """Split the smoke federation's labelled images into folders of ``per_site`` images (symlinks)."""
    from benchmarks.fl_overhead import smoke_federation
    from client.data.layout import list_items, map_labels
    from client.site.config import read_label_map
    from simulations.federation import Federation

    fed = Federation.open(smoke_federation())
    files: list[tuple[Path, str]] = []
    for site_dir in fed.site_dirs.values():
        items = list_items(site_dir)
        mapping = map_labels(items, fed.catalog, read_label_map(site_dir))
        files += [(site_dir / i.rel, mapping[i.label]) for i in items]
    (root / "sites").mkdir(parents=True)
    (root / "catalog.json").write_bytes((fed.root / "catalog.json").read_bytes())
    splits = []
    for k in range(len(files) // per_site):
        split = root / "sites" / f"split-{k:03d}"
        (split / "images").mkdir(parents=True)
        rows = ["file,label"]
        for j, (src, label) in enumerate(files[k * per_site:(k + 1) * per_site]):
            rel = f"images/img_{j}{src.suffix}"
            os.symlink(src.resolve(), split / rel)
            rows.append(f"{rel},{label}")
        (split / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        splits.append(split)
    return fed.catalog, splits


def tiny_sites(n: int, splits: list[Path], catalog_path: Path, cache: Path, state: Path, params: Any) -> list[Any]:
    from client.site.config import SiteConfig

    return [SiteConfig(name=f"site-{i:04d}", data_dir=splits[i % len(splits)], catalog_path=catalog_path,
                        cache_dir=cache / splits[i % len(splits)].name, state_dir=state / f"site-{i:04d}",
                        preprocess=params, policy=SITE_POLICY) for i in range(n)]


def run(quick: bool) -> tuple[dict[str, float], dict[str, str], dict[str, object]]:
    from benchmarks.fl_overhead import simulate
    from client.data.site_data import load_site
    from common.preprocess_params import PreprocessParams
    from simulations.presets import load_preset

    single_thread()
    cpus = os.cpu_count() or 1
    base = load_preset("smoke").run_config(**{"dp": True, "noise-multiplier": 1.0, "local-epochs": 1, "val-fraction": 0.0,
                                              "proximal-mu": 0.0, "head": "none"})
    params = PreprocessParams(image_size=base.image_size)
    figures: dict[str, float] = {}
    units: dict[str, str] = {}
    info: dict[str, object] = {"quick": quick, "images_per_site": PER_SITE, "model": base.model, "dp": True,
                               "ray_num_cpus": cpus, "federated_evaluation": False}
    import flwr.simulation  # noqa: F401 - import cost is not part of a run
    import ray  # noqa: F401

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        catalog, splits = tiny_splits(root / "fed", PER_SITE)
        for split in splits:  # preprocess once; every run reads the caches
            load_site(split, catalog=catalog, params=params, cache_dir=root / "cache" / split.name, val_fraction=0.0)
        info["distinct_splits"] = len(splits)
        for sc in scenarios(quick):
            cfg = base.replace(num_server_rounds=sc.rounds, fraction_fit=sc.fraction, fraction_evaluate=0.0,
                               min_fit_sites=2, min_available_sites=sc.sites)  # round 1 waits for every node
            sites = tiny_sites(sc.sites, splits, root / "fed" / "catalog.json", root / "cache", root / sc.name, params)
            with PeakMemory() as mem:
                timing = simulate(sites, cfg, catalog, num_cpus=cpus, expect_sites=sc.per_round)
            figures[f"{sc.name}_wall_s"] = round(timing.total_s, 1)
            figures[f"{sc.name}_first_round_s"] = round(timing.rounds_s[0], 1)
            figures[f"{sc.name}_later_round_mean_s"] = round(sum(timing.rounds_s[1:]) / max(1, sc.rounds - 1), 2)
            figures[f"{sc.name}_peak_rss_mb"] = round(mem.peak_rss_mb, 1)
            figures[f"{sc.name}_peak_pss_mb"] = round(mem.peak_pss_mb, 1)
            info[f"{sc.name}_sites_per_round"] = timing.sites_used
        sc = scenarios(quick)[0]
        cfg = base.replace(num_server_rounds=sc.rounds, fraction_fit=sc.fraction, fraction_evaluate=0.0,
                           min_fit_sites=2, min_available_sites=sc.sites)
        sites = tiny_sites(sc.sites, splits, root / "fed" / "catalog.json", root / "cache", root / "cluster", params)
        with two_local_nodes(cpus) as address:
            timing = simulate(sites, cfg, catalog, num_cpus=cpus, expect_sites=sc.per_round, ray_address=address)
        figures[f"{sc.name}_cluster_wall_s"] = round(timing.total_s, 1)
        figures[f"{sc.name}_cluster_over_local_ratio"] = round(timing.total_s / figures[f"{sc.name}_wall_s"], 3)
        info["cluster"] = {"nodes": 2, "cpus_per_node": [max(1, cpus // 2), max(1, cpus - cpus // 2)]}
    for k in figures:
        units[k] = "x" if k.endswith("_ratio") else "s" if k.endswith("_s") else "MiB"
    return figures, units, info


@contextmanager
def two_local_nodes(cpus: int) -> Iterator[str]:
    """The address of a two-node Ray cluster on this machine (its processes stopped by Ray's utility)."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": max(1, cpus // 2), "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=max(1, cpus - cpus // 2))
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        cluster.shutdown()


def _needs_proc() -> str | None:
    if not Path("/proc/self/smaps_rollup").exists():
        return "scale needs Linux /proc (smaps_rollup) to measure the memory of Ray's processes"
    return None


def main(argv: list[str] | None = None) -> int:
    return bench_main("scale", __doc__, run, argv, check=_needs_proc,
                      quick_help="20 sites x 2 rounds, 200 sites at 5%% x 2 rounds (< 2 min)")


if __name__ == "__main__":
    sys.exit(main())
