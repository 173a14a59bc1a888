"""Preprocessing as small composable callables (MONAI style).

Each transform checks its parameters in ``__init__`` and works in ``__call__`` on a
``Sample`` (the image plus what earlier steps learned). Random transforms start with
``Rand`` and take a seed. :class:`Compose` names the transform that failed. Train and
eval pipelines share one deterministic core so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np

from client.segmentation import Segmentation, segment_implant
from common.errors import InvalidInputError
from common.preprocess_params import PreprocessParams


@dataclass(frozen=True)
class Sample:
    image: np.ndarray  # float32 in [0, 1]
    seg: Segmentation | None = None


class TransformError(InvalidInputError):
    """A transform failed; the message names the transform, never the file."""


class Compose:
    def __init__(self, transforms: Sequence[Callable[[Sample], Sample]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            try:
                sample = t(sample)
            except InvalidInputError:
                raise
            except Exception as e:  # noqa: BLE001
                raise TransformError(f"{type(t).__name__} failed ({type(e).__name__})") from None
        return sample


class SegmentImplant:
    """Find the implant (see client.segmentation)."""

    def __call__(self, s: Sample) -> Sample:
        return replace(s, seg=segment_implant(s.image))


class QCGate:
    """Stop here with the QC reason when the segmentation says this is no usable implant image."""

    def __call__(self, s: Sample) -> Sample:
        from client.qc import Rejected, check_segmentation

        reason = check_segmentation(s.seg) if s.seg is not None else "no-implant"
        if reason:
            raise Rejected(reason)
        return s


class CropROI:
    """Crop a square box around the implant with a margin (fraction of the box's long side)."""

    def __init__(self, margin: float) -> None:
        if not 0 <= margin <= 1:
            raise ValueError("margin must be in [0, 1]")
        self.margin = margin

    def __call__(self, s: Sample) -> Sample:
        if s.seg is None or s.seg.box is None:
            raise TransformError("CropROI needs a segmented implant")
        x0, y0, x1, y1 = s.seg.box
        side = max(x1 - x0, y1 - y0) * (1 + 2 * self.margin)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        half = side / 2
        box = (int(round(cx - half)), int(round(cy - half)), int(round(cx + half)), int(round(cy + half)))
        return replace(s, image=crop_padded(s.image, box))


def crop_padded(img: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Crop ``box`` (x0, y0, x1, y1) from ``img``, padding outside with the image's edge values."""
    x0, y0, x1, y1 = box
    h, w = img.shape
    pad = max(0, -x0, -y0, x1 - w, y1 - h)
    if pad:
        img = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x0, y0, x1, y1 = x0 + pad, y0 + pad, x1 + pad, y1 + pad
    return img[y0:y1, x0:x1]


class Resize:
    def __init__(self, size: int) -> None:
        if size < 8:
            raise ValueError("size must be >= 8")
        self.size = size

    def __call__(self, s: Sample) -> Sample:
        h, w = s.image.shape
        interp = cv2.INTER_AREA if max(h, w) > self.size else cv2.INTER_LINEAR
        return replace(s, image=cv2.resize(s.image, (self.size, self.size), interpolation=interp))


class CLAHE:
    """Contrast-limited adaptive histogram equalisation (clip 0 = plain min-max stretch)."""

    def __init__(self, clip: float, tiles: int = 4) -> None:
        if clip < 0:
            raise ValueError("clip must be >= 0")
        self.clip, self.tiles = clip, tiles

    def __call__(self, s: Sample) -> Sample:
        img = s.image
        lo, hi = float(img.min()), float(img.max())
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
        if self.clip > 0:
            u8 = (img * 255).astype(np.uint8)
            img = cv2.createCLAHE(clipLimit=self.clip, tileGridSize=(self.tiles, self.tiles)).apply(u8) / 255.0
        return replace(s, image=img.astype(np.float32))


class Invert:
    def __call__(self, s: Sample) -> Sample:
        return replace(s, image=(1.0 - s.image).astype(np.float32))


class RandAffine:
    """Random rotation (degrees), scale and left/right flip; seeded."""

    def __init__(self, *, rotate: float = 10.0, scale: float = 0.1, flip: float = 0.5, seed: int = 0) -> None:
        self.rotate, self.scale, self.flip = rotate, scale, flip
        self.rng = np.random.default_rng(seed)

    def __call__(self, s: Sample) -> Sample:
        img = s.image
        h, w = img.shape
        m = cv2.getRotationMatrix2D((w / 2, h / 2), self.rng.uniform(-self.rotate, self.rotate),
                                    1 + self.rng.uniform(-self.scale, self.scale))
        img = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REPLICATE)
        if self.rng.random() < self.flip:
            img = img[:, ::-1]
        return replace(s, image=np.ascontiguousarray(img, dtype=np.float32))


class RandGammaNoise:
    """Random gamma and additive Gaussian noise; seeded."""

    def __init__(self, *, gamma: float = 0.2, noise: float = 0.02, seed: int = 0) -> None:
        self.gamma, self.noise = gamma, noise
        self.rng = np.random.default_rng(seed)

    def __call__(self, s: Sample) -> Sample:
        g = float(np.exp(self.rng.uniform(-self.gamma, self.gamma)))
        img = np.clip(s.image, 0, 1) ** g + self.rng.normal(0, self.noise, s.image.shape)
        return replace(s, image=np.clip(img, 0, 1).astype(np.float32))


def core_transforms(params: PreprocessParams) -> list[Callable[[Sample], Sample]]:
    """The deterministic core shared by training and evaluation."""
    steps: list[Callable[[Sample], Sample]] = [SegmentImplant(), QCGate(), CropROI(params.roi_margin), Resize(params.image_size),
                                              CLAHE(params.clahe_clip)]
    if params.invert:
        steps.append(Invert())
    return steps


def build_eval_pipeline(params: PreprocessParams) -> Compose:
    return Compose(core_transforms(params))


def build_train_pipeline(params: PreprocessParams, seed: int) -> Compose:
    return Compose([*core_transforms(params), RandAffine(seed=seed), RandGammaNoise(seed=seed + 1)])


def augment_array(x: np.ndarray, seed: int) -> np.ndarray:
    """Apply the random part of the train pipeline to preprocessed (N, 1, S, S) images."""
    rand = Compose([RandAffine(seed=seed), RandGammaNoise(seed=seed + 1)])
    return np.stack([rand(Sample(img[0])).image[None] for img in x]).astype(np.float32)


def balance_by_augmentation(x: np.ndarray, y: np.ndarray, *, target_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Top up every present class to ``target_per_class`` with augmented copies."""
    rng = np.random.default_rng(seed)
    xs, ys = [x], [y]
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        need = target_per_class - len(idx)
        if need > 0:
            pick = rng.choice(idx, size=need, replace=True)
            xs.append(augment_array(x[pick], seed=int(rng.integers(2**31))))
            ys.append(np.full(need, c, dtype=y.dtype))
    return np.concatenate(xs), np.concatenate(ys)
