"""Communication: bytes of one site's update per round, for every model, with update compression.

1. For every model in ``common.models.MODELS`` (14 classes, 64 px): the serialised size
   (Flower protobuf) of the ArrayRecord a site sends each round, plain (``none``), and
   with the update ``new - global`` compressed to ``fp16`` or ``int8``
   (:mod:`common.compression`), with the compressed/plain ratios.
2. Effect on accuracy on the smoke preset: three runs, ``none`` / ``fp16`` / ``int8``,
   same seeds, final accuracy on the smoke test set. Without ``--quick`` the runs are real
   simulations with run-config ``update-compression`` (the ClientApp compresses, the
   server rebuilds, ``cnn_<mode>_smoke_received_update_bytes`` is the mean the server
   recorded per update); with it, a local FedAvg loop over the smoke sites' data applies
   ``compress_update`` / ``decompress_update`` to every update (``params.accuracy_method``
   says which). The full mode averages three seeds. The smoke
   federation is so small that even pooled training stays at chance accuracy, so the full
   mode also compares the modes on the hip-consortium federation (DP off, the preset's 12
   rounds, local FedAvg loop), next to the difference a second seed makes without
   compression: the yardstick for "no effect". ``cnn_<mode>_update_relative_error`` is
   ``||rebuilt update - update|| / ||update||`` over the smoke runs' updates.

Writes ``benchmarks/results/comm.json``. The full mode takes over 10 minutes on 2 busy cores (nine
smoke simulations, the hip-consortium runs); ``--quick`` (bytes + one smoke seed) well under 2.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy / torch load

import numpy as np  # noqa: E402

from benchmarks._util import bench_main, single_thread  # noqa: E402

CLASSES, IMAGE_SIZE = 14, 64
MODES = ("none", "fp16", "int8")
UPDATE_STD = 1e-3  # size of the synthetic update used for the byte counts (bytes do not depend on it)


def _slug(name: str) -> str:
    return name.replace("-", "_")


def update_bytes() -> tuple[dict[str, float], dict[str, str]]:
    """Serialised bytes of one update per model and mode, and compressed/plain ratios."""
    import torch

    from common.compression import compress_update
    from common.models import MODELS, build_model
    from server.records import numpy_to_record, record_bytes

    figures: dict[str, float] = {}
    for name in MODELS:
        torch.manual_seed(0)
        model = build_model(name, num_classes=CLASSES, image_size=IMAGE_SIZE)
        ref = {k: v.numpy().copy() for k, v in model.state_dict().items()}
        with torch.no_grad():
            for p in model.parameters():
                p.add_(UPDATE_STD * torch.randn_like(p))
        new = {k: v.numpy().copy() for k, v in model.state_dict().items()}
        size = {mode: record_bytes(numpy_to_record(compress_update(new, ref, mode))) for mode in MODES}
        for mode in MODES:
            figures[f"{_slug(name)}_{mode}_update_bytes"] = size[mode]
        for mode in MODES[1:]:
            figures[f"{_slug(name)}_{mode}_over_none_update_bytes_ratio"] = round(size[mode] / size["none"], 4)
        del model, ref, new
    return figures, {k: "x" if "ratio" in k else "bytes" for k in figures}


def _federation(preset: str, val_fraction: float) -> tuple[Any, list[tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
    """(federation, each site's training split, test set) of a preset's generated federation."""
    from benchmarks.fl_overhead import cache_root_for
    from client.data.site_data import load_site
    from common.preprocess_params import PreprocessParams
    from simulations.federation import Federation, ensure_synthetic
    from simulations.presets import load_preset

    fed = Federation.open(ensure_synthetic(load_preset(preset).synth_preset, 0))
    params, cache = PreprocessParams(image_size=IMAGE_SIZE), cache_root_for(fed.root)
    data = [load_site(fed.site_dirs[n], catalog=fed.catalog, params=params, cache_dir=cache / n,
                      val_fraction=val_fraction).train() for n in fed.site_dirs]
    test = load_site(fed.test_dir, catalog=fed.catalog, params=params, cache_dir=cache / "_test", val_fraction=0.0)
    return fed, data, (test.x, test.y)


def local_fedavg(cfg: Any, num_classes: int, data: list[tuple[np.ndarray, np.ndarray]], mode: str) -> tuple[Any, float]:
    """FedAvg over ``data`` with every update compressed and decompressed; (global record, mean rel. error)."""
    import torch

    from benchmarks.fl_overhead import task_settings
    from client.training.train import train_local
    from common.compression import compress_update, decompress_update
    from common.models import build_model
    from common.weights import load_state, plain_state_dict

    torch.manual_seed(cfg.seed)
    start = build_model(cfg.model, num_classes=num_classes, image_size=cfg.image_size).state_dict()
    global_arrays = {k: v.numpy().copy() for k, v in start.items()}
    model = build_model(cfg.model, num_classes=num_classes, image_size=cfg.image_size)
    errors = []
    for rnd in range(1, cfg.num_server_rounds + 1):
        rebuilt, weights = [], []
        for x, y in data:
            load_state(model, {k: torch.from_numpy(v) for k, v in global_arrays.items()})
            res = train_local(model, x, y, task_settings(cfg, len(y), rnd), device=torch.device("cpu"))
            new = {k: v.numpy().copy() for k, v in plain_state_dict(model).items()}
            back = decompress_update(compress_update(new, global_arrays, mode), global_arrays, mode)
            errors.append(_relative_error(new, back, global_arrays))
            rebuilt.append(back)
            weights.append(res.num_examples)
        total = sum(weights)
        global_arrays = {k: sum(r[k].astype(np.float64) * (w / total) for r, w in zip(rebuilt, weights, strict=True)
                                ).astype(global_arrays[k].dtype) for k in global_arrays}
    return global_arrays, float(np.mean(errors))


def _relative_error(new: Any, back: Any, ref: Any) -> float:
    """||rebuilt update - true update|| / ||true update||."""
    num = den = 0.0
    for k in ref.keys():
        d = new[k].astype(np.float64) - ref[k]
        num += float(np.sum((back[k] - new[k]) ** 2))
        den += float(np.sum(d * d))
    return float(np.sqrt(num / den)) if den > 0 else 0.0


def simulated(cfg: Any, fed: Any, mode: str) -> tuple[Any, float]:
    """A real simulated run of the smoke federation with ``update-compression = mode``.

    Returns the final global weights and the mean bytes per update the server received.
    """
    from benchmarks.fl_overhead import cache_root_for, simulate
    from common.preprocess_params import PreprocessParams
    from simulations.federation import simulated_sites

    run_cfg = cfg.replace(update_compression=mode, fraction_evaluate=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        sites = simulated_sites(fed, state_dir=Path(tmp), cache_dir=cache_root_for(fed.root),
                                params=PreprocessParams(image_size=cfg.image_size), policy={"max-epsilon": 1e6})
        timing = simulate(sites, run_cfg, fed.catalog, num_cpus=os.cpu_count() or 1)
    return timing.final_arrays, float(np.mean(timing.update_bytes))


def _accuracy(arrays: Any, cfg: Any, num_classes: int, test: tuple[np.ndarray, np.ndarray]) -> float:
    import torch

    from client.training.train import evaluate
    from common.models import build_model
    from common.weights import load_state

    model = build_model(cfg.model, num_classes=num_classes, image_size=cfg.image_size)
    load_state(model, {k: torch.from_numpy(np.asarray(v.numpy() if hasattr(v, "numpy") else v))
                       for k, v in arrays.items()})
    return evaluate(model, test[0], test[1], device=torch.device("cpu")).accuracy


def accuracy(quick: bool) -> tuple[dict[str, float], dict[str, str], dict[str, Any]]:
    """Final test accuracy with each compression mode (paired: same seeds), smoke and (full) hip-consortium."""
    from simulations.presets import load_preset

    figures: dict[str, float] = {}
    units: dict[str, str] = {}
    cfg = load_preset("smoke").run_config(**{"proximal-mu": 0.0, "head": "none", "num-server-rounds": 3})  # the CNN
    fed, data, test = _federation("smoke", cfg.val_fraction)
    real = not quick  # simulations with run-config update-compression; --quick: the local loop
    seeds = [0] if quick else [0, 1, 2]
    acc: dict[str, list[float]] = {m: [] for m in MODES}
    err: dict[str, list[float]] = {m: [] for m in MODES}
    sent: dict[str, list[float]] = {m: [] for m in MODES}
    for seed in seeds:
        for mode in MODES:
            run_cfg = cfg.replace(seed=seed)
            if real:
                arrays, update_bytes = simulated(run_cfg, fed, mode)
                sent[mode].append(update_bytes)
            else:
                arrays, e = local_fedavg(run_cfg, len(fed.catalog), data, mode)
                err[mode].append(e)
            acc[mode].append(_accuracy(arrays, cfg, len(fed.catalog), test))
    for mode in MODES:
        figures[f"cnn_{mode}_smoke_final_accuracy"] = round(float(np.mean(acc[mode])), 4)
        if sent[mode]:  # what the server received in the simulation (array data, server.history)
            figures[f"cnn_{mode}_smoke_received_update_bytes"] = round(float(np.mean(sent[mode])))
    for mode in MODES[1:]:
        figures[f"cnn_{mode}_minus_none_smoke_accuracy"] = round(float(np.mean(acc[mode]) - np.mean(acc["none"])), 4)
        if err[mode]:
            figures[f"cnn_{mode}_update_relative_error"] = round(float(np.mean(err[mode])), 6)
    info: dict[str, Any] = {
        "accuracy_method": "simulation (update-compression run config)" if real
        else "local FedAvg loop with compress/decompress of every update",
        "smoke": {"seeds": seeds, "rounds": cfg.num_server_rounds, "local_epochs": cfg.local_epochs, "dp": cfg.dp,
                  "optimizer": cfg.optimizer, "learning_rate": cfg.learning_rate,
                  "noise_multiplier": cfg.noise_multiplier, "test_images": int(len(test[1])),
                  "chance_accuracy": round(1 / len(fed.catalog), 4),
                  "accuracy_per_seed": {m: [round(a, 4) for a in acc[m]] for m in MODES}},
    }
    if not quick:  # smoke stays at chance; a federation on which the CNN learns something
        hip = load_preset("hip-consortium").run_config(**{"dp": False, "seed": 0, "proximal-mu": 0.0, "head": "none",
                                                         "num-server-rounds": 10})
        hfed, hdata, htest = _federation("hip-consortium", hip.val_fraction)
        hacc = {m: _accuracy(local_fedavg(hip, len(hfed.catalog), hdata, m)[0], hip, len(hfed.catalog), htest)
                for m in MODES}
        other_seed = _accuracy(local_fedavg(hip.replace(seed=1), len(hfed.catalog), hdata, "none")[0], hip,
                               len(hfed.catalog), htest)
        for mode in MODES:
            figures[f"cnn_{mode}_hip_final_accuracy"] = round(hacc[mode], 4)
        for mode in MODES[1:]:
            figures[f"cnn_{mode}_minus_none_hip_accuracy"] = round(hacc[mode] - hacc["none"], 4)
        figures["cnn_none_seed1_minus_seed0_hip_accuracy"] = round(other_seed - hacc["none"], 4)
        info["hip"] = {"method": "local FedAvg loop", "rounds": hip.num_server_rounds, "local_epochs": hip.local_epochs,
                       "optimizer": hip.optimizer, "learning_rate": hip.learning_rate,
                       "dp": False, "seeds": [0], "test_images": int(len(htest[1])),
                       "chance_accuracy": round(1 / len(hfed.catalog), 4)}
    for k in figures:
        units[k] = "bytes" if k.endswith("_bytes") else "fraction"
    return figures, units, info


def run(quick: bool) -> tuple[dict[str, float], dict[str, str], dict[str, object]]:
    single_thread()
    figures, units = update_bytes()
    acc_figures, acc_units, info = accuracy(quick)
    figures.update(acc_figures)
    units.update(acc_units)
    return figures, units, {"quick": quick, "classes": CLASSES, "image_size": IMAGE_SIZE,
                            "bytes": "Flower protobuf ArrayRecord.ByteSize()", "update_std": UPDATE_STD, **info}


def main(argv: list[str] | None = None) -> int:
    return bench_main("comm", __doc__, run, argv, quick_help="one seed, local FedAvg loop (< 2 min)",
                      after=lambda _f, params: print(f"accuracy measured with: {params['accuracy_method']}"))


if __name__ == "__main__":
    sys.exit(main())
