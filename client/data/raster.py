"""Facts about a raster file (PNG, JPEG, TIFF, BMP) read without decoding it, and how to scale its values.

A PNG or TIFF written by a PACS often stores a 10-, 12- or 14-bit detector's values in 16
bits: scaled by 65535 such an image is 1/16 as bright as it is and fails the quality gate.
:func:`significant_bits` reads the PNG ``sBIT`` chunk when there is one, else takes the
smallest usual depth that holds the image's maximum. A raster that is still dark or of low
contrast is shown through a window at its own percentiles (:func:`percentile_window`), as
a DICOM VOI window would show it, before the gate may call it blank.
"""

from __future__ import annotations

import numpy as np

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
RASTER_SOURCES = ("png", "raster")  # ``fields["source"]`` of a PNG, TIFF, JPEG or BMP
BIT_DEPTHS = (10, 12, 14, 16)  # what a 16-bit raster's values are read as, when no sBIT chunk says


def png_sbit(data: bytes) -> int | None:
    """Significant bits from a PNG's ``sBIT`` chunk (the largest over its channels), or None."""
    i = 8
    while i + 8 <= len(data):
        length = int.from_bytes(data[i:i + 4], "big")
        kind = data[i + 4:i + 8]
        if kind == b"sBIT":
            values = data[i + 8:i + 8 + length]
            return max(values) if values else None
        if kind in (b"IDAT", b"IEND"):  # sBIT comes before the image data
            return None
        i += 12 + length
    return None


def significant_bits(arr: np.ndarray, declared: int | None) -> int:
    """Bits a 16-bit raster's values use: the PNG's ``sBIT`` when it fits, else the smallest of
    :data:`BIT_DEPTHS` that holds the raster's maximum."""
    top = int(arr.max()) if arr.size else 0
    if declared is not None and 1 <= declared <= 16 and top < 2**declared:
        return int(declared)
    return next(b for b in BIT_DEPTHS if top < 2**b)


DARK = 0.35  # a raster whose 99.5th percentile is below this uses a fraction of its range (metal is near the top)
METAL_CONTRAST = 2.0  # (p99.9 - median) / (median - p0.5) above this: something far brighter than bone is there


def percentile_window(pixels: np.ndarray, lo_q: float = 0.5, hi_q: float = 99.5) -> np.ndarray | None:
    """The image windowed to its own ``lo_q``-``hi_q`` percentiles (a VOI window), or None.

    Only for a dark raster that still shows something far brighter than its median (an
    implant exported at a fraction of the range): a normally exposed image, or a dark one
    with nothing brighter than bone, is left to the quality gate as it is.
    """
    step = max(1, int((pixels.size / 250_000) ** 0.5))
    lo, mid, hi, top = np.percentile(pixels[::step, ::step], (lo_q, 50.0, hi_q, 99.9))
    if not hi - lo > 1e-3 or hi >= DARK:
        return None
    if (top - mid) <= METAL_CONTRAST * max(mid - lo, 1e-6):
        return None
    return np.clip((pixels - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0).astype(np.float32)
def raster_size(head: bytes) -> tuple[int, int] | None:
    """(rows, columns) from a PNG, JPEG or BMP header without decoding; None if unknown."""
    if head.startswith(_PNG_SIG) and len(head) >= 24 and head[12:16] == b"IHDR":
        return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")
    if head.startswith(b"BM") and len(head) >= 26:
        return abs(int.from_bytes(head[22:26], "little", signed=True)), abs(int.from_bytes(head[18:22], "little", signed=True))
    if head.startswith(b"\xff\xd8"):
        i = 2
        while i + 9 < len(head):
            if head[i] != 0xFF:
                return None
            marker = head[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            length = int.from_bytes(head[i + 2:i + 4], "big")
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                return int.from_bytes(head[i + 5:i + 7], "big"), int.from_bytes(head[i + 7:i + 9], "big")
            i += 2 + length
    return None
