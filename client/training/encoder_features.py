"""The public encoder a site computes features with, checked against the run, and its cached features.

A run with a head names its encoder by SHA-256 (run-config ``encoder``). The site uses
only its own copy of the encoder (``[site] encoder`` in ``site.toml``; the simulation's
encoder folder for a simulated site), and only if that file has the run's hash; its policy
may also pin the encoders it accepts (``[privacy] allowed-encoders``). A mismatch is a
refusal with a reason, never a silent fallback.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from client.data.features import site_features
from client.site.config import SiteConfig
from common.config import RunConfig
from common.errors import ConfigError, PrivacyPolicyError


@dataclass(frozen=True)
class FeatureSplits:
    train_x: np.ndarray  # (N, d) unit-norm features
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    dim: int
    encoded: int  # images the encoder ran on in this call (0: all from the feature cache)


def check_encoder_policy(site: SiteConfig, cfg: RunConfig) -> None:
    """Refuse an encoder the site's policy does not list (when it lists any)."""
    from client.training.privacy import PrivacyPolicy

    allowed = PrivacyPolicy.from_dict(site.policy or {}).allowed_encoders
    if allowed and cfg.encoder.lower() not in allowed:
        raise PrivacyPolicyError(f"the run's encoder {cfg.encoder[:12]} is not among this site's allowed-encoders")


def site_encoder(site: SiteConfig, cfg: RunConfig):  # noqa: ANN201 - FrozenEncoder (torch imported lazily)
    """The site's encoder, if it is the one the run names."""
    from common.encoders import load_encoder

    if not cfg.encoder:
        raise ConfigError("the run names no encoder (run-config encoder)")
    if site.encoder_path is None:
        raise ConfigError(f"this site has no public encoder ([site] encoder); the run needs {cfg.encoder[:12]}")
    check_encoder_policy(site, cfg)
    encoder = load_encoder(site.encoder_path, expected_sha256=cfg.encoder)
    check_image_size(encoder, cfg)
    return encoder


def check_image_size(encoder, cfg: RunConfig) -> None:  # noqa: ANN001
    """An encoder computes features only of crops of the size it was trained on."""
    if encoder.config.image_size != cfg.image_size:
        raise ConfigError(f"the encoder takes {encoder.config.image_size}-pixel crops; the run's image-size is "
                          f"{cfg.image_size}")


def feature_splits(site: SiteConfig, cfg: RunConfig, data, *, device=None) -> FeatureSplits:  # noqa: ANN001
    """Train and validation features of a site's data (a ``SiteData``), from the feature cache where it can."""
    import dataclasses

    encoder = site_encoder(site, cfg)
    params = dataclasses.replace(site.preprocess, image_size=cfg.image_size)
    feats = site_features(data, encoder, params=params, cache_dir=site.cache_dir, device=device)
    val = data.is_val
    return FeatureSplits(feats.f[~val], data.y[~val], feats.f[val], data.y[val], encoder.dim, feats.encoded)
