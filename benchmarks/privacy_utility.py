"""Privacy-utility: federated top-1 against each site's epsilon, per public encoder and private head.

On the main job's federation (hip-consortium, 8 sites, generated seed 0, the 476-image test
set) every site computes features with a public encoder and trains its private part at
epsilon 0.5, 1, 2, 4 and 8 (delta 1e-5):

- ``dp-stats``: each site's one Gaussian release of its class sums (the sites' own code,
  ``client.training.stats_release``), summed and solved by the server's code
  (``server.stats_round.solve_global``); several noise draws per epsilon, mean reported;
- ``linear``: a linear head trained with DP-SGD at each site (``client.training.train.train_local``,
  Opacus, noise planned for the epsilon over the whole run) and averaged by FedAvg, with the
  ``hip-linear-head`` preset's settings (chosen on generated seed 1).

Beside them, the same encoder and head pooled without DP. Encoders: the default generated
one (cached, as the main job uses it), ScatterNet (kymatio: no training) and ImageNet
EfficientNet-Lite0 (optional wheels: skipped with a note when not installed), the last two
with the same public projection fitted on the generated public designs. In-process (no
Ray): the federation's arithmetic is the product's, the transport is left out. Writes
``benchmarks/results/privacy_utility.json`` and ``privacy_utility.png``.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks._util import RESULTS_DIR, bench_main

EPSILONS = (0.5, 1.0, 2.0, 4.0, 8.0)
HEADS = ("dp-stats", "linear")
ENCODERS = ("generated", "scatternet", "efficientnet-lite0")
logger = logging.getLogger(__name__)


def _encoder_dir(name: str, cache: Path, quick: bool) -> Path | None:
    from simulations.pretrain.pipeline import PretrainOptions, ensure_default_encoder, pretrain

    if name == "generated":
        return ensure_default_encoder(image_size=64, progress=False)
    out = cache / f"bench-encoder-{name}"
    if (out / "encoder.pt").exists():
        return out
    try:
        pretrain(PretrainOptions(out=out, arch=name, progress=False, designs=120 if quick else 300,
                                 images_per_design=8 if quick else 16))
    except Exception as e:  # noqa: BLE001 - an optional encoder that is not installed is reported, not fatal
        logger.warning("encoder %s skipped: %s", name, e)
        return None
    return out


def _features(encoder_dir: Path):  # noqa: ANN202
    from client.data.features import site_features
    from common.encoders import load_encoder
    from simulations.runner import SimOptions, load_all, prepare

    prep = prepare(SimOptions(preset="hip-consortium", progress=False, overrides={"head": "none"}))
    data, test = load_all(prep, progress=False)
    enc = load_encoder(encoder_dir)
    train = {}
    for name, d in data.items():
        f = site_features(d, enc, params=prep.params, cache_dir=prep.cache_dir / name).f
        train[name] = (f[~d.is_val], d.y[~d.is_val])
    ft = site_features(test, enc, params=prep.params, cache_dir=prep.cache_dir / "_test").f
    return train, (ft, test.y), len(prep.fed.catalog)


def _accuracy(weight: np.ndarray, bias: np.ndarray, test: tuple[np.ndarray, np.ndarray]) -> float:
    return float(((test[0] @ weight.T + bias).argmax(1) == test[1]).mean())


def dp_stats_accuracy(train: dict, test: tuple, classes: int, eps: float | None, draws: int) -> float:
    from client.training.jobs import stats_noise
    from client.training.stats_release import release
    from common.config import RunConfig
    from common.dp_stats import FeatureStats
    from server.stats_round import solve_global

    cfg = RunConfig(head="dp-stats", num_server_rounds=1, target_epsilon=eps or 1.0, dp=eps is not None)
    z = stats_noise(cfg) if eps is not None else 0.0
    accs = []
    for _ in range(draws if eps is not None else 1):
        accepted = {site: FeatureStats.from_arrays(
            release(x, y, num_classes=classes, solver="cosine", noise_multiplier=z, dp=eps is not None),
            num_classes=classes, dim=x.shape[1], solver="cosine") for site, (x, y) in train.items()}
        head = solve_global(accepted, solver="cosine", ridge=1.0)
        accs.append(_accuracy(head["weight"].numpy(), head["bias"].numpy(), test))
    return float(np.mean(accs))


def linear_accuracy(train: dict, test: tuple, classes: int, eps: float | None, rounds: int | None = None) -> float:
    import dataclasses

    import torch

    from client.training.jobs import sgd_noise
    from client.training.settings import train_settings
    from client.training.train import train_local
    from common.models.heads import HeadConfig, build_head
    from simulations.presets import load_preset

    cfg = load_preset("hip-linear-head").run_config(**{"dp": eps is not None, "target-epsilon": eps or 1.0})
    if rounds is not None:
        cfg = cfg.replace(num_server_rounds=rounds)
    dim = next(iter(train.values()))[0].shape[1]
    global_head = build_head(HeadConfig("linear", dim, classes))
    for rnd in range(1, cfg.num_server_rounds + 1):
        states, weights = [], []
        for site, (x, y) in sorted(train.items()):
            head = build_head(HeadConfig("linear", dim, classes))
            head.load_state_dict(global_head.state_dict())
            batch = min(cfg.batch_size, len(y))
            noise = sgd_noise(cfg, examples=len(y), batch=batch) if cfg.dp else 0.0
            settings = dataclasses.replace(train_settings(cfg, len(y), rnd, noise=noise, proximal_mu=0.0, site=site),
                                           augment=False, grad_sample_mode="hooks")
            train_local(head, x, y, settings, device=torch.device("cpu"))
            states.append(head.state_dict())
            weights.append(len(y))
        total = sum(weights)
        global_head.load_state_dict({k: sum(s[k] * w for s, w in zip(states, weights, strict=True)) / total
                                     for k in states[0]})
    w = global_head.weight.detach().numpy()
    b = global_head.bias.detach().numpy()
    return _accuracy(w, b, test)


def run(quick: bool) -> tuple[dict[str, float], dict[str, str], dict]:
    from simulations.federation import default_cache_root

    figures: dict[str, float] = {}
    units: dict[str, str] = {}
    notes: list[str] = []
    t0 = time.monotonic()
    for enc_name in ENCODERS[:2] if quick else ENCODERS:
        enc_dir = _encoder_dir(enc_name, default_cache_root() / "benchmarks", quick)
        if enc_dir is None:
            notes.append(f"{enc_name}: not available")
            continue
        train, test, classes = _features(enc_dir)
        for head in HEADS:
            fn = dp_stats_accuracy if head == "dp-stats" else linear_accuracy
            kwargs = {"draws": 2 if quick else 5} if head == "dp-stats" else ({"rounds": 3} if quick else {})
            key = f"{enc_name}_{head}"
            figures[f"{key}_pooled_no_dp_accuracy"] = round(fn({"pooled": _pool(train)}, test, classes, None,
                                                               **kwargs), 4)
            units[f"{key}_pooled_no_dp_accuracy"] = "top-1"
            for eps in (EPSILONS[::2] if quick else EPSILONS):
                name = f"{key}_eps{eps:g}_accuracy"
                figures[name] = round(fn(train, test, classes, eps, **kwargs), 4)
                units[name] = "top-1"
                print(f"{enc_name:20s} {head:9s} eps {eps:>4g}: {figures[name]:.3f}", flush=True)
    figures["wall_s"] = round(time.monotonic() - t0, 1)
    units["wall_s"] = "s"
    return figures, units, {"epsilons": list(EPSILONS), "delta": 1e-5, "notes": notes}


def _pool(train: dict) -> tuple[np.ndarray, np.ndarray]:
    return (np.concatenate([x for x, _ in train.values()]), np.concatenate([y for _, y in train.values()]))


def plot(figures: dict[str, float], out: Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = {"generated": "tab:blue", "scatternet": "tab:green", "efficientnet-lite0": "tab:purple"}
    for enc in ENCODERS:
        for head, style in (("dp-stats", "-"), ("linear", "--")):
            pts = sorted((float(k.split("_eps")[1].split("_")[0]), v) for k, v in figures.items()
                         if k.startswith(f"{enc}_{head}_eps"))
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", color=colors[enc],
                    label=f"{enc} encoder, {head} (federated DP)")
            pooled = figures.get(f"{enc}_{head}_pooled_no_dp_accuracy")
            if pooled is not None and head == "dp-stats":
                ax.axhline(pooled, color=colors[enc], linestyle=":", linewidth=1)
    ax.set(xscale="log", xlabel="epsilon per site (delta 1e-5)", ylabel="federated top-1, 476 test images",
           ylim=(0, 1), title="Privacy-utility on hip-consortium (8 sites; dotted: pooled, no DP)")
    ax.set_xticks(EPSILONS, [f"{e:g}" for e in EPSILONS])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    path = out or RESULTS_DIR / "privacy_utility.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    return bench_main("privacy_utility", __doc__, run, argv, after=lambda figures, _p: print(f"wrote {plot(figures)}"),
                      quick_help="two encoders, three epsilons, fewer draws and rounds")


if __name__ == "__main__":
    sys.exit(main())
