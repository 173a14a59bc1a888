"""A model to ONNX, kept only if it computes what PyTorch computes.

``export_onnx`` uses ``torch.onnx.export`` at opset ``ONNX_OPSET`` with a dynamic batch
axis: the TorchScript exporter first (about ten times faster on these networks), then the
``torch.export``-based one (the one that stays when the TorchScript exporter is removed
from PyTorch), then that one with a fixed batch of 1 (the fusion network: its
data-dependent crop makes the exporter specialise the batch size). Each file is run on
other random images than the traced ones, with onnxruntime (or ``onnx.reference`` when
onnxruntime is not installed), and kept only if every output is within
``ONNX_TOLERANCE`` of PyTorch's. ONNX is optional: without ``onnx``/``onnxscript``
installed the release is written without ``model.onnx`` and the card says so.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
ONNX_OPSET = 20  # 20 is the first opset with GridSample/AffineGrid as the fusion network needs
ONNX_TOLERANCE = 1e-4  # max |onnx - torch| on the parity batch


# (exporter, dynamic batch axis) in the order tried; the last is the bedside fallback for
# graphs whose batch size the exporter specialises (the fusion network's crop boxes).
ATTEMPTS = (("torchscript", True), ("dynamo", True), ("dynamo", False))


def export_onnx(model: torch.nn.Module, path: Path, *, image_size: int, seed: int = 0) -> dict[str, Any]:
    """Export ``model`` (eval mode) to ``path``; returns what model.json records about it.

    The returned dict has ``exported`` (bool) and either ``opset``, ``exporter``, ``batch``
    (``"dynamic"`` or 1), ``max_abs_diff`` and ``checked_with``, or ``reason`` when no file
    was kept.
    """
    try:
        import onnx  # noqa: F401
    except ImportError:
        return {"exported": False, "reason": "onnx is not installed"}
    model = model.eval()
    gen = torch.Generator().manual_seed(seed)
    traced = torch.rand(2, 1, image_size, image_size, generator=gen)
    # Checked on other images (and another batch size) than the traced ones: values the
    # exporter froze into the graph (a shape, a data-dependent crop box) would show.
    check = torch.rand(3, 1, image_size, image_size, generator=gen)
    errors = []
    for exporter, dynamic in ATTEMPTS:
        x, c = (traced, check) if dynamic else (traced[:1], check[:1])
        try:
            _export(model, x, path, dynamo=exporter == "dynamo", dynamic=dynamic)
            got, checked_with = run_onnx(path, c.numpy())
        except Exception as e:  # noqa: BLE001 - any exporter failure falls through to the next attempt
            errors.append(f"{exporter}: {type(e).__name__}")
            logger.debug("ONNX export with the %s exporter failed", exporter, exc_info=True)
            continue
        with torch.no_grad():
            diff = float(np.abs(got - model(c).numpy()).max())
        if diff <= ONNX_TOLERANCE:
            return {"exported": True, "file": ONNX_FILE, "opset": ONNX_OPSET, "exporter": exporter,
                    "batch": "dynamic" if dynamic else 1, "max_abs_diff": diff, "checked_with": checked_with,
                    "input": "image", "output": "logits"}
        errors.append(f"{exporter}: outputs differ by {diff:.2e}")
    path.unlink(missing_ok=True)
    logger.warning("model.onnx not written: %s", "; ".join(errors))
    return {"exported": False, "reason": "; ".join(errors)}


def _export(model: torch.nn.Module, x: torch.Tensor, path: Path, *, dynamo: bool, dynamic: bool) -> None:
    kwargs: dict[str, Any] = {"input_names": ["image"], "output_names": ["logits"], "opset_version": ONNX_OPSET}
    if dynamo:
        kwargs.update(dynamo=True, verbose=False)
        if dynamic:
            kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
    else:
        kwargs["dynamo"] = False
        if dynamic:
            kwargs["dynamic_axes"] = {"image": {0: "batch"}, "logits": {0: "batch"}}
    sink = io.StringIO()
    # The exporters print progress and graph dumps (to stdout and stderr), log optional-package
    # notices and warn about traced ops; none of it is actionable here (the parity check decides),
    # so it goes to the debug log.
    quiet = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript", "onnx_ir")]
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), _native_output(sink), contextlib.redirect_stdout(sink), \
                contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            result = torch.onnx.export(model, (x,), None if dynamo else str(path), **kwargs)
            if dynamo:
                result.save(str(path))
    finally:
        for log, level in zip(quiet, levels, strict=True):
            log.setLevel(level)
        if sink.getvalue():
            logger.debug("ONNX exporter output:\n%s", sink.getvalue())


@contextlib.contextmanager
def _native_output(sink: io.StringIO):  # noqa: ANN202
    """Capture what native code writes to file descriptors 1 and 2 (TorchScript's graph dumps) into ``sink``."""
    import os
    import sys
    import tempfile

    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            tmp.seek(0)
            sink.write(tmp.read().decode("utf-8", errors="replace"))


def run_onnx(path: Path, x: np.ndarray) -> tuple[np.ndarray, str]:
    """Outputs of the ONNX file on ``x``: onnxruntime when installed, else onnx's reference evaluator."""
    try:
        import onnxruntime as ort
    except ImportError:
        from onnx.reference import ReferenceEvaluator

        return np.asarray(ReferenceEvaluator(str(path)).run(None, {"image": x})[0]), "onnx.reference"
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"image": x})[0]), "onnxruntime"


def onnx_summary(info: Mapping[str, Any]) -> str:
    """One line for the model card."""
    o = info.get("onnx") or {}
    if o.get("exported"):
        batch = "N" if o.get("batch", "dynamic") == "dynamic" else str(o["batch"])
        return (f"`{ONNX_FILE}` (opset {o['opset']}, input `image` {batch} x 1 x S x S, output `logits`); "
                f"max |ONNX - PyTorch| = {o['max_abs_diff']:.1e} on a check batch ({o['checked_with']})")
    return f"no ONNX export ({o.get('reason', 'not requested')})"
