"""Pick the compute device: CUDA when present, else CPU."""

from __future__ import annotations

import torch

from common.errors import ConfigError


def pick_device(prefer: str = "auto") -> torch.device:
    """Return ``cuda`` if available (or requested), else ``cpu``.

    ``prefer`` is ``auto`` (CUDA when available), ``cpu`` or ``cuda``; asking for CUDA on a
    machine without it is a configuration error rather than a silent CPU fallback.
    """
    if prefer == "cpu":
        return torch.device("cpu")
    if prefer == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' requested but CUDA is not available")
        return torch.device("cuda")
    if prefer != "auto":
        raise ConfigError(f"device must be auto, cpu or cuda, got {prefer!r}")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
