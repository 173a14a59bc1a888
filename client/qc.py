"""Quality gate: every file is accepted or rejected with one reason, never crashes the run."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from client.segmentation import MIN_CONTRAST, Segmentation
from common.errors import InvalidInputError
from common.preprocess_params import PreprocessParams

TOO_SMALL = "too-small"
TOO_LARGE = "too-large"
NO_IMPLANT = "no-implant"
FOREIGN_OBJECT = "foreign-object"
BLANK = "blank-or-saturated"
UNREADABLE = "unreadable"
MULTIFRAME = "multiframe"
REASONS = (TOO_SMALL, TOO_LARGE, NO_IMPLANT, FOREIGN_OBJECT, BLANK, UNREADABLE, MULTIFRAME)


class Rejected(InvalidInputError):
    """The QC gate rejected an image; ``reason`` is one of REASONS."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_pixels(img: np.ndarray, params: PreprocessParams) -> str | None:
    """Reasons decidable from the decoded pixels alone (before segmentation)."""
    h, w = img.shape
    if min(h, w) < params.min_side_px:
        return TOO_SMALL
    if max(h, w) > params.max_side_px:
        return TOO_LARGE
    if float(img.std()) < 0.01 or float((img >= 0.995).mean()) > 0.9 or float((img <= 0.005).mean()) > 0.98:
        return BLANK
    return None


def check_segmentation(seg: Segmentation) -> str | None:
    if seg.box is None or seg.contrast < MIN_CONTRAST:
        return NO_IMPLANT
    if seg.others > 0:
        return FOREIGN_OBJECT
    return None


@dataclass
class QCReport:
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> count
    classes: dict[str, int] = field(default_factory=dict)  # catalog id -> accepted count
    phi_findings: dict[str, int] = field(default_factory=dict)  # kind -> count of files (never values)

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def accept(self, class_id: str) -> None:
        self.accepted += 1
        self.classes[class_id] = self.classes.get(class_id, 0) + 1

    def note_phi(self, phi: dict[str, bool]) -> None:
        for kind, present in phi.items():
            if present:
                self.phi_findings[kind] = self.phi_findings.get(kind, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "rejected": dict(sorted(self.rejected.items())),
                "classes": dict(sorted(self.classes.items())), "phi_findings": dict(sorted(self.phi_findings.items()))}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QCReport:
        return cls(int(d["accepted"]), dict(d["rejected"]), dict(d["classes"]), dict(d.get("phi_findings", {})))

    def merge(self, other: QCReport) -> QCReport:
        return QCReport(self.accepted + other.accepted, dict(Counter(self.rejected) + Counter(other.rejected)),
                        dict(Counter(self.classes) + Counter(other.classes)),
                        dict(Counter(self.phi_findings) + Counter(other.phi_findings)))
