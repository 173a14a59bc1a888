"""Preprocessing as small composable callables (MONAI style).

Each transform checks its parameters in ``__init__`` and works in ``__call__`` on a
:class:`Sample` (the image plus what earlier steps learned). Random transforms start with
``Rand`` and take a seed or a ``numpy.random.Generator``. :class:`Compose` names the
transform that failed. Train and eval pipelines share one deterministic core
(:func:`core_transforms`) so they cannot drift apart; training only appends augmentation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np

from client.data.segmentation import Segmentation, crop_padded, segment_implant
from client.data.stored_image import LazyImage, StoredImage, StoredRegion
from common.errors import InvalidInputError
from common.preprocess_params import PreprocessParams

Transform = Callable[["Sample"], "Sample"]


@dataclass(frozen=True)
class Sample:
    """An image travelling through a pipeline.

    Attributes
    ----------
    image
        float32 HxW in [0, 1], high = dense; before the ROI crop possibly a
        :class:`~client.data.stored_image.StoredImage` (pixels looked up where needed),
        which :class:`Compose` turns into an array for any transform that does not take one.
    seg
        The implant segmentation, in the coordinates of the ingested image (set by
        :class:`SegmentImplant`, never moved by later steps).
    roi_mask
        The implant mask in the current image's coordinates once :class:`CropROI` ran.
    """

    image: np.ndarray | LazyImage
    seg: Segmentation | None = None
    roi_mask: np.ndarray | None = None


class TransformError(InvalidInputError):
    """A transform failed; the message names the transform, never the file."""


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


class Compose:
    """Apply transforms in order; a failure is re-raised naming the failing transform.

    QC rejections (:class:`client.data.qc.Rejected`) and other
    :class:`~common.errors.InvalidInputError` pass through unchanged.
    """

    def __init__(self, transforms: Sequence[Transform]) -> None:
        if not all(callable(t) for t in transforms):
            raise TypeError("every transform must be callable")
        self.transforms = list(transforms)

    @property
    def names(self) -> list[str]:
        return [type(t).__name__ for t in self.transforms]

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            if isinstance(sample.image, LazyImage) and not getattr(t, "takes_stored", False):
                sample = _materialized(sample)
            try:
                sample = t(sample)
            except InvalidInputError:
                raise
            except Exception as e:  # noqa: BLE001 - reported by transform name, never by file
                raise TransformError(f"{type(t).__name__} failed ({type(e).__name__})") from None
        return sample


def _materialized(s: Sample) -> Sample:
    """The sample with its pixels computed (and the ROI mask a cropped region carries)."""
    assert isinstance(s.image, LazyImage)
    if isinstance(s.image, StoredRegion) and s.roi_mask is None and s.seg is not None \
            and s.seg.shape == s.image.image.shape:
        return replace(s, image=s.image.full, roi_mask=s.seg.crop_mask(s.image.box))
    return replace(s, image=s.image.full)


# ------------------------------------------------------------------ deterministic core
class SegmentImplant:
    """Find the implant (see :mod:`client.data.segmentation`)."""

    takes_stored = True  # segments a reduced copy

    def __call__(self, s: Sample) -> Sample:
        return replace(s, seg=segment_implant(s.image))


class QCGate:
    """Stop with :class:`client.data.qc.Rejected` when the segmentation finds no usable implant."""

    takes_stored = True  # reads only the segmentation

    def __call__(self, s: Sample) -> Sample:
        from client.data.qc import Rejected, check_segmentation

        reason = check_segmentation(s.seg)
        if reason:
            raise Rejected(reason)
        return s


class CropROI:
    """Crop a square box around the implant; ``margin`` is a fraction of the box's long side.

    Outside the image the crop is padded with 0 (no signal). The implant mask is cropped
    along (``Sample.roi_mask``). From a :class:`StoredImage` only the box's pixels are looked up.
    """

    takes_stored = True

    def __init__(self, margin: float) -> None:
        if not 0 <= margin <= 1:
            raise ValueError("margin must be in [0, 1]")
        self.margin = margin

    def __call__(self, s: Sample) -> Sample:
        if s.seg is None or s.seg.box is None:
            raise TransformError("CropROI needs a segmented implant")
        box = roi_box(s.seg.box, self.margin)
        if isinstance(s.image, StoredImage):  # looked up later, where needed; its mask likewise
            return replace(s, image=s.image.region(box), roi_mask=None)
        mask = s.seg.crop_mask(box) if s.seg.shape == s.image.shape else None
        return replace(s, image=crop_padded(s.image, box), roi_mask=mask)


def roi_box(box: tuple[int, int, int, int], margin: float) -> tuple[int, int, int, int]:
    """The square crop box around an implant box (x0, y0, x1, y1), with ``margin``."""
    x0, y0, x1, y1 = box
    side = max(1, round(max(x1 - x0, y1 - y0) * (1 + 2 * margin)))
    left, top = round((x0 + x1 - side) / 2), round((y0 + y1 - side) / 2)
    return left, top, left + side, top + side


class Resize:
    """Pad to a square (with 0, centred) if needed, then resize to ``size`` x ``size``."""

    def __init__(self, size: int) -> None:
        if size < 8:
            raise ValueError("size must be >= 8")
        self.size = size

    takes_stored = True  # a square region of stored values is averaged down before it is looked up

    def __call__(self, s: Sample) -> Sample:
        region = s.image
        if isinstance(region, StoredRegion) and region.shape[0] == region.shape[1] > self.size \
                and s.roi_mask is None and s.seg is not None and s.seg.shape == region.image.shape:
            return self._shrink_stored(s, region, s.seg)
        if isinstance(region, LazyImage):
            s = _materialized(s)
        mask = _square(s.roi_mask) if s.roi_mask is not None else None
        image = _square(s.image)
        if image.shape[0] > self.size:
            image = shrink(image, self.size)
            mask = shrink(mask, self.size, nearest=True) if mask is not None else None
        else:
            image = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_LINEAR)
            mask = cv2.resize(mask, (self.size, self.size), interpolation=cv2.INTER_NEAREST) if mask is not None else None
        return replace(s, image=np.clip(image, 0.0, 1.0).astype(np.float32), roi_mask=mask)

    def _shrink_stored(self, s: Sample, region: StoredRegion, seg: Segmentation) -> Sample:
        """What the array path gives for a square region (within float32 rounding), reading only what it needs.

        The mask is sampled where OpenCV's nearest-neighbour shrink would sample the
        full-resolution crop (every k-th pixel from the centred offset), from the
        segmentation's working mask.
        """
        off, keep = shrink_window(region.shape[0], self.size)
        image = region.area_shrink((off, off, off + keep, off + keep), self.size)
        grid = off + (np.arange(self.size) * keep) // self.size  # cv2 INTER_NEAREST: floor(i * keep / size)
        x0, y0 = region.box[0], region.box[1]
        mask = seg.mask_at(y0 + grid, x0 + grid)
        return replace(s, image=np.clip(image, 0.0, 1.0).astype(np.float32), roi_mask=mask)


def shrink(img: np.ndarray, size: int, *, nearest: bool = False) -> np.ndarray:
    """Area-average (or, for masks, nearest-sample) a square image down to ``size`` x ``size``.

    OpenCV averages fast only by an integer factor ``k``, so the image is first centre-cropped
    to ``k * size`` (dropping fewer than ``k`` pixels, under 1/size of the side): ~10x faster
    on a 2000-pixel ROI than one non-integer area resize.
    """
    off, keep = shrink_window(img.shape[0], size)
    img = img[off:off + keep, off:off + keep]
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)


def shrink_window(side: int, size: int) -> tuple[int, int]:
    """(offset, side) of the centred square :func:`shrink` averages: ``k * size`` for an integer ``k >= 2``, else all."""
    k = side // size
    return ((side - k * size) // 2, k * size) if k >= 2 else (0, side)


def _square(img: np.ndarray) -> np.ndarray:
    h, w = img.shape
    if h == w:
        return img
    side = max(h, w)
    out = np.zeros((side, side), img.dtype)
    out[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = img
    return out


class MaskBackground:
    """Remove the background: keep the implant (mask dilated by ``grow`` of its size), fade the rest to 0.

    What the founding study did by hand: binarise, drop objects outside the implant
    region. The implant's inner texture (porous coating, fenestrations) is kept. Runs on
    the ROI (cheap) when :class:`CropROI` ran, else on the whole image.
    """

    def __init__(self, grow: float = 0.04) -> None:
        if not 0 <= grow <= 0.5:
            raise ValueError("grow must be in [0, 0.5]")
        self.grow = grow

    def __call__(self, s: Sample) -> Sample:
        mask = s.roi_mask if s.roi_mask is not None else (s.seg.mask if s.seg is not None else None)
        if mask is None or mask.shape != s.image.shape or not mask.any():
            raise TransformError("MaskBackground needs a segmented implant")
        ys, xs = np.nonzero(mask)
        r = max(1, int(self.grow * max(int(xs.max() - xs.min()) + 1, int(ys.max() - ys.min()) + 1)))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        soft = cv2.GaussianBlur(cv2.dilate(mask, kernel).astype(np.float32) / 255.0, (0, 0), max(1.0, r / 2))
        return replace(s, image=(s.image * soft).astype(np.float32))


class CLAHE:
    """Min-max stretch, then contrast-limited adaptive histogram equalisation (clip 0 = stretch only)."""

    def __init__(self, clip: float, tiles: int = 4) -> None:
        if clip < 0:
            raise ValueError("clip must be >= 0")
        if tiles < 1:
            raise ValueError("tiles must be >= 1")
        self.clip, self.tiles = clip, tiles

    def __call__(self, s: Sample) -> Sample:
        img = s.image
        lo, hi = float(img.min()), float(img.max())
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
        if self.clip > 0:
            u8 = np.round(img * 255).astype(np.uint8)
            img = cv2.createCLAHE(clipLimit=self.clip, tileGridSize=(self.tiles, self.tiles)).apply(u8) / 255.0
        return replace(s, image=img.astype(np.float32))


class Invert:
    """Implant dark on bright (1 - x)."""

    def __call__(self, s: Sample) -> Sample:
        return replace(s, image=(1.0 - s.image).astype(np.float32))


def core_transforms(params: PreprocessParams) -> list[Transform]:
    """The deterministic core shared by training and evaluation."""
    steps: list[Transform] = [SegmentImplant(), QCGate(), CropROI(params.roi_margin), Resize(params.image_size)]
    if params.mask_background:
        steps.append(MaskBackground())
    steps.append(CLAHE(params.clahe_clip))
    if params.invert:
        steps.append(Invert())
    return steps


# ------------------------------------------------------------------ augmentation
class RandAffine:
    """Random rotation (± ``rotate`` degrees) and scale (1 ± ``scale``) about the centre."""

    def __init__(self, *, rotate: float = 10.0, scale: float = 0.1, seed: int | np.random.Generator = 0) -> None:
        if not 0 <= rotate <= 180 or not 0 <= scale < 1:
            raise ValueError("rotate must be in [0, 180] degrees and scale in [0, 1)")
        self.rotate, self.scale, self.rng = rotate, scale, _rng(seed)

    def __call__(self, s: Sample) -> Sample:
        h, w = s.image.shape
        m = cv2.getRotationMatrix2D((w / 2, h / 2), float(self.rng.uniform(-self.rotate, self.rotate)),
                                    float(1 + self.rng.uniform(-self.scale, self.scale)))
        img = cv2.warpAffine(s.image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        return replace(s, image=np.clip(img, 0.0, 1.0).astype(np.float32))


class RandFlip:
    """Left/right flip with probability ``prob`` (a left hip seen as a right one)."""

    def __init__(self, *, prob: float = 0.5, seed: int | np.random.Generator = 0) -> None:
        if not 0 <= prob <= 1:
            raise ValueError("prob must be in [0, 1]")
        self.prob, self.rng = prob, _rng(seed)

    def __call__(self, s: Sample) -> Sample:
        if self.rng.random() < self.prob:
            return replace(s, image=np.ascontiguousarray(s.image[:, ::-1]))
        return s


class RandGamma:
    """Random gamma ``exp(U(-log_range, log_range))`` (exposure differences)."""

    def __init__(self, *, log_range: float = 0.2, seed: int | np.random.Generator = 0) -> None:
        if not 0 <= log_range <= 2:
            raise ValueError("log_range must be in [0, 2]")
        self.log_range, self.rng = log_range, _rng(seed)

    def __call__(self, s: Sample) -> Sample:
        g = float(np.exp(self.rng.uniform(-self.log_range, self.log_range)))
        return replace(s, image=(np.clip(s.image, 0.0, 1.0) ** g).astype(np.float32))


class RandGaussianNoise:
    """Additive Gaussian noise with standard deviation ``std`` (clipped to [0, 1])."""

    def __init__(self, *, std: float = 0.02, seed: int | np.random.Generator = 0) -> None:
        if not 0 <= std <= 1:
            raise ValueError("std must be in [0, 1]")
        self.std, self.rng = std, _rng(seed)

    def __call__(self, s: Sample) -> Sample:
        noisy = s.image + self.rng.normal(0.0, self.std, s.image.shape)
        return replace(s, image=np.clip(noisy, 0.0, 1.0).astype(np.float32))


def augmentations(seed: int | np.random.Generator) -> list[Transform]:
    """The random steps appended to the core for training (one generator for all)."""
    rng = _rng(seed)
    return [RandAffine(seed=rng), RandFlip(seed=rng), RandGamma(seed=rng), RandGaussianNoise(seed=rng)]


def build_eval_pipeline(params: PreprocessParams) -> Compose:
    """Ingested image -> model input, deterministic."""
    return Compose(core_transforms(params))


def build_train_pipeline(params: PreprocessParams, seed: int | np.random.Generator) -> Compose:
    """The eval pipeline plus seeded augmentation."""
    return Compose([*core_transforms(params), *augmentations(seed)])


def augment_array(x: np.ndarray, seed: int | np.random.Generator) -> np.ndarray:
    """Apply the random steps of the train pipeline to preprocessed (N, 1, S, S) images."""
    rand = Compose(augmentations(seed))
    out = [rand(Sample(np.asarray(img[0], np.float32))).image[None] for img in x]
    return np.stack(out).astype(np.float32) if out else np.zeros_like(x, np.float32)


def balance_by_augmentation(x: np.ndarray, y: np.ndarray, target_per_class: int,
                            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Top up every present class to ``target_per_class`` images with augmented copies.

    Parameters
    ----------
    x
        float32 (N, 1, S, S) preprocessed images.
    y
        int (N,) labels.
    target_per_class
        Classes with fewer images get augmented copies of randomly drawn members;
        larger classes are left as they are (never dropped).
    seed
        Same seed, same output.

    Returns
    -------
    (x, y)
        The originals first, then the added copies.
    """
    if target_per_class < 0:
        raise ValueError("target_per_class must be >= 0")
    if len(x) != len(y):
        raise ValueError("x and y differ in length")
    rng = np.random.default_rng(seed)
    xs, ys = [np.asarray(x, np.float32)], [np.asarray(y)]
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        need = target_per_class - len(idx)
        if need > 0:
            pick = rng.choice(idx, size=need, replace=True)
            xs.append(augment_array(x[pick], rng))
            ys.append(np.full(need, c, dtype=np.asarray(y).dtype))
    return np.concatenate(xs), np.concatenate(ys)
