"""Quality gate: every file is accepted or rejected with exactly one reason.

A bad file never stops a site's pipeline: it is counted under its reason in a
:class:`QCReport`, which also counts the kinds of patient data found (never values).
Unknown labels are not a QC reason: they are a configuration error (``client.data.layout``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from common.errors import InvalidInputError
from common.preprocess_params import PreprocessParams

if TYPE_CHECKING:
    from client.data.segmentation import Segmentation

TOO_SMALL = "too-small"  # shorter stored side < params.min_side_px
TOO_LARGE = "too-large"  # longer stored side > params.max_side_px (rejected before decoding)
NO_IMPLANT = "no-implant"  # no dense, well-separated metal region
FOREIGN_OBJECT = "foreign-object"  # more than one implant-like metal component
BLANK = "blank-or-saturated"  # (almost) no signal, or mostly saturated
UNREADABLE = "unreadable"  # any ingest error: corrupt, truncated, no pixel data, unknown format
MULTIFRAME = "multiframe"  # multi-frame object while params.multiframe == "reject"
REASONS = (TOO_SMALL, TOO_LARGE, NO_IMPLANT, FOREIGN_OBJECT, BLANK, UNREADABLE, MULTIFRAME)

QC_SAMPLE_PIXELS = 1 << 18  # blank / saturation statistics use about this many pixels
BLANK_STD = 0.01  # below this standard deviation an image carries no usable signal
SATURATED_FRACTION = 0.9  # above this fraction of pixels at the top (or bottom) = saturated
MIN_CONTRAST = 0.12  # implant mean minus image median, on the [0, 1] scale
MIN_STEP = 0.15  # implant mean minus the mean of a ring around it: metal ends in a sharp step


class Rejected(InvalidInputError):
    """The QC gate rejected an image; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown QC reason {reason!r}")
        super().__init__(reason)
        self.reason = reason


def check_pixels(pixels: np.ndarray, params: PreprocessParams, stored_shape: Iterable[int] | None = None) -> str | None:
    """Reasons decidable from the decoded image alone (before segmentation).

    Parameters
    ----------
    pixels
        float image in [0, 1], high = dense (an array or a
        :class:`~client.data.stored_image.StoredImage`: only a subsample is read).
    params
        Size limits.
    stored_shape
        (rows, columns) as stored in the file; sizes are judged on it (acquisition
        resolution), not on a resampled image. Defaults to ``pixels.shape``.

    Returns
    -------
    str or None
        A reason from :data:`REASONS`, or None if the image passes.
    """
    h, w = (int(n) for n in (stored_shape if stored_shape is not None else pixels.shape))
    if min(h, w) < params.min_side_px:
        return TOO_SMALL
    if max(h, w) > params.max_side_px:
        return TOO_LARGE
    step = max(1, int((pixels.size / QC_SAMPLE_PIXELS) ** 0.5))  # statistics on a regular subsample
    sample = pixels[::step, ::step]
    if float(sample.std()) < BLANK_STD:
        return BLANK
    if float((sample >= 0.995).mean()) > SATURATED_FRACTION or float((sample <= 0.005).mean()) > SATURATED_FRACTION:
        return BLANK
    return None


def check_segmentation(seg: Segmentation | None) -> str | None:
    """``no-implant`` / ``foreign-object`` / None from a :class:`client.data.segmentation.Segmentation`."""
    if seg is None or seg.box is None or seg.contrast < MIN_CONTRAST or seg.step < MIN_STEP:
        return NO_IMPLANT
    if seg.others > 0:
        return FOREIGN_OBJECT
    return None


@dataclass
class QCReport:
    """Counts only: what a site may show its operator (and nothing per image).

    Attributes
    ----------
    accepted
        Images that passed QC.
    rejected
        QC reason -> number of files.
    classes
        Catalog id -> accepted images.
    phi_findings
        Kind of patient data (e.g. ``"patient-name-present"``, ``"burned-in-annotation"``)
        -> number of files where it was present. Never values.
    """

    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    classes: dict[str, int] = field(default_factory=dict)
    phi_findings: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def accept(self, class_id: str) -> None:
        self.accepted += 1
        self.classes[class_id] = self.classes.get(class_id, 0) + 1

    def note_phi(self, kinds: Iterable[str]) -> None:
        for kind in set(kinds):
            self.phi_findings[kind] = self.phi_findings.get(kind, 0) + 1

    @property
    def total(self) -> int:
        return self.accepted + sum(self.rejected.values())

    def to_dict(self) -> dict[str, Any]:
        """``{accepted, rejected, classes, phi_findings}`` with sorted keys (JSON-ready)."""
        return {"accepted": self.accepted, "rejected": dict(sorted(self.rejected.items())),
                "classes": dict(sorted(self.classes.items())), "phi_findings": dict(sorted(self.phi_findings.items()))}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QCReport:
        return cls(int(d["accepted"]), {str(k): int(v) for k, v in d["rejected"].items()},
                   {str(k): int(v) for k, v in d["classes"].items()},
                   {str(k): int(v) for k, v in d.get("phi_findings", {}).items()})

    def merge(self, other: QCReport) -> QCReport:
        """Sum of two reports (e.g. several folders of one site)."""
        return QCReport(self.accepted + other.accepted, dict(Counter(self.rejected) + Counter(other.rejected)),
                        dict(Counter(self.classes) + Counter(other.classes)),
                        dict(Counter(self.phi_findings) + Counter(other.phi_findings)))
