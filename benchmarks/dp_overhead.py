"""DP-SGD overhead: local training images/s, plain vs Opacus DP-SGD, per per-sample-gradient mode.

For the study CNN and ResNet-18 (64 px, batch 32, one torch thread, the run config's
default optimizer) it times
``client.training.train.train_local`` (the code a site runs each round, Opacus set-up included)
plain and with DP-SGD in each ``grad_sample_mode`` (hooks, ew, functorch, ghost).
Batches are fixed (no Poisson sampling) so that every run does the same work; DP noise
is on. A mode counts as valid for a model when, with zero noise and active clipping, one
step gives the same weights as ``hooks`` (Opacus' reference implementation).

Runs are interleaved (plain, mode 1, mode 2, ... then again) and each configuration
keeps its fastest run, so load from other processes mostly cancels in the ratios.
``<model>_dp_default_over_plain_ratio`` times the mode a default run uses (run-config
``grad-sample-mode = auto``, resolved per model by ``client.task.grad_sample_mode`` from
``common.models.DP_GRAD_SAMPLE_MODE``, which should name the fastest valid mode found here).
Writes ``benchmarks/results/dp_overhead.json``. ``--quick`` uses fewer images and
repeats and leaves out ResNet-18 with functorch (about a minute per step).

The private heads on a public encoder (the default route) get their own figures, on the
largest hip-consortium site's cached data (300 images, 16-d features):
``head_dp_stats_dp_over_plain_ratio`` is a site's whole dp-stats round after the encoder
(the cached images and features loaded, the class statistics computed, then noised or
not: the noise is the only difference), ``head_dp_stats_release_*_us`` the statistics alone,
and ``head_linear_dp_over_plain_ratio`` one round of the linear head (2 epochs, batch 64)
with Opacus DP-SGD against plain SGD.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from dataclasses import dataclass

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy / torch load

import numpy as np  # noqa: E402

from benchmarks._util import bench_main, single_thread  # noqa: E402

MODES = ("hooks", "ew", "functorch", "ghost")
MODELS = ("cnn", "resnet18")
IMAGE_SIZE, BATCH, CLASSES = 64, 32, 14
VALID_ATOL = 1e-5  # weights after one zero-noise step may differ from hooks' by float rounding only


@dataclass(frozen=True)
class Plan:
    images: dict[str, int]  # model -> training images per timed call (one epoch)
    repeats: dict[str, int]  # model -> timed calls per configuration (fastest kept)
    skip: tuple[tuple[str, str], ...]  # (model, mode) left out


def plan(quick: bool) -> Plan:
    if quick:
        return Plan({"cnn": 64, "resnet18": 32}, {"cnn": 3, "resnet18": 2}, (("resnet18", "functorch"),))
    return Plan({"cnn": 256, "resnet18": 64}, {"cnn": 3, "resnet18": 2}, ())


def _settings(mode: str | None, *, batch: int, noise: float = 1.0, clip: float = 1.0):  # noqa: ANN202
    from client.training.train import TrainSettings
    from common.config import RunConfig

    run = RunConfig()  # the default local optimizer and learning rate
    return TrainSettings(
        batch_size=batch, optimizer=run.optimizer, learning_rate=run.learning_rate, dp=mode is not None,
        grad_sample_mode=mode or "hooks", noise_multiplier=noise, max_grad_norm=clip, poisson_sampling=False, seed=0,
    )


def _train(model, state, x, y, settings) -> tuple[float, np.ndarray]:  # noqa: ANN001
    import torch

    from client.training.train import train_local

    model.load_state_dict(state)
    t0 = time.perf_counter()
    train_local(model, x, y, settings, device=torch.device("cpu"))
    wall = time.perf_counter() - t0
    return wall, np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])


def valid_modes(name: str, modes: list[str], model, state) -> tuple[list[str], dict[str, str]]:  # noqa: ANN001
    """Modes that run and match hooks after one zero-noise, clipped step (also warms each up)."""
    rng = np.random.default_rng(1)
    x = rng.random((4, 1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    y = rng.integers(0, CLASSES, 4)
    _train(model, state, x, y, _settings(None, batch=4))  # warm up plain training
    ok, why = [], {}
    ref = None
    for mode in ["hooks"] + [m for m in modes if m != "hooks"]:
        try:
            _, weights = _train(model, state, x, y, _settings(mode, batch=4, noise=0.0, clip=0.01))
        except Exception as e:  # noqa: BLE001 - an unsupported mode is a finding, not a crash
            why[mode] = f"{type(e).__name__}: {str(e)[:120]}"
            continue
        if ref is None:
            ref = weights
        if not np.allclose(weights, ref, rtol=0, atol=VALID_ATOL):
            why[mode] = f"differs from hooks by {float(np.abs(weights - ref).max()):.2g}"
            continue
        if mode in modes:
            ok.append(mode)
    return [m for m in modes if m in ok], why


def run(quick: bool) -> tuple[dict[str, float], dict[str, str], dict[str, object]]:
    import torch

    from client.training.settings import grad_sample_mode
    from common.config import RunConfig
    from common.models import build_model

    single_thread()
    p = plan(quick)
    defaults = {}
    for name in MODELS:
        run_cfg = RunConfig(model=name)
        defaults[name] = grad_sample_mode(run_cfg, proximal_mu=run_cfg.proximal_mu)
    figures: dict[str, float] = {}
    units: dict[str, str] = {}
    params: dict[str, object] = {"quick": quick, "image_size": IMAGE_SIZE, "batch_size": BATCH, "threads": 1,
                                 "poisson_sampling": False, "noise_multiplier": 1.0, "default_mode": defaults,
                                 "optimizer": _settings(None, batch=BATCH).optimizer,
                                 "images": p.images, "repeats": p.repeats, "fastest_mode": {}, "invalid_modes": {},
                                 "skipped": [f"{m}/{g}" for m, g in p.skip]}
    for name in MODELS:
        torch.manual_seed(0)
        model = build_model(name, num_classes=CLASSES, image_size=IMAGE_SIZE)
        state = copy.deepcopy(model.state_dict())
        wanted = [m for m in MODES if (name, m) not in p.skip]
        modes, why = valid_modes(name, wanted, model, state)
        params["invalid_modes"][name] = why  # type: ignore[index]
        rng = np.random.default_rng(0)
        n = p.images[name]
        x = rng.random((n, 1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
        y = rng.integers(0, CLASSES, n)
        configs: list[str | None] = [None, *modes]
        best = dict.fromkeys(configs, float("inf"))
        for _ in range(p.repeats[name]):
            for mode in configs:
                wall, _ = _train(model, state, x, y, _settings(mode, batch=BATCH))
                best[mode] = min(best[mode], wall)
        plain = best[None]
        figures[f"{name}_plain_images_per_s"] = round(n / plain, 2)
        units[f"{name}_plain_images_per_s"] = "images/s"
        for mode in modes:
            figures[f"{name}_dp_{mode}_images_per_s"] = round(n / best[mode], 2)
            units[f"{name}_dp_{mode}_images_per_s"] = "images/s"
            figures[f"{name}_dp_{mode}_over_plain_ratio"] = round(best[mode] / plain, 3)
            units[f"{name}_dp_{mode}_over_plain_ratio"] = "x"
        if modes:
            fastest = min(modes, key=lambda m: best[m])
            params["fastest_mode"][name] = fastest  # type: ignore[index]
            figures[f"{name}_dp_fastest_over_plain_ratio"] = round(best[fastest] / plain, 3)
            units[f"{name}_dp_fastest_over_plain_ratio"] = "x"
        if defaults[name] in modes:
            figures[f"{name}_dp_default_over_plain_ratio"] = round(best[defaults[name]] / plain, 3)
            units[f"{name}_dp_default_over_plain_ratio"] = "x"
    return figures, units, params


def head_figures(quick: bool) -> tuple[dict[str, float], dict[str, str]]:
    """DP against plain for the private heads (see the module docstring)."""
    import torch

    from benchmarks._util import best_of
    from client.data.features import site_features
    from client.data.site_data import load_site
    from client.training.stats_release import release
    from client.training.train import TrainSettings, train_local
    from common.encoders import load_encoder
    from common.models.heads import HeadConfig, build_head
    from simulations.pretrain.pipeline import ensure_default_encoder
    from simulations.runner import SimOptions, prepare

    prep = prepare(SimOptions(preset="hip-consortium", progress=False, overrides={"head": "none"}))
    encoder = load_encoder(ensure_default_encoder(image_size=prep.cfg.image_size, progress=False))
    site = max(prep.fed.site_dirs, key=lambda n: sum(1 for _ in (prep.fed.site_dirs[n] / "images").iterdir()))
    classes = len(prep.fed.catalog)

    def site_round(dp: bool) -> None:
        data = load_site(prep.fed.site_dirs[site], catalog=prep.fed.catalog, params=prep.params,
                         cache_dir=prep.cache_dir / site)
        f = site_features(data, encoder, params=prep.params, cache_dir=prep.cache_dir / site).f
        release(f[~data.is_val], data.y[~data.is_val], num_classes=classes, solver="cosine", noise_multiplier=0.64,
                dp=dp)

    site_round(False)  # builds the caches once
    repeats = 5 if quick else 20
    rounds = {False: float("inf"), True: float("inf")}
    for _ in range(repeats):  # interleaved: load mostly cancels in the ratio
        for dp in (False, True):
            rounds[dp] = min(rounds[dp], best_of(lambda dp=dp: site_round(dp), 1))
    data = load_site(prep.fed.site_dirs[site], catalog=prep.fed.catalog, params=prep.params,
                     cache_dir=prep.cache_dir / site)
    f = site_features(data, encoder, params=prep.params, cache_dir=prep.cache_dir / site).f
    x, y = f[~data.is_val], data.y[~data.is_val]
    stats = {dp: best_of(lambda dp=dp: release(x, y, num_classes=classes, solver="cosine", noise_multiplier=0.64,
                                               dp=dp), 50 if quick else 300) for dp in (False, True)}
    linear = {False: float("inf"), True: float("inf")}
    for _ in range(3 if quick else 10):
        for dp in (False, True):
            head = build_head(HeadConfig("linear", encoder.dim, classes))
            settings = TrainSettings(epochs=2, batch_size=64, optimizer="sgd", learning_rate=2.0, momentum=0.0, dp=dp,
                                     noise_multiplier=3.0, augment=False, grad_sample_mode="hooks")
            linear[dp] = min(linear[dp], best_of(lambda h=head, s=settings: train_local(h, x, y, s,
                                                                                          device=torch.device("cpu")), 1))
    figures = {
        "head_dp_stats_site_round_plain_ms": round(rounds[False] * 1e3, 2),
        "head_dp_stats_site_round_dp_ms": round(rounds[True] * 1e3, 2),
        "head_dp_stats_dp_over_plain_ratio": round(rounds[True] / rounds[False], 3),
        "head_dp_stats_release_plain_us": round(stats[False] * 1e6, 1),
        "head_dp_stats_release_dp_us": round(stats[True] * 1e6, 1),
        "head_dp_stats_release_dp_over_plain_ratio": round(stats[True] / stats[False], 3),
        "head_linear_round_plain_ms": round(linear[False] * 1e3, 2),
        "head_linear_round_dp_ms": round(linear[True] * 1e3, 2),
        "head_linear_dp_over_plain_ratio": round(linear[True] / linear[False], 3),
    }
    units = {k: ("x" if "ratio" in k else "ms" if k.endswith("_ms") else "us") for k in figures}
    return figures, units


def run_all(quick: bool) -> tuple[dict[str, float], dict[str, str], dict[str, object]]:
    figures, units, params = run(quick)
    head, head_units = head_figures(quick)
    return {**figures, **head}, {**units, **head_units}, params


def _report(_figures: object, params: dict) -> None:
    print(f"fastest valid DP mode: {params['fastest_mode']} (default: {params['default_mode']})")
    if params["fastest_mode"] != params["default_mode"]:
        print("the defaults differ from the fastest modes measured: update common.models.DP_GRAD_SAMPLE_MODE")
    if any(params["invalid_modes"].values()):
        print(f"modes not valid: {params['invalid_modes']}")


def main(argv: list[str] | None = None) -> int:
    return bench_main("dp_overhead", __doc__, run_all, argv, after=_report,
                      quick_help="fewer images and repeats, no ResNet-18 functorch (< 2 min)")


if __name__ == "__main__":
    sys.exit(main())
