"""A public encoder: a frozen feature extractor, named by the SHA-256 of its file.

``encoder.pt`` holds everything that defines the function (backbone configuration,
weights, and the feature standardisation statistics taken from the public data), so its
hash names the function exactly: a site computes features only with an encoder whose
hash is the one the run config names (:func:`check_encoder`). ``encoder.json`` is the
card beside it: architecture, feature dimension, the hash, the public source and what it
excludes, the preprocessing, and what the pretraining cost.

Features are the backbone's output, centred and projected by a linear map fitted on the
public images only (:func:`fit_projection`: the public designs' discriminant directions,
or plain standardisation), then scaled to unit L2 norm: every image's feature vector has
norm exactly 1, which bounds what one image can change in any statistic or gradient
computed from it. A low-dimensional projection is what makes private heads work with few
images: the DP noise grows with the square root of the dimension, the signal does not.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from common.encoders.backbones import BackboneConfig, build_backbone
from common.errors import ConfigError, InvalidInputError

logger = logging.getLogger(__name__)

FORMAT = "implantfl-encoder/1"
WEIGHTS = "encoder.pt"
CARD = "encoder.json"


class FrozenEncoder(nn.Module):
    """Backbone + public centring and projection + unit norm. Always in eval mode, no gradients to its weights.

    Parameters
    ----------
    config
        The backbone's configuration.
    backbone
        A trained backbone (default: built from ``config``).
    out_dim
        Feature dimension after the projection (default: the backbone's; set when loading).
    """

    def __init__(self, config: BackboneConfig, backbone: nn.Module | None = None, *, out_dim: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone if backbone is not None else build_backbone(config)
        raw = int(self.backbone.dim)
        self.register_buffer("feature_mean", torch.zeros(raw))
        self.register_buffer("projection", torch.eye(raw)[:, : out_dim or raw].clone())
        self.sha256 = ""  # set when loaded from (or saved to) a file
        self.requires_grad_(False)
        self.eval()

    @property
    def dim(self) -> int:
        return int(self.projection.shape[1])

    @property
    def raw_dim(self) -> int:
        return int(self.feature_mean.numel())

    @property
    def cam_layer(self) -> nn.Module:
        return self.backbone.cam_layer

    def train(self, mode: bool = True) -> FrozenEncoder:
        """Frozen: always eval, unless made trainable (``requires_grad_(True)``, the finetune head)."""
        return super().train(mode and any(p.requires_grad for p in self.backbone.parameters()))

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features before standardisation."""
        return self.backbone(x)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features centred and projected with the public statistics, before the unit norm."""
        return (self.backbone(x) - self.feature_mean) @ self.projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.project(x)
        return f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def set_projection(self, mean: np.ndarray, projection: np.ndarray) -> None:
        """Install a centring vector (raw_dim,) and projection (raw_dim, k) fitted on *public* images."""
        mean = np.asarray(mean, np.float32)
        projection = np.asarray(projection, np.float32)
        if mean.shape != (self.raw_dim,) or projection.ndim != 2 or projection.shape[0] != self.raw_dim:
            raise ValueError("projection does not fit the backbone's features")
        self.feature_mean = torch.from_numpy(mean.copy())
        self.projection = torch.from_numpy(projection.copy())

    @torch.no_grad()
    def encode(self, x: np.ndarray, *, device: torch.device | None = None, batch_size: int = 256,
               raw: bool = False, projected: bool = False) -> np.ndarray:
        """Features of images ``x`` (N, 1, S, S) float32 in [0, 1] -> float32 (N, dim).

        ``raw``: the backbone's features (N, raw_dim); ``projected``: centred and projected,
        not scaled to unit norm (:meth:`project`).
        """
        device = device or torch.device("cpu")
        self.to(device)
        step = self.raw if raw else self.project if projected else self
        out = [np.zeros((0, self.raw_dim if raw else self.dim), np.float32)]
        for i in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size], np.float32)).to(device)
            out.append(step(xb).float().cpu().numpy())
        return np.concatenate(out)


@dataclass
class EncoderCard:
    """``encoder.json``: what an encoder is, where its public data came from, what it cost."""

    arch: str
    dim: int
    sha256: str
    source: dict[str, Any]  # kind, what it holds, how many images/designs, seed
    excludes: str  # what the public data does not contain (the consortium catalog's designs, ...)
    preprocess: dict[str, Any]  # PreprocessParams of the images it was trained on
    config: dict[str, Any]  # BackboneConfig
    projection: dict[str, Any] = field(default_factory=dict)  # how the public projection was fitted
    training: dict[str, Any] = field(default_factory=dict)  # epochs, objective, accuracy on held-out public images
    timing: dict[str, float] = field(default_factory=dict)  # seconds: render, preprocess, train
    created: str = ""
    format: str = FORMAT

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EncoderCard:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def encoder_bytes(encoder: FrozenEncoder) -> bytes:
    """The exact bytes of ``encoder.pt`` for ``encoder`` (torch.save of plain tensors is deterministic)."""
    buf = io.BytesIO()
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    torch.save({"format": FORMAT, "config": encoder.config.to_dict(), "state_dict": state}, buf)
    return buf.getvalue()


def save_encoder(encoder: FrozenEncoder, out_dir: Path, card: EncoderCard) -> EncoderCard:
    """Write ``encoder.pt`` and ``encoder.json``; returns the card with its hash filled in."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = encoder_bytes(encoder)
    tmp = out_dir / (WEIGHTS + ".partial")
    tmp.write_bytes(data)
    tmp.replace(out_dir / WEIGHTS)
    card.sha256 = hashlib.sha256(data).hexdigest()
    card.dim, card.arch, card.config = encoder.dim, encoder.config.arch, encoder.config.to_dict()
    (out_dir / CARD).write_text(json.dumps(card.to_dict(), indent=2) + "\n", encoding="utf-8")
    encoder.sha256 = card.sha256
    return card


def load_encoder(path: Path, *, expected_sha256: str | None = None) -> FrozenEncoder:
    """Load an encoder folder (or its ``encoder.pt``); refuse it if its hash is not ``expected_sha256``.

    Raises
    ------
    InvalidInputError
        Missing or unreadable file, or weights that do not fit their configuration.
    ConfigError
        The file's hash differs from ``expected_sha256`` (never a silent fallback).
    """
    path = Path(path)
    weights = path / WEIGHTS if path.is_dir() else path
    try:
        data = weights.read_bytes()
    except OSError as e:
        raise InvalidInputError(f"the encoder file cannot be read ({type(e).__name__})") from e
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 and digest != expected_sha256:
        raise ConfigError(f"encoder mismatch: the run names encoder {expected_sha256[:12]}, this file is "
                          f"{digest[:12]}; install the consortium's encoder")
    try:
        blob = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise ValueError("not an ImplantFL encoder file")
        state = blob["state_dict"]
        encoder = FrozenEncoder(BackboneConfig.from_dict(blob["config"]), out_dim=int(state["projection"].shape[1]))
        encoder.load_state_dict(state, strict=True)
    except Exception as e:  # noqa: BLE001 - whatever a damaged or foreign file raises, it is refused the same way
        raise InvalidInputError(f"the encoder file cannot be loaded ({type(e).__name__})") from e
    encoder.sha256 = digest
    return encoder


def read_card(path: Path) -> EncoderCard:
    """The ``encoder.json`` of an encoder folder."""
    try:
        return EncoderCard.from_dict(json.loads((Path(path) / CARD).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as e:
        raise InvalidInputError(f"the encoder card cannot be read ({type(e).__name__})") from e


def fit_projection(raw: np.ndarray, labels: np.ndarray | None, *, dim: int = 16, shrinkage: float = 0.1,
                   ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Centring and projection of raw backbone features, fitted on *public* features only.

    With labels of at least ``dim + 1`` public classes: the ``dim`` leading discriminant
    directions (generalised eigenvectors of the between-class scatter against the
    within-class covariance, shrunk by ``shrinkage`` times its mean eigenvalue), scaled
    so the shrunk within-class covariance is the identity. The public classes are other
    designs than the catalog's: these are the directions along which implant designs
    differ in general, with the nuisance (pose, scanner, anatomy) whitened away.
    Otherwise: standardisation (``dim`` ignored).

    Returns
    -------
    mean (raw_dim,), projection (raw_dim, k), and a description for the card.
    """
    import scipy.linalg

    x = np.asarray(raw, np.float64)
    mean = x.mean(0)
    classes = np.unique(labels) if labels is not None else np.zeros(0)
    if labels is None or len(classes) < dim + 1:
        std = np.maximum(x.std(0), 1e-6)
        return mean, np.diag(1.0 / std), {"kind": "standardise", "dim": int(x.shape[1]),
                                          "fitted_on": int(len(x))}
    labels = np.asarray(labels)
    centred = x.copy()
    means = np.zeros((len(classes), x.shape[1]))
    for i, c in enumerate(classes):
        members = labels == c
        means[i] = x[members].mean(0)
        centred[members] -= means[i]
    within = centred.T @ centred / max(len(x) - len(classes), 1)
    within += shrinkage * np.trace(within) / within.shape[0] * np.eye(within.shape[0])
    between = np.cov(means.T)
    vals, vecs = scipy.linalg.eigh(between, within)
    order = np.argsort(vals)[::-1][:dim]
    projection = vecs[:, order]  # projection.T @ within @ projection = I
    return mean, projection, {"kind": "discriminant", "dim": int(dim), "shrinkage": shrinkage,
                              "public_classes": int(len(classes)), "fitted_on": int(len(x))}
