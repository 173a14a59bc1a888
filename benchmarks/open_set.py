"""Open set: does the release say ``unknown`` for implant designs the catalog does not hold?

The main job's release (``--release DIR``, default: the newest ``runs/main-*/release``, else
a fresh run of the ``hip-consortium`` preset) is shown two sets of radiographs:

- **known**: the main job's 476 test images (catalog designs); of those it identifies
  correctly, the share that passes (is not flagged ``unknown``): goal >= 95%;
- **unseen**: radiographs of random stem designs that are disjoint from the catalog *and*
  from the encoder's public pretraining designs (at least the pretraining minimum distance
  from both), rendered by the same generator in random scanner styles and preprocessed by
  the site pipeline; the share flagged ``unknown``: goal >= 90%.

The flag is the release's own (``calibration.json``: the calibrated-probability threshold
and the feature-space threshold on its ``feature_metric``, both fitted on validation images
only; :mod:`common.open_set`). Also written: the ROC of each unknown score (the release's
feature score, the cosine to the nearest class direction that releases before the distance
to the class rays used, the calibrated top probability) for known vs unseen images, as
``open_set.png``; ``feature_score_auc`` is the release's feature score's, ``cosine_auc``
the cosine's.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._util import RESULTS_DIR, bench_main

ROOT = Path(__file__).resolve().parent.parent


def _release(path: Path | None) -> Path:
    if path is not None:
        return path
    runs = sorted((ROOT / "runs").glob("main-*/release"), key=lambda p: p.stat().st_mtime)
    if runs:
        return runs[-1]
    from simulations.runner import SimOptions, run

    out = Path(tempfile.mkdtemp()) / "main"
    run(SimOptions(preset="hip-consortium", out=out, progress=False, baseline=False))
    return out / "release"


def _unseen_designs(n: int, seed: int) -> list[Any]:
    from simulations.pretrain.designs import random_designs
    from simulations.pretrain.pipeline import PretrainOptions
    from simulations.synth.catalog_spec import DESIGNS

    pretraining = random_designs(PretrainOptions(out=Path(".")).designs, seed=0)  # the default encoder's designs
    return random_designs(n, seed=seed, exclude=[*DESIGNS, *pretraining])


def _scores(release: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(calibrated probabilities (N, C), the release's feature scores (N,), cosine scores (N,)) of preprocessed images."""
    import torch

    from common.open_set import COSINE, head_directions, projected_features, score

    model = release.model.eval()
    r = projected_features(model.encoder, x)
    f = r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)
    with torch.no_grad():
        logits = model.head(torch.from_numpy(f.astype(np.float32)))
    directions = head_directions(model)
    return (release.calibration.probabilities(logits), score(r, directions, release.calibration.feature_metric),
            score(r, directions, COSINE))


def _known_side(scores: np.ndarray, metric: str) -> np.ndarray:
    """A feature score turned so that higher means nearer the catalog (a distance negated)."""
    from common.open_set import RAY_DISTANCE

    return -scores if metric == RAY_DISTANCE else scores


def run(quick: bool, release_dir: Path | None = None) -> tuple[dict[str, float], dict[str, str], dict[str, Any]]:
    from client.data.site_data import load_site
    from common.catalog import Catalog
    from common.release_files import load_release
    from simulations.pretrain.public_set import write_public_set

    release_path = _release(release_dir)
    release = load_release(release_path)
    if release.info.get("model") != "encoder+head":
        raise SystemExit("the open-set benchmark needs a release on a public encoder (the default route)")
    # known: the main job's test set
    from simulations.federation import Federation, ensure_synthetic

    fed = Federation.open(ensure_synthetic("hip-consortium", 0))
    test = load_site(fed.test_dir, catalog=fed.catalog, params=release.preprocess, val_fraction=0.0)
    probs, feats, cos = _scores(release, test.x)
    correct = probs.argmax(1) == test.y
    known_unknown = release.calibration.is_unknown(probs, feats)
    # unseen: designs outside the catalog and the pretraining set
    designs = _unseen_designs(8 if quick else 20, seed=4242)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_public_set(Path(tmp) / "unseen", designs, images_per_design=6 if quick else 15, seed=4242)
        unseen = load_site(folder, catalog=Catalog.load(folder / "catalog.json"), params=release.preprocess,
                           val_fraction=0.0)
    u_probs, u_feats, u_cos = _scores(release, unseen.x)
    unseen_unknown = release.calibration.is_unknown(u_probs, u_feats)
    metric = release.calibration.feature_metric
    figures = {
        "known_correct_passed_share": round(float((~known_unknown[correct]).mean()), 4),
        "unseen_flagged_unknown_share": round(float(unseen_unknown.mean()), 4),
        "known_test_accuracy": round(float(correct.mean()), 4),
        "known_flagged_share": round(float(known_unknown.mean()), 4),
        "unseen_images": int(len(unseen.y)),
        "known_images": int(len(test.y)),
        "feature_score_auc": round(_auc(_known_side(feats, metric), _known_side(u_feats, metric)), 4),
        "cosine_auc": round(_auc(cos, u_cos), 4),
        "probability_auc": round(_auc(probs.max(1), u_probs.max(1)), 4),
    }
    units = {k: ("share" if k.endswith("share") or k.endswith("accuracy") else "images" if k.endswith("images")
                 else "AUC") for k in figures}
    _plot((feats, u_feats), (cos, u_cos), (probs.max(1), u_probs.max(1)), release.calibration,
          (known_unknown.mean(), unseen_unknown.mean()))
    return figures, units, {"release": str(release_path), "unseen_designs": len(designs),
                            "feature_metric": metric, "feature_threshold": release.calibration.feature_threshold,
                            "probability_threshold": release.calibration.unknown_threshold}


def _auc(known: np.ndarray, unseen: np.ndarray) -> float:
    """AUC of telling unseen (positive: low score) from known images by a score."""
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(known)), np.ones(len(unseen))]
    return float(roc_auc_score(y, -np.r_[known, unseen]))


def _plot(feature: tuple[np.ndarray, np.ndarray], cosine: tuple[np.ndarray, np.ndarray],
          probability: tuple[np.ndarray, np.ndarray], cal: Any, flagged: tuple[float, float]) -> Path:
    """ROC of each score (known, unseen) and the release's own flag (share of known, of unseen flagged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    from common.open_set import COSINE

    curves = [(f"feature score: {cal.feature_metric}", *(_known_side(s, cal.feature_metric) for s in feature))]
    if cal.feature_metric != COSINE:
        curves.append(("cosine to the nearest class (earlier releases)", *cosine))
    curves.append(("calibrated top probability", *probability))
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, k, u in curves:
        y = np.r_[np.zeros(len(k)), np.ones(len(u))]
        fpr, tpr, _ = roc_curve(y, -np.r_[k, u])
        ax.plot(fpr, tpr, label=f"{name} (AUC {_auc(k, u):.3f})")
    ax.scatter([float(flagged[0])], [float(flagged[1])], color="black", zorder=3, label="the release's flag")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set(xlabel="known test images flagged unknown", ylabel="unseen-design images flagged unknown",
           title="Unknown implants: ROC of the release's scores")
    ax.legend(fontsize=8, loc="lower right")
    path = RESULTS_DIR / "open_set.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    release = None
    if "--release" in argv:
        i = argv.index("--release")
        release = Path(argv[i + 1])
        del argv[i:i + 2]
    return bench_main("open_set", __doc__, lambda quick: run(quick, release), argv,
                      quick_help="8 unseen designs x 6 images instead of 20 x 15")


if __name__ == "__main__":
    sys.exit(main())
