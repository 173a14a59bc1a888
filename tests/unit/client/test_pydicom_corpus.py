"""Every file of pydicom's bundled test corpus is ingested or rejected with a reason, never a crash."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_files

from client.data.ingest import IngestError, read_image
from client.data.qc import REASONS
from client.data.site_data import process_file
from common.preprocess_params import PreprocessParams

FILES = sorted(Path(f) for f in get_testdata_files() if Path(f).is_file())
PARAMS = PreprocessParams(min_side_px=1)  # let small test images through to the later stages


def _id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


@pytest.mark.parametrize("path", FILES, ids=[_id(p) for p in FILES])
def test_corpus_file_is_ingested_or_rejected_with_a_reason(path):
    # Execute
    try:
        img = read_image(path, PARAMS)
    except IngestError as e:
        # Assert: a reason, and the file named by token only
        assert e.reason in REASONS and str(e).startswith("f:") and path.name not in str(e)
        return
    assert img.pixels.ndim == 2 and img.pixels.dtype == np.float32
    assert np.isfinite(img.pixels).all() and 0.0 <= img.pixels.min() and img.pixels.max() <= 1.0
    result = process_file(path, PARAMS)  # QC + preprocessing never raise either
    assert result.reason in (None, *REASONS)


def test_corpus_is_mostly_decodable():
    # Execute
    outcome = Counter()
    for path in FILES:
        try:
            read_image(path, PARAMS)
            outcome["ingested"] += 1
        except IngestError as e:
            outcome[e.reason] += 1
    # Assert: every image the corpus holds decodes except known-broken files
    assert outcome["ingested"] >= 85 and set(outcome) <= {"ingested", *REASONS}
