"""The researcher's side of a run with a head: the public encoder, the features, evaluation, baselines.

The encoder is ``--encoder DIR`` or the default one (pretrained once on generated public
designs and cached). Every site's features are computed here once, into the same per-site
feature cache the simulated ClientApps read, so no round runs the encoder again. The
global head is evaluated on the test set's features; calibration is fitted on the sites'
validation features, exactly as on their images through the encoder (the ``unknown``
distance on the validation images' projected features before the unit norm, computed here
from the images: the feature cache holds unit-norm features only).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.config import RunConfig

logger = logging.getLogger(__name__)


@dataclass
class HeadData:
    encoder: Any  # FrozenEncoder
    encoder_dir: Path
    train: dict[str, tuple[np.ndarray, np.ndarray]]  # site -> (features, labels)
    val: dict[str, tuple[np.ndarray, np.ndarray]]
    test: tuple[np.ndarray, np.ndarray]
    val_projected: dict[str, np.ndarray] = field(default_factory=dict)  # site -> validation features before unit norm


def resolve_encoder(cfg: RunConfig, encoder_dir: Path | None, *, progress: bool, timing: dict[str, float]
                    ) -> tuple[RunConfig, Path | None]:
    """The run's encoder folder (pretraining the default one if it is not cached) and the config naming it."""
    if not cfg.uses_encoder:
        return cfg, None
    from common.encoders import WEIGHTS, file_sha256
    from common.errors import ConfigError

    if encoder_dir is None:
        from simulations.pretrain.pipeline import ensure_default_encoder

        t0 = time.monotonic()
        encoder_dir = ensure_default_encoder(image_size=cfg.image_size, progress=progress)
        timing["pretrain_s"] = round(time.monotonic() - t0, 1)
    weights = Path(encoder_dir) / WEIGHTS if Path(encoder_dir).is_dir() else Path(encoder_dir)
    if not weights.is_file():
        raise ConfigError("--encoder must name a folder with encoder.pt (implantfl-sim pretrain --out DIR)")
    sha = file_sha256(weights)
    if cfg.encoder and cfg.encoder != sha:
        raise ConfigError(f"the run config names encoder {cfg.encoder[:12]}, --encoder is {sha[:12]}")
    from common.encoders import read_card

    size = int(read_card(weights.parent).config.get("image_size", cfg.image_size))
    if size != cfg.image_size:
        raise ConfigError(f"the encoder takes {size}-pixel crops; the run's image-size is {cfg.image_size}")
    return cfg.replace(encoder=sha), weights.parent


def head_data(cfg: RunConfig, encoder_dir: Path, data: Mapping[str, Any], test: Any, cache_dir: Path,
              params: Any, timing: dict[str, float]) -> HeadData:
    """Load the encoder and compute (or read from cache) every site's and the test set's features."""
    from client.data.features import site_features
    from common.device import pick_device
    from common.encoders import load_encoder

    t0 = time.monotonic()
    encoder = load_encoder(encoder_dir, expected_sha256=cfg.encoder)
    device = pick_device()
    train, val, val_projected = {}, {}, {}
    for name, d in data.items():
        f = site_features(d, encoder, params=params, cache_dir=cache_dir / name, device=device).f
        train[name] = (f[~d.is_val], d.y[~d.is_val])
        val[name] = (f[d.is_val], d.y[d.is_val])
        val_projected[name] = encoder.encode(d.x[d.is_val], device=device, projected=True)
    ft = site_features(test, encoder, params=params, cache_dir=cache_dir / "_test", device=device).f
    timing["features_s"] = round(time.monotonic() - t0, 1)
    return HeadData(encoder, Path(encoder_dir), train, val, (ft, test.y), val_projected)


def global_head(cfg: RunConfig, dim: int, num_classes: int, arrays: Any) -> Any:
    """The global head the server holds (the statistics' solution or the DP-SGD head)."""
    from client.training.jobs import eval_head

    return eval_head(cfg, dim, num_classes, arrays)


def evaluate_head(cfg: RunConfig, hd: HeadData, num_classes: int, arrays: Any) -> Any:
    """``EvalResult`` of the global head on the test features (or, for finetune, of the network on images)."""
    import torch

    from client.training.train import evaluate

    return evaluate(global_head(cfg, hd.encoder.dim, num_classes, arrays), *hd.test, device=torch.device("cpu"))


def calibrate(cfg: RunConfig, hd: HeadData, num_classes: int, arrays: Any) -> Any:
    """Temperature, the `unknown` thresholds (probability and feature space) and the conformal set
    thresholds, fitted on the sites' validation features."""
    from common.calibration import fit_from_splits
    from common.open_set import class_directions

    head = global_head(cfg, hd.encoder.dim, num_classes, arrays)
    directions = class_directions(head.weight.detach().numpy()) if cfg.head != "mlp" else None
    projected = [hd.val_projected[name] for name in hd.val] if directions is not None else None
    return fit_from_splits(head, list(hd.val.values()), directions=directions, projected=projected)


def baselines(cfg: RunConfig, hd: HeadData, class_ids: list[str], images: Mapping[str, Any], test_images: Any,
              *, progress: bool, timing: dict[str, float]) -> dict[str, Any]:
    """pooled, pooled_dp, single_site on features, and pooled_cnn end to end on the images."""
    from common.device import pick_device
    from simulations.baselines import cnn_baseline_config, head_baselines
    from simulations.centralized import train_centralized

    t0 = time.monotonic()
    out = head_baselines(hd.train, hd.test, cfg, class_ids)
    timing["baseline_heads_s"] = round(time.monotonic() - t0, 1)
    t0 = time.monotonic()
    cnn_cfg = cnn_baseline_config(cfg)
    cnn = train_centralized([d.train() for d in images.values()], (test_images.x, test_images.y), cnn_cfg, class_ids,
                            device=pick_device(), progress=progress)
    out["pooled_cnn"] = {"final": cnn.final, "dp": False, "epsilon": 0.0, "train_examples": cnn.train_examples,
                         "accuracy_per_epoch": cnn.accuracy_per_epoch, "model": "cnn",
                         "recipe": "Adam, learning rate 0.002, batch 32, 20 passes (the study CNN, no DP)"}
    timing["baseline_cnn_s"] = round(time.monotonic() - t0, 1)
    return out
