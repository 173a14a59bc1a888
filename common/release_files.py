"""Reading a model release directory: one loader for the server (export, checks) and the site (predict).

The layout and the writer are in ``server.release``; this module only reads, so the
client, which may not import ``server``, and the server share it. Loading builds the
registered model, loads its plain state_dict strictly, and checks that the catalog and
preprocessing belong to that model. A release of a run with a head holds the public
encoder file (``encoder.pt``, checked against the SHA-256 ``model.json`` names) and the
head's weights (``model.pt``); ``finetune`` releases hold the whole trained network.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from common.calibration import Calibration, load_calibration
from common.catalog import Catalog
from common.errors import InvalidInputError
from common.models import build_model
from common.preprocess_params import PreprocessParams


@dataclass(frozen=True)
class Release:
    """A loaded release: the model (eval mode), its label space, preprocessing, metadata and calibration."""

    model: torch.nn.Module
    catalog: Catalog
    preprocess: PreprocessParams
    info: dict[str, Any]  # model.json
    calibration: Calibration = field(default_factory=Calibration)


def load_release(path: str | Path) -> Release:
    """Load a release directory into a ready-to-use (eval mode) model.

    Raises
    ------
    InvalidInputError
        If a file is missing or unreadable, the weights do not fit the model, or the
        catalog or preprocessing does not belong to the model.
    """
    path = Path(path)
    try:
        info = json.loads((path / "model.json").read_text())
        catalog = Catalog.load(path / "catalog.json")
        preprocess = PreprocessParams.from_dict(json.loads((path / "preprocess.json").read_text()))
        image_size = int(info["image_size"])
        state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
        model = image_model(info, len(catalog), state, encoder_dir=path)
    except (OSError, KeyError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise InvalidInputError(f"the model release cannot be loaded ({type(e).__name__})") from e
    if info.get("catalog_fingerprint") != catalog.fingerprint():
        raise InvalidInputError("the release's catalog does not match the catalog its model was trained on")
    if preprocess.image_size != image_size:
        raise InvalidInputError("the release's preprocessing image size differs from the model's input size")
    return Release(model.eval(), catalog, preprocess, info, load_calibration(path))


ENCODER_MODEL = "encoder+head"  # model.json "model" of a release built on a public encoder


def image_model(info: dict[str, Any], num_classes: int, state: dict[str, torch.Tensor], *,
                encoder: Any = None, encoder_dir: Path | None = None) -> torch.nn.Module:
    """The image -> logits model a release describes, holding ``state``.

    ``info`` is ``model.json`` (``model``, ``image_size``, and for a head: ``head``,
    ``encoder_sha256``). The encoder is ``encoder``, or the file in ``encoder_dir`` with
    the hash ``info`` names (a mismatch raises).
    """
    if info["model"] != ENCODER_MODEL:
        model = build_model(info["model"], num_classes=num_classes, image_size=int(info["image_size"]))
        model.load_state_dict(state, strict=True)
        return model
    from common.encoders import load_encoder
    from common.models.heads import EncoderClassifier, HeadConfig, build_head

    if encoder is None:
        if encoder_dir is None:
            raise ValueError("a release with a head needs its encoder")
        encoder = load_encoder(encoder_dir, expected_sha256=str(info["encoder_sha256"]))
    kind = "mlp" if info.get("head") == "mlp" else "linear"
    head = build_head(HeadConfig(kind, encoder.dim, num_classes))
    model = EncoderClassifier(encoder, head)
    if info.get("head") == "finetune":
        model.load_state_dict(state, strict=True)
    else:
        head.load_state_dict(state, strict=True)
    return model
