"""Lossy compression of a site's model update (``new - global``) for the trip to the server.

A site replies with its trained weights. With compression on, it sends the *update*
``new - ref`` (``ref`` = the global weights it received) at lower precision, and the
server adds it back to the same ``ref`` before validating and aggregating, so everything
after decompression sees ordinary weights. Run-config key ``update-compression``:

``none``
    the weights themselves, float32 (no change to the reply).
``fp16``
    the update cast to float16: half the bytes, relative error at most 2**-11 per element.
``int8``
    per-tensor affine 8-bit quantisation of the update: ``q = round((d - lo) / scale)``
    in 0..255 with ``scale = (max - min) / 255``; a quarter of the bytes, absolute error
    at most ``scale / 2`` per element. Each tensor's ``lo`` and ``scale`` travel beside it
    as float64 scalars under ``<key>#lo`` / ``<key>#scale``.

Non-floating arrays (integer buffers) always travel unchanged. Compression happens
after DP-SGD, on the released weights: it is post-processing and changes no privacy
guarantee. A train reply names its mode in its ``site`` ConfigRecord under
:data:`REPLY_KEY` (no key: ``none``); the server rebuilds the weights before it
validates them (``server.validation``). Everything here is plain numpy: arrays by name in,
arrays by name out; the Flower records they travel in are the adapters' business
(``client.records``, ``server.records``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

Arrays = Mapping[str, np.ndarray]

logger = logging.getLogger(__name__)

MODES = ("none", "fp16", "int8")
LO, SCALE = "#lo", "#scale"  # suffixes of an int8 tensor's offset and step
LEVELS = 255  # int8 steps between the update's min and max (uint8 codes 0..255)
REPLY_KEY = "compression"  # key of the mode in a train reply's ``site`` ConfigRecord


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown update compression {mode!r}; choose one of {', '.join(MODES)}")


def _is_float(arr: np.ndarray) -> bool:
    return bool(np.issubdtype(arr.dtype, np.floating))


def quantize_int8(delta: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(uint8 codes, lo, scale) of a float array; ``lo + codes * scale`` reconstructs it."""
    d = np.asarray(delta, dtype=np.float64)
    if d.size == 0:
        return np.zeros(d.shape, np.uint8), 0.0, 0.0
    lo, hi = float(d.min()), float(d.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("the update holds non-finite values")
    scale = (hi - lo) / LEVELS
    if scale == 0.0:
        return np.zeros(d.shape, np.uint8), lo, 0.0
    codes = np.clip(np.rint((d - lo) / scale), 0, LEVELS).astype(np.uint8)
    return codes, lo, scale


def dequantize_int8(codes: np.ndarray, lo: float, scale: float) -> np.ndarray:
    """float64 values ``lo + codes * scale``."""
    return lo + codes.astype(np.float64) * scale


def compress_update(new: Arrays, ref: Arrays, mode: str) -> Arrays:
    """What a site sends: ``new`` itself (``none``) or ``new - ref`` at lower precision."""
    _check_mode(mode)
    if mode == "none":
        return new
    if set(new.keys()) != set(ref.keys()):
        raise ValueError("the trained weights and the received weights have different arrays")
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for key in new.keys():
        arr, base = np.asarray(new[key]), np.asarray(ref[key])
        if not _is_float(arr):
            out[key] = arr
            continue
        delta = arr.astype(np.float64) - base.astype(np.float64)
        if mode == "fp16":
            with np.errstate(over="ignore"):
                half = delta.astype(np.float16)
            if not np.isfinite(half).all():
                raise ValueError("the update is not finite or beyond the float16 range")
            out[key] = half
        else:
            codes, lo, scale = quantize_int8(delta)
            out[key] = codes
            out[key + LO] = np.array(lo, dtype=np.float64)
            out[key + SCALE] = np.array(scale, dtype=np.float64)
    return out


def decompress_update(record: Arrays, ref: Arrays, mode: str) -> Arrays:
    """The site's weights rebuilt from what it sent (``record``) and the global weights ``ref``.

    Raises
    ------
    ValueError
        If the record does not have the layout ``mode`` produces (wrong keys or dtypes);
        the message names no value, only what is wrong.
    """
    _check_mode(mode)
    if mode == "none":
        return record
    extra = {k for k in record.keys() if k.endswith((LO, SCALE))} if mode == "int8" else set()
    if set(record.keys()) - extra != set(ref.keys()):
        raise ValueError(f"the {mode} update does not match the model's arrays")
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for key, base in ref.items():
        sent = np.asarray(record[key])
        coded = key + LO in record or key + SCALE in record
        if not _is_float(sent) and not coded:  # an integer buffer, sent as it is
            out[key] = sent
            continue
        if sent.shape != base.shape:
            raise ValueError(f"array {key} has shape {sent.shape}, expected {base.shape}")
        if mode == "fp16":
            if sent.dtype != np.float16:
                raise ValueError(f"array {key} is not float16")
            delta = sent.astype(np.float64)
        else:
            if sent.dtype != np.uint8 or key + LO not in record or key + SCALE not in record:
                raise ValueError(f"array {key} is not an 8-bit code with its offset and scale")
            lo, scale = np.asarray(record[key + LO]), np.asarray(record[key + SCALE])
            if lo.size != 1 or scale.size != 1 or not np.isfinite(lo).all() or not np.isfinite(scale).all():
                raise ValueError(f"array {key} has no finite scalar offset and scale")
            delta = dequantize_int8(sent, float(lo.item()), float(scale.item()))
        out[key] = (base.astype(np.float64) + delta).astype(base.dtype if _is_float(base) else np.float32)
    return out
