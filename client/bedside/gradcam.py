"""Grad-CAM (Selvaraju et al., 2017): where in the image the model looked for its answer.

The map is computed on the model's ``cam_layer`` (every model in ``common.models`` names
one): the layer's feature maps are weighted by the spatially averaged gradient of the
class score and summed, negative evidence is cut (ReLU), and the result is upsampled to
the model input. When ``cam_layer`` is a block that *ends* in pooling (the study CNN's
conv -> norm -> ReLU -> max-pool -> dropout), the block's last feature map before that
pooling is used: pooling halves the map's resolution and adds nothing to localisation.

A model without ``cam_layer`` gets a gradient x input saliency map instead, smoothed to
the same look, so ``--cam`` never fails for lack of one.

Overlays show the preprocessed model input next to the ROI crop (the region of the
original radiograph the model saw, before contrast normalisation and resizing) with the
map drawn over it in the ``jet`` colour map.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_PASS = (nn.Dropout, nn.Dropout2d, nn.Identity)
PANEL_HEIGHT = 256  # pixels; both panels of an overlay are shown at this height


def cam_target(model: nn.Module) -> nn.Module | None:
    """The module whose output Grad-CAM uses (see the module docstring), or None."""
    layer = getattr(model, "cam_layer", None)
    if not isinstance(layer, nn.Module):
        return None
    if isinstance(layer, nn.Sequential):
        parts = list(layer)
        while parts and isinstance(parts[-1], _PASS):
            parts.pop()
        if len(parts) > 1 and isinstance(parts[-1], _POOLS):
            parts.pop()
            while len(parts) > 1 and isinstance(parts[-1], _PASS):
                parts.pop()
            return parts[-1]
    return layer


def grad_cam(model: nn.Module, x: torch.Tensor, *, class_index: int | None = None) -> np.ndarray:
    """Grad-CAM of one image ``x`` (1, 1, S, S) for ``class_index`` (default: the top class).

    Returns a float32 (S, S) map in [0, 1] (all zeros when no evidence is positive).
    """
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError("grad_cam takes one image shaped (1, 1, S, S)")
    model.eval()
    target = cam_target(model)
    if target is None:
        return _saliency(model, x, class_index)
    captured: list[torch.Tensor] = []
    handle = target.register_forward_hook(lambda _m, _i, out: captured.append(out) if not captured else None)
    try:
        with torch.enable_grad():
            logits = model(x)
            c = int(logits[0].argmax()) if class_index is None else class_index
            if not captured or not captured[0].requires_grad:
                return _saliency(model, x, c)
            act = captured[0]
            grad = torch.autograd.grad(logits[0, c], act)[0]
    finally:
        handle.remove()
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * act).sum(dim=1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    return _unit(cam.cpu().numpy())


def _saliency(model: nn.Module, x: torch.Tensor, class_index: int | None) -> np.ndarray:
    """|gradient x input|, blurred: the fallback for models without a ``cam_layer``."""
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(xg)
        c = int(logits[0].argmax()) if class_index is None else class_index
        (grad,) = torch.autograd.grad(logits[0, c], xg)
    sal = (grad * xg).abs()[0, 0].detach().cpu().numpy().astype(np.float32)
    sigma = max(1.0, x.shape[-1] / 32)
    return _unit(cv2.GaussianBlur(sal, (0, 0), sigma))


def _unit(a: np.ndarray) -> np.ndarray:
    a = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    hi = float(a.max())
    return a / hi if hi > 0 else np.zeros_like(a)


def peak(cam: np.ndarray) -> tuple[int, int]:
    """(x, y) of the map's maximum."""
    y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return int(x), int(y)


def overlay(image: np.ndarray, cam: np.ndarray, *, alpha: float = 0.45) -> np.ndarray:
    """``cam`` (any size, resized to the image) over a grey ``image`` in [0, 1]: uint8 BGR."""
    h, w = image.shape
    heat = cv2.resize(cam.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap((np.clip(heat, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    grey = cv2.cvtColor((np.clip(image, 0, 1) * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    return cv2.addWeighted(colour, alpha, grey, 1 - alpha, 0)


def cam_panel(model_input: np.ndarray, roi: np.ndarray, cam: np.ndarray, *, height: int = PANEL_HEIGHT) -> np.ndarray:
    """[preprocessed model input | ROI crop with the map over it], uint8 BGR, ``height`` rows."""

    def fit(img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        return cv2.resize(img, (max(1, round(w * height / h)), height), interpolation=cv2.INTER_LINEAR)

    left = cv2.cvtColor((np.clip(model_input, 0, 1) * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    roi01 = roi.astype(np.float32)
    lo, hi = float(roi01.min()), float(roi01.max())
    roi01 = (roi01 - lo) / (hi - lo) if hi > lo else np.zeros_like(roi01)
    gap = np.full((height, 4, 3), 255, np.uint8)
    return np.hstack([fit(left), gap, fit(overlay(roi01, cam))])


def write_png(path: Path, bgr: np.ndarray) -> Path:
    """Write an overlay; raises OSError when it cannot be written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise OSError("PNG encoding failed")
    path.write_bytes(buf.tobytes())
    return path
