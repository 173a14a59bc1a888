"""QC gate: pixel checks by table, the report's counting and round trip."""

from __future__ import annotations

import numpy as np
import pytest

from client.data.qc import BLANK, REASONS, TOO_LARGE, TOO_SMALL, QCReport, Rejected, check_pixels
from common.preprocess_params import PreprocessParams

PARAMS = PreprocessParams(min_side_px=128, max_side_px=1000)
_rng = np.random.default_rng(0)


@pytest.mark.parametrize(
    ("pixels", "stored", "reason"),
    [
        (_rng.random((200, 150), dtype=np.float32), None, None),
        (_rng.random((1, 1), dtype=np.float32), None, TOO_SMALL),
        (_rng.random((200, 100), dtype=np.float32), None, TOO_SMALL),
        (_rng.random((200, 150), dtype=np.float32), (100, 150), TOO_SMALL),  # judged on the stored size
        (_rng.random((200, 150), dtype=np.float32), (1200, 900), TOO_LARGE),
        (np.zeros((200, 150), np.float32), None, BLANK),
        (np.full((200, 150), 0.4, np.float32), None, BLANK),
        (np.where(_rng.random((200, 150)) < 0.95, 1.0, 0.3).astype(np.float32), None, BLANK),
    ],
    ids=["ok", "1x1", "narrow", "stored-small", "stored-large", "black", "flat", "saturated"],
)
def test_check_pixels(pixels, stored, reason):
    assert check_pixels(pixels, PARAMS, stored) == reason


def test_report_counts_and_round_trips():
    # Prepare
    report = QCReport()
    # Execute
    report.accept("stem-a")
    report.accept("stem-a")
    report.accept("stem-b")
    report.reject(TOO_SMALL)
    report.note_phi(["patient-name-present", "burned-in-annotation", "patient-name-present"])
    report.note_phi(["patient-name-present"])
    # Assert
    d = report.to_dict()
    assert d == {"accepted": 3, "rejected": {"too-small": 1}, "classes": {"stem-a": 2, "stem-b": 1},
                 "phi_findings": {"burned-in-annotation": 1, "patient-name-present": 2}}
    assert QCReport.from_dict(d) == report and report.total == 4
    merged = report.merge(QCReport.from_dict(d)).to_dict()
    assert merged["accepted"] == 6 and merged["phi_findings"]["patient-name-present"] == 4


def test_rejected_knows_only_the_reasons():
    assert {Rejected(r).reason for r in REASONS} == set(REASONS)
    with pytest.raises(ValueError):
        Rejected("unknown-label")
