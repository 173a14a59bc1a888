"""``implantfl-sim run``: a simulated federation on Flower's simulation engine (Ray).

Steps: validate the configuration, get the data (generate the preset's synthetic
federation, or open ``--data``), preprocess every site once into its cache, run the
ServerApp and one ClientApp per site through ``flwr.simulation.run_simulation``,
evaluate the final global model on the held-out test set, optionally train the pooled
baseline, then write the run directory (results.json, release/, plots/, report.md).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.config import RunConfig
from common.device import pick_device
from common.errors import ConfigError
from common.preprocess_params import PreprocessParams
from common.release_gate import verdict_for
from server.history import run_outcome
from simulations.engine import SimulationCrashed
from simulations.federation import Federation, default_cache_root, ensure_synthetic, simulated_sites
from simulations.presets import load_preset

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimOptions:
    preset: str = "hip-consortium"
    data: Path | None = None  # federation folder; None = the preset's generated data
    dataset: str | None = None  # KIND:PATH public dataset as downloaded (simulations.datasets)
    partition: str | None = None  # partition spec for --dataset (simulations.datasets.partition)
    body_part: str | None = None  # MURA body-part filter
    sites: int | None = None  # use only the first N sites
    overrides: dict[str, Any] = field(default_factory=dict)  # run-config keys (kebab-case)
    seed: int = 0  # data-generation seed (run seed is run-config key ``seed``)
    state_dir: Path | None = None  # per-site privacy ledgers; default <out>/state
    out: Path | None = None  # run directory; default runs/<preset>-<timestamp>
    baseline: bool = True  # also train the pooled, non-private baseline
    encoder: Path | None = None  # public encoder folder for a run with a head; None = the default (cached)
    progress: bool = True
    verbose: bool = False
    ray_address: str | None = None  # a Ray cluster to join; None = a local Ray instance of the run's own
    site_cpus: float = 1.0  # each simulated site's CPUs on Ray
    site_gpus: float | None = None  # each site's GPUs; None = 0.5 with CUDA, else 0
    shared_dir: Path | None = None  # data, caches and ledgers here (every node of a cluster must see it)


@dataclass
class Prepared:
    cfg: RunConfig
    fed: Federation
    out: Path
    state_dir: Path
    cache_dir: Path
    params: PreprocessParams
    site_names: list[str]
    timing: dict[str, float]
    encoder_dir: Path | None = None  # the run's public encoder (runs with a head)
    execution: dict[str, Any] = field(default_factory=dict)  # where the engine ran (filled by the run)


def prepare(opts: SimOptions) -> Prepared:
    """Validate everything and get the data; no training yet."""
    timing: dict[str, float] = {}
    preset = load_preset(opts.preset)
    cfg = preset.run_config(**opts.overrides)
    out = opts.out or Path("runs") / f"{opts.preset}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    if (out / "results.json").exists():
        raise ConfigError(f"{out} already holds a finished run; choose another --out")
    if opts.ray_address is not None:  # a cluster that is not there stops the run before any work
        from simulations.ray_cluster import reachable

        reachable(opts.ray_address)
    state_dir = opts.state_dir
    if opts.shared_dir is not None:  # every path a site's ClientApp uses, under the shared directory
        shared = Path(opts.shared_dir).resolve()
        os.environ["IMPLANTFL_CACHE"] = str(shared / "cache")  # generated data, encoders, preprocessed caches
        state_dir = state_dir or shared / "state" / out.name
    t0 = time.monotonic()
    if opts.data and opts.dataset:
        raise ConfigError("give either --data or --dataset, not both")
    if opts.dataset:
        root = federation_from_dataset(opts)
    else:
        root = opts.data or ensure_synthetic(preset.synth_preset, opts.seed, progress=opts.progress)
    timing["generate_s"] = time.monotonic() - t0
    fed = Federation.open(Path(root))
    names = list(fed.site_dirs)
    if opts.sites is not None:
        if not 1 <= opts.sites <= len(names):
            raise ConfigError(f"--sites must be between 1 and {len(names)}")
        names = names[: opts.sites]
    n = len(names)
    if cfg.min_available_sites > n or cfg.min_fit_sites > n:
        cfg = cfg.replace(min_available_sites=min(cfg.min_available_sites, n), min_fit_sites=min(cfg.min_fit_sites, n))
    key = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:12]
    from simulations.head_run import resolve_encoder

    cfg, encoder_dir = resolve_encoder(cfg, opts.encoder, progress=opts.progress, timing=timing)
    return Prepared(
        cfg=cfg, fed=fed, out=out, state_dir=(state_dir or out / "state").resolve(),
        cache_dir=default_cache_root() / "preprocessed" / key, params=PreprocessParams(image_size=cfg.image_size),
        site_names=names, timing=timing, encoder_dir=encoder_dir,
    )


def federation_from_dataset(opts: SimOptions) -> Path:
    """Link a public dataset (as downloaded) into a federation folder named by its settings."""
    from simulations.datasets import build_federation

    partition = opts.partition or "dirichlet:sites=4,alpha=0.5"
    key = hashlib.sha256(f"{opts.dataset}|{partition}|{opts.body_part}|{opts.seed}".encode()).hexdigest()[:12]
    root, part, index = build_federation(opts.dataset, default_cache_root() / "datasets" / key, partition,
                                         seed=opts.seed, body_part=opts.body_part, overwrite=True)
    if opts.progress:
        part.show(index.labels(), index.catalog.ids)
    return Path(root)


def load_all(prep: Prepared, *, progress: bool) -> tuple[dict[str, Any], Any]:
    """Preprocess (or load from cache) every site and the test set."""
    from client.data.site_data import load_site

    t0 = time.monotonic()
    data = {}
    for name in prep.site_names:
        data[name] = load_site(
            prep.fed.site_dirs[name], catalog=prep.fed.catalog, params=prep.params,
            cache_dir=prep.cache_dir / name, val_fraction=prep.cfg.val_fraction, progress=progress,
        )
    if prep.fed.test_dir is None:
        raise ConfigError("the federation has no test/ folder for the global evaluation")
    test = load_site(prep.fed.test_dir, catalog=prep.fed.catalog, params=prep.params,
                     cache_dir=prep.cache_dir / "_test", val_fraction=0.0, progress=progress)
    prep.timing["preprocess_s"] = time.monotonic() - t0
    return data, test


def run(opts: SimOptions) -> dict[str, Any]:
    """Run the whole job and write the run directory; returns results.json's content."""
    import torch

    t_start = time.monotonic()
    prep = prepare(opts)
    data, test = load_all(prep, progress=opts.progress)
    # The researcher owns the simulated sites: a run without DP, or with reproducible noise, gets sites
    # whose policy allows it (a real site's default policy refuses both).
    sites = simulated_sites(prep.fed, state_dir=prep.state_dir, cache_dir=prep.cache_dir, params=prep.params,
                            names=prep.site_names, policy=simulated_policy(prep.cfg), encoder_path=prep.encoder_dir)
    torch.set_num_threads(1)
    catalog = prep.fed.catalog
    hd = None
    if prep.cfg.uses_encoder and prep.cfg.head != "finetune":
        from simulations.head_run import head_data

        hd = head_data(prep.cfg, prep.encoder_dir, data, test, prep.cache_dir, prep.params, prep.timing)
    final_model = _final_model_fn(prep, hd)

    def evaluate_fn(_rnd: int, arrays: Any) -> dict[str, float]:
        res = final_model(arrays)
        return {"accuracy": res.accuracy, "loss": res.loss}

    try:
        state, prep.timing["federation_s"] = _simulate(prep, sites, evaluate_fn, opts)
    except SimulationCrashed as e:
        return _crashed(prep, opts, e, t_start)

    from common.metrics import classification_summary

    res = final_model(state.arrays)
    final = classification_summary(res.labels, res.probs, catalog.ids)
    calibration = _with_test_coverage(_calibration(prep, hd, data, state.arrays), res)

    results: dict[str, Any] = {
        "out": str(prep.out),
        "config": _config(prep, opts),
        "sites": {n: {"kind": prep.fed.kinds().get(n, ""), "train": int((~d.is_val).sum()), "val": int(d.is_val.sum()),
                      "qc": d.report.to_dict()} for n, d in data.items()},
        "rounds": state.history.to_list(),
        "final": final,
        "outcome": run_outcome(state.history.to_list(), prep.cfg.num_server_rounds),
        "release": verdict_for(final, num_classes=len(catalog), min_accuracy=prep.cfg.release_min_accuracy).to_dict(),
    }
    if prep.encoder_dir is not None:
        from common.encoders import read_card

        card = read_card(prep.encoder_dir)
        results["encoder"] = {"sha256": card.sha256, "arch": card.arch, "dim": card.dim, "source": card.source,
                              "excludes": card.excludes, "projection": card.projection, "timing": card.timing}
    from simulations.datasets import read_studies

    studies = read_studies(prep.fed.test_dir)
    if studies:  # MURA-like data: the study's table, study level, per body part
        from simulations.studies import by_body_part

        results["final_by_body_part"] = by_body_part(test.files, res.probs, res.labels, studies, catalog.ids)
    if prep.cfg.dp:
        from server.history import privacy_by_site

        results["privacy"] = privacy_by_site(state.history.to_list(), delta=prep.cfg.delta, accountant=prep.cfg.accountant)
    from server.guarantees import guarantees

    results.update(guarantees(prep.cfg, results["rounds"], num_sites=len(sites)))
    if opts.baseline:
        results["baseline"] = _baselines(prep, hd, data, test, progress=opts.progress)
    prep.timing["wall_s"] = time.monotonic() - t_start
    results["calibration"] = calibration.to_dict()
    results["timing"] = prep.timing
    results["conformal"] = {level: {"threshold": q, "coverage": calibration.conformal_coverage.get(level)}
                            for level, q in calibration.conformal.items()}
    results["gradcam"] = _gradcam(prep, state.arrays, calibration)
    write_outputs(prep, state.arrays, results, calibration)
    return results


def _final_model_fn(prep: Prepared, hd: Any) -> Any:
    """arrays -> EvalResult of the global model on the test set (head on features, or a model on images)."""
    from client.training.train import evaluate
    from common.release_files import image_model

    catalog = prep.fed.catalog
    if hd is not None:
        from simulations.head_run import evaluate_head

        return lambda arrays: evaluate_head(prep.cfg, hd, len(catalog), arrays)
    info = _model_info(prep)
    test_data = {}

    def fn(arrays: Any) -> Any:
        if not test_data:
            from client.data.site_data import load_site

            # inside the running federation (its threads): no process pool; load_all filled the cache
            test_data["t"] = load_site(prep.fed.test_dir, catalog=catalog, params=prep.params,
                                       cache_dir=prep.cache_dir / "_test", val_fraction=0.0, workers=1)
        model = image_model(info, len(catalog), arrays.to_torch_state_dict(), encoder_dir=prep.encoder_dir)
        return evaluate(model, test_data["t"].x, test_data["t"].y, device=pick_device())

    return fn


def _model_info(prep: Prepared) -> dict[str, Any]:
    from common.release_files import ENCODER_MODEL

    if prep.cfg.uses_encoder:
        return {"model": ENCODER_MODEL, "image_size": prep.cfg.image_size, "head": prep.cfg.head,
                "encoder_sha256": prep.cfg.encoder}
    return {"model": prep.cfg.model, "image_size": prep.cfg.image_size}


def _calibration(prep: Prepared, hd: Any, data: dict[str, Any], arrays: Any) -> Any:
    from common.calibration import fit_from_splits
    from common.release_files import image_model

    if hd is not None:
        from simulations.head_run import calibrate

        return calibrate(prep.cfg, hd, len(prep.fed.catalog), arrays)
    model = image_model(_model_info(prep), len(prep.fed.catalog), arrays.to_torch_state_dict(),
                        encoder_dir=prep.encoder_dir)
    return fit_from_splits(model, [d.val() for d in data.values()])


def _with_test_coverage(calibration: Any, res: Any) -> Any:
    """The calibration with each conformal level's coverage measured on the test set."""
    import dataclasses

    import numpy as np

    from common.conformal import coverage

    if not calibration.conformal or len(res.labels) == 0:
        return calibration
    probs = calibration.probabilities(np.log(np.clip(res.probs, 1e-12, 1.0)))  # softmax(log p / T) = softmax(z / T)
    measured = {level: round(coverage(probs, res.labels, q)[0], 4) for level, q in calibration.conformal.items()}
    return dataclasses.replace(calibration, conformal_coverage=measured)


def _gradcam(prep: Prepared, arrays: Any, calibration: Any) -> dict[str, Any]:
    """Grad-CAM peak hit rate of the global model on test images with implant masks (annotations.csv)."""
    import csv

    from client.bedside.cam_check import cam_hit_rate
    from client.bedside.predict import Predictor
    from common.release_files import Release, image_model

    notes = prep.fed.test_dir / "annotations.csv" if prep.fed.test_dir else None
    if notes is None or not notes.is_file():
        return {"images": 0, "note": "the test set has no implant masks"}
    with open(notes, newline="") as fh:
        items = [(prep.fed.test_dir / r["file"], prep.fed.test_dir / r["mask"]) for r in csv.DictReader(fh)
                 if r.get("mask")]
    model = image_model(_model_info(prep), len(prep.fed.catalog), arrays.to_torch_state_dict(),
                        encoder_dir=prep.encoder_dir)
    release = Release(model.eval(), prep.fed.catalog, prep.params, {}, calibration)
    return cam_hit_rate(Predictor(release), items[::max(1, len(items) // 150)])


def _baselines(prep: Prepared, hd: Any, data: dict[str, Any], test: Any, *, progress: bool) -> dict[str, Any]:
    """The run's baselines: on features for a head (pooled, pooled_dp, single_site, pooled_cnn), else the pooled model."""
    from simulations.centralized import train_centralized

    if hd is not None:
        from simulations.head_run import baselines

        return baselines(prep.cfg, hd, prep.fed.catalog.ids, data, test, progress=progress, timing=prep.timing)
    base = train_centralized([d.train() for d in data.values()], (test.x, test.y), prep.cfg, prep.fed.catalog.ids,
                             device=pick_device(), progress=progress)
    prep.timing["baseline_s"] = base.wall_s
    return {"pooled": {"final": base.final, "accuracy_per_epoch": base.accuracy_per_epoch,
                       "train_examples": base.train_examples, "dp": False, "epsilon": 0.0, "model": prep.cfg.model}}


def _config(prep: Prepared, opts: SimOptions) -> dict[str, Any]:
    return {**prep.cfg.to_flower(), "preset": opts.preset, "data": str(prep.fed.root), "sites": prep.site_names,
            "execution": prep.execution}


def _crashed(prep: Prepared, opts: SimOptions, e: Any, t_start: float) -> dict[str, Any]:
    """The run directory of a run whose engine crashed: it failed, and why (results.json, no release)."""
    from server.report import write_results

    prep.timing["wall_s"] = time.monotonic() - t_start
    results = {"out": str(prep.out), "config": _config(prep, opts), "rounds": [],
               "outcome": {"status": "failed", "reason": str(e), "rounds_trained": 0, "rounds_failed": 0,
                           "rounds_planned": prep.cfg.num_server_rounds},
               "timing": prep.timing}
    write_results(prep.out, results)
    return results


def _simulate(prep: Prepared, sites: list, evaluate_fn: Any, opts: SimOptions) -> tuple[Any, float]:
    from server.app import RunSetup
    from simulations.engine import EngineOptions, simulate

    setup = RunSetup(config=prep.cfg, catalog=prep.fed.catalog, encoder=_encoder(prep),
                     checkpoint_dir=prep.out / "checkpoint", evaluate_fn=evaluate_fn)
    shared = (prep.fed.root, prep.cache_dir, prep.state_dir, *([prep.encoder_dir] if prep.encoder_dir else []))
    engine = EngineOptions(ray_address=opts.ray_address, site_cpus=opts.site_cpus, site_gpus=opts.site_gpus,
                           shared_paths=tuple(shared), progress=opts.progress, verbose=opts.verbose)
    return simulate(setup, sites, prep.cfg.num_server_rounds, engine, prep.execution)


def _encoder(prep: Prepared) -> Any:
    if prep.encoder_dir is None:
        return None
    from common.encoders import load_encoder

    return load_encoder(prep.encoder_dir, expected_sha256=prep.cfg.encoder)


def simulated_policy(cfg: RunConfig) -> dict[str, Any] | None:
    """The privacy policy of a researcher's simulated sites: the default, plus what the run opts into."""
    policy: dict[str, Any] = {}
    if not cfg.dp:
        policy["require-dp"] = False
    if cfg.reproducible_noise:
        policy["allow-reproducible-noise"] = True
    return policy or None


def write_outputs(prep: Prepared, arrays: Any, results: dict[str, Any], calibration: Any = None) -> None:
    from server.release import write_release
    from server.report import write_plots, write_report, write_results

    write_results(prep.out, results)
    write_release(prep.out / "release", arrays=arrays, config=prep.cfg, catalog=prep.fed.catalog,
                  preprocess=prep.params, summary=results, calibration=calibration, encoder_dir=prep.encoder_dir)
    write_plots(prep.out, results)
    write_report(prep.out, results)
