"""A decoded integer image and the value of each stored level: pixels computed where needed.

A 2048x2500 radiograph decodes in ~1.5 ms; turning every pixel into a float through its
modality / VOI LUT costs five times that, and the pipeline needs floats only on a reduced
copy (segmentation, quality gate) and on the implant's region of interest. A
:class:`StoredImage` keeps the stored integers (as LUT indices) and the float32 LUT, and
behaves as a read-only 2-D float32 array for basic slicing: ``img[y0:y1, x0:x1]`` or
``img[::4, ::4]`` gathers just those pixels, bit-identical to the same slice of
:meth:`full`. :meth:`reduced` averages the *stored* values by an integer factor and then
looks them up: equal to averaging the looked-up values wherever the LUT is linear over the
block (rescale and a window the block does not cross), within a grey level elsewhere.
"""

from __future__ import annotations

from functools import cached_property

import cv2
import numpy as np

AFFINE_TOLERANCE = 1e-6  # a LUT within this of a straight line over the stored range is treated as one


class LazyImage:
    """An image whose float32 pixels are computed on demand; :attr:`full` gives them all."""

    ndim = 2
    dtype = np.dtype(np.float32)

    @property
    def shape(self) -> tuple[int, int]:
        raise NotImplementedError

    @property
    def size(self) -> int:
        h, w = self.shape
        return h * w

    @cached_property
    def full(self) -> np.ndarray:
        raise NotImplementedError

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        return self.full if dtype is None else self.full.astype(dtype)


class StoredImage(LazyImage):
    """Stored values as LUT indices (uint8 / uint16, HxW) and the float32 value of each index.

    Attributes
    ----------
    index
        Integer image; pixel value = ``lut[index]``.
    lut
        float32 values in [0, 1], one per index up to ``index.max()``.
    affine
        ``(a, b)`` when ``lut[i] == a * i + b`` (within :data:`AFFINE_TOLERANCE`) over the
        stored range (a rescale, 8-bit or n-bit scaling, a window the image does not
        cross): averages may then be taken on the stored values. None otherwise.
    """

    def __init__(self, index: np.ndarray, lut: np.ndarray, *, index_range: tuple[int, int] | None = None) -> None:
        """``index_range``: the smallest and largest index, when the caller knows them already."""
        if index.ndim != 2 or index.dtype not in (np.uint8, np.uint16):
            raise ValueError("index must be a 2-D uint8 or uint16 array")
        if lut.ndim != 1 or lut.dtype != np.float32:
            raise ValueError("lut must be a 1-D float32 array")
        self.index, self.lut = index, lut
        lo, hi = index_range if index_range is not None else (int(index.min()), int(index.max()))
        if hi >= lut.size:
            raise ValueError("index beyond the end of the lut")
        self.affine = _affine(lut[lo:hi + 1].astype(np.float64), lo)

    @property
    def shape(self) -> tuple[int, int]:
        return self.index.shape  # type: ignore[return-value]

    def __getitem__(self, key: object) -> np.ndarray:
        """Basic slicing: the float32 pixels of that part (a fresh array)."""
        part = self.index[key]  # type: ignore[index]
        return self.lut[part]

    @cached_property
    def full(self) -> np.ndarray:
        """The whole image as float32 (computed once)."""
        return self.lut[self.index]

    def reduced(self, k: int) -> np.ndarray:
        """float32 (H // k, W // k): the area average of each k x k block (OpenCV ``INTER_AREA``).

        With an affine LUT the stored values are averaged and mapped once (equal to
        averaging the mapped values, within float32 rounding); otherwise the mapped values
        are averaged, exactly as for an array. Worked in strips: no full-size float copy.
        """
        if k < 1:
            raise ValueError("k must be >= 1")
        h, w = self.shape
        width = w // k * k
        if self.affine is None:
            return _area_by_strips(lambda y0, y1: self.lut[self.index[y0:y1, :width]], h // k * k, width, k)
        a, b = self.affine
        block = _area_by_strips(lambda y0, y1: self.index[y0:y1, :width].astype(np.float32), h // k * k, width, k)
        return np.clip(block * np.float32(a) + np.float32(b), 0.0, 1.0)

    def region(self, box: tuple[int, int, int, int]) -> StoredRegion:
        """The box (x0, y0, x1, y1) of this image, 0 outside it, computed on demand."""
        return StoredRegion(self, box)


class StoredRegion(LazyImage):
    """A box of a :class:`StoredImage` (0 where it leaves the image), not yet looked up."""

    def __init__(self, image: StoredImage, box: tuple[int, int, int, int]) -> None:
        self.image, self.box = image, box

    @property
    def shape(self) -> tuple[int, int]:
        x0, y0, x1, y1 = self.box
        return y1 - y0, x1 - x0

    @cached_property
    def full(self) -> np.ndarray:
        """The box's pixels as float32, 0 outside the image."""
        return _padded(self.image, self.box, lambda part: self.image.lut[part], 0.0)

    def area_shrink(self, box: tuple[int, int, int, int], size: int) -> np.ndarray:
        """float32 ``size`` x ``size``: ``cv2.resize(full[box], INTER_AREA)``, ``box`` relative to this region.

        With an affine LUT ``a * s + b`` the stored values are averaged, the outside
        filled with the value that maps to 0 (``-b / a``), and the result mapped: equal
        within float32 rounding, without looking up every pixel.
        """
        x0, y0, x1, y1 = box
        ox, oy = self.box[0], self.box[1]
        affine = self.image.affine if self.image.affine is not None and self.image.affine[0] != 0 else None
        if affine is None:  # look up, outside is 0
            convert, fill = (lambda part: self.image.lut[part]), 0.0
        else:  # stored values, outside is the value the LUT maps to 0
            convert, fill = (lambda part: part.astype(np.float32)), -affine[1] / affine[0]

        def rows(r0: int, r1: int) -> np.ndarray:
            return _padded(self.image, (ox + x0, oy + y0 + r0, ox + x1, oy + y0 + r1), convert, fill)

        side = y1 - y0
        if side == x1 - x0 and side % size == 0:  # an integer factor: block means, strip by strip
            small = _area_by_strips(rows, side, side, side // size)
        else:
            small = cv2.resize(rows(0, side), (size, size), interpolation=cv2.INTER_AREA)
        return small if affine is None else small * np.float32(affine[0]) + np.float32(affine[1])


STRIP_PIXELS = 1 << 18  # pixels converted at a time: stays in cache, no large allocation per image


def _area_by_strips(rows, height: int, width: int, k: int) -> np.ndarray:
    """``cv2.resize(INTER_AREA)`` of a (height, width) image by the integer factor ``k``, given as rows.

    ``rows(y0, y1)`` returns float32 rows ``y0:y1``. Each output pixel is the mean of its own
    k x k block, so working ``k`` rows at a time gives the whole-image result.
    """
    out_h, out_w = height // k, width // k
    out = np.empty((out_h, out_w), np.float32)
    step = max(1, STRIP_PIXELS // max(1, width * k))  # output rows per strip
    for r0 in range(0, out_h, step):
        r1 = min(out_h, r0 + step)
        out[r0:r1] = cv2.resize(rows(r0 * k, r1 * k), (out_w, r1 - r0), interpolation=cv2.INTER_AREA)
    return out


def _padded(image: StoredImage, box: tuple[int, int, int, int], convert, fill: float) -> np.ndarray:
    x0, y0, x1, y1 = box
    h, w = image.shape
    if x0 >= 0 and y0 >= 0 and x1 <= w and y1 <= h:
        return np.asarray(convert(image.index[y0:y1, x0:x1]), np.float32)
    out = np.full((y1 - y0, x1 - x0), fill, np.float32)
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = convert(image.index[sy0:sy1, sx0:sx1])
    return out


def _affine(values: np.ndarray, lo: int) -> tuple[float, float] | None:
    """(a, b) with ``values[i] == a * (lo + i) + b`` within :data:`AFFINE_TOLERANCE`, else None."""
    if values.size < 2:
        return None
    a = (values[-1] - values[0]) / (values.size - 1)
    b = values[0] - a * lo
    line = a * np.arange(lo, lo + values.size) + b
    return (float(a), float(b)) if float(np.max(np.abs(values - line))) <= AFFINE_TOLERANCE else None


def as_array(image: np.ndarray | LazyImage) -> np.ndarray:
    """The float32 pixels of either kind of image."""
    return image.full if isinstance(image, LazyImage) else image
