"""A learned implant segmenter: a small MONAI U-Net, trained on public renders only.

The network sees the radiograph reduced to :data:`SIDE` x :data:`SIDE` (the implant is
large; the model input is 64 px) and predicts the implant-metal probability per pixel;
the mask is brought back to the image's shape and cleaned up like the threshold
segmenter's (the largest thick component is the implant, close components are its parts,
far large ones are foreign objects), so both give the same :class:`Segmentation` and the
same quality gate applies. Weights are pinned by SHA-256: ``segmenter.pt`` beside a card
``segmenter.json`` (what it was trained on, its validation IoU); a file whose hash does not
match its card is refused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from client.data.segmentation import (
    MIN_AREA_FRACTION,
    Segmentation,
    _edge_step,
    _implant_components,
)
from client.data.stored_image import StoredImage, as_array
from common.errors import ConfigError

SIDE = 128
CHANNELS = (8, 16, 32, 64)
WEIGHTS, CARD = "segmenter.pt", "segmenter.json"


def build_unet():
    """The network (2-D MONAI U-Net, one input and one output channel, logits)."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=CHANNELS, strides=(2, 2, 2),
                num_res_units=1)


def network_input(image: np.ndarray) -> np.ndarray:
    """(SIDE, SIDE) float32 of an image in [0, 1] (area-averaged)."""
    return cv2.resize(np.asarray(image, np.float32), (SIDE, SIDE), interpolation=cv2.INTER_AREA)


def save_segmenter(model, out: Path, card: dict[str, Any]) -> dict[str, Any]:
    """Write ``segmenter.pt`` and its card (with the weights' SHA-256); returns the card."""
    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / WEIGHTS)
    card = {**card, "sha256": hashlib.sha256((out / WEIGHTS).read_bytes()).hexdigest(), "side": SIDE,
            "channels": list(CHANNELS), "arch": "monai UNet 2-D"}
    (out / CARD).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return card


class LearnedSegmenter:
    """A trained U-Net, loaded from a folder (``segmenter.pt`` + ``segmenter.json``)."""

    def __init__(self, folder: Path) -> None:
        import torch

        folder = Path(folder)
        try:
            self.card = json.loads((folder / CARD).read_text(encoding="utf-8"))
            blob = (folder / WEIGHTS).read_bytes()
        except (OSError, ValueError) as e:
            raise ConfigError(f"no learned segmenter in {folder} ({type(e).__name__}); train one with "
                              "implantfl-sim train-segmenter --out DIR") from None
        self.sha256 = hashlib.sha256(blob).hexdigest()
        if self.sha256 != self.card.get("sha256"):
            raise ConfigError("segmenter.pt does not match the SHA-256 in its segmenter.json")
        self.model = build_unet()
        self.model.load_state_dict(torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True))
        self.model.eval()

    def probability(self, image: np.ndarray) -> np.ndarray:
        """(SIDE, SIDE) implant probability of an image in [0, 1]."""
        import torch

        with torch.no_grad():
            x = torch.from_numpy(network_input(image))[None, None]
            return torch.sigmoid(self.model(x))[0, 0].numpy()

    def segment(self, img: np.ndarray | StoredImage) -> Segmentation:
        """The implant of ``img`` (float HxW in [0, 1], high = dense)."""
        image = as_array(img)
        h, w = image.shape
        k = max(1, -(-max(h, w) // 512))
        work = cv2.resize(image, (w // k, h // k), interpolation=cv2.INTER_AREA) if k > 1 else image
        prob = cv2.resize(self.probability(work), work.shape[::-1], interpolation=cv2.INTER_LINEAR)
        metal = (prob > 0.5).astype(np.uint8)
        found = _implant_components(metal, MIN_AREA_FRACTION * metal.size) if metal.any() else None
        if found is None:
            return Segmentation(np.zeros((1, 1), np.uint8), 1, (h, w), None, 0, 0.0, 0.0)
        mask, others = found
        contrast = float(work[mask > 0].mean() - np.median(work))
        step = _edge_step(work, mask)
        bx, by, bw, bh = cv2.boundingRect(mask)
        box = (bx * k, by * k, min(w, (bx + bw) * k), min(h, (by + bh) * k))
        return Segmentation(mask * np.uint8(255), k, (h, w), box, others, contrast, step)
