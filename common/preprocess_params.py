"""Preprocessing parameters: shared by the client pipeline and stored in every release.

Pure data (no image code) so the server can write and read them without touching images.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from common.errors import ConfigError


@dataclass(frozen=True)
class PreprocessParams:
    """How a raw radiograph becomes a model input. Changing any field invalidates caches."""

    image_size: int = 64  # side of the square model input, pixels
    target_mm_per_px: float = 0.0  # resample to this spacing before segmentation; 0 = keep
    roi_margin: float = 0.12  # margin around the segmented implant, fraction of its box side
    clahe_clip: float = 2.0  # CLAHE clip limit for contrast normalisation; 0 = off
    mask_background: bool = True  # suppress everything outside the (dilated) implant mask
    invert: bool = False  # invert after normalisation (implant dark on bright)
    min_side_px: int = 128  # QC: reject images whose shorter side is below this
    max_side_px: int = 10_000  # QC: reject images whose longer side is above this
    multiframe: str = "first"  # "first" frame of a multi-frame DICOM, or "reject"

    def __post_init__(self) -> None:
        if not 16 <= self.image_size <= 1024:
            raise ConfigError("image-size must be between 16 and 1024")
        if not 0.0 <= self.roi_margin <= 1.0:
            raise ConfigError("roi-margin must be between 0 and 1")
        if self.target_mm_per_px < 0:
            raise ConfigError("target-mm-per-px must be >= 0")
        if self.clahe_clip < 0:
            raise ConfigError("clahe-clip must be >= 0")
        if self.multiframe not in ("first", "reject"):
            raise ConfigError("multiframe must be 'first' or 'reject'")
        if not 1 <= self.min_side_px <= self.max_side_px:
            raise ConfigError("min-side-px must be >= 1 and <= max-side-px")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessParams:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown preprocessing parameter(s): {', '.join(unknown)}")
        return cls(**dict(data))

    def cache_key(self) -> str:
        """Stable text key: caches built with other parameters are not reused."""
        return ";".join(f"{k}={v}" for k, v in sorted(self.to_dict().items()))
