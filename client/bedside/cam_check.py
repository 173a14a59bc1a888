"""Does the Grad-CAM point at the implant? Its peak's hit rate on images with known implant masks.

"On the implant" is the annotated implant mask carried through the same ROI crop and resize
as the image, grown by half a Grad-CAM cell (the CAM cannot place its peak more finely, and
a model also reads the implant's outline, just outside the mask). Chance is the grown
mask's area share: what a peak placed at random hits. A release's model card states the
hit rate, chance, their ratio and a one-sided binomial test (measured on the run's test
images, where the generator or a reader drew the masks).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from client.bedside.gradcam import cam_target, peak
from client.data.ingest import read_image
from client.data.transforms import CropROI, Resize, Sample


def cam_grid(model: torch.nn.Module, size: int) -> int:
    """Cells across the Grad-CAM layer's output for a ``size``-pixel input (1 when the model has none)."""
    target = cam_target(model)
    if target is None:
        return size
    seen: list[int] = []
    handle = target.register_forward_hook(lambda _m, _i, out: seen.append(int(out.shape[-1])))
    try:
        with torch.no_grad():
            model(torch.zeros(1, 1, size, size))
    finally:
        handle.remove()
    return seen[0] if seen else size


def cam_hit_rate(predictor: Any, items: Iterable[tuple[Path, Path]], *, max_images: int = 200) -> dict[str, float]:
    """Hit rate of the top class's Grad-CAM peak on the grown implant mask, for (image, mask) pairs."""
    from scipy.stats import binomtest

    size = predictor.params.image_size
    cell = max(1, size // cam_grid(predictor.model, size))
    kernel = np.ones((cell + 1, cell + 1), np.uint8)  # half a cell each side
    hits, chance = [], []
    for image_path, mask_path in list(items)[:max_images]:
        prep = predictor.prepare(image_path)
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        if prep.image is None or mask is None:
            continue
        pixels = read_image(image_path, predictor.params).pixels
        seg = predictor.pipeline(Sample(pixels)).seg
        if seg is None or mask.shape != pixels.shape:
            continue
        region = Resize(size)(CropROI(predictor.params.roi_margin)(Sample(mask.astype(np.float32) / 255, seg))).image
        region = cv2.dilate((region > 0.5).astype(np.uint8), kernel) > 0
        px, py = peak(predictor.cam(prep.image, int(predictor.probabilities(prep.image).argmax())))
        hits.append(bool(region[py, px]))
        chance.append(float(region.mean()))
    if not hits:
        return {"images": 0}
    rate, p_chance = float(np.mean(hits)), float(np.mean(chance))
    test = binomtest(int(np.sum(hits)), len(hits), p_chance, alternative="greater")
    return {"images": len(hits), "hit_rate": round(rate, 4), "chance": round(p_chance, 4),
            "ratio": round(rate / p_chance, 3) if p_chance > 0 else float("inf"), "p_value": float(test.pvalue),
            "cam_cell_px": cell}
