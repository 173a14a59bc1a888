"""``implantfl-client segment``: the implant mask the pipeline cuts, written at the input's size."""

from __future__ import annotations

import json

import cv2
import numpy as np

from client.cli import main
from client.data.segmentation import box_iou
from tests.unit.client.conftest import draw_radiograph, write_dicom, write_png


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_masks_are_written_at_the_inputs_size_and_cover_the_drawn_implant(tmp_path, capsys):
    # Prepare: a 12-bit DICOM and a 16-bit PNG of drawn radiographs with known implant masks
    drawn = [draw_radiograph(3, shape=(700, 560)), draw_radiograph(4, shape=(600, 480))]
    files = [write_dicom(tmp_path / "hip-a.dcm", drawn[0].image, monochrome1=True),
             write_png(tmp_path / "hip-b.png", drawn[1].image, bits=16)]
    # Execute
    code = main(["segment", *map(str, files), "--out", str(tmp_path / "masks"), "--json"])
    answers = json.loads(capsys.readouterr().out)
    # Assert: one 0/255 PNG per file at the file's size, on the implant
    assert code == 0 and [a["file"] for a in answers] == ["hip-a.dcm", "hip-b.png"]
    for answer, truth in zip(answers, drawn, strict=True):
        mask = cv2.imread(answer["mask"], cv2.IMREAD_UNCHANGED)
        assert mask.dtype == np.uint8 and mask.shape == truth.mask.shape
        assert set(np.unique(mask)) <= {0, 255}
        assert _iou(mask, truth.mask) > 0.6
        assert box_iou(tuple(answer["box"]), truth.box) > 0.6
        assert answer["qc"] is None


def test_a_file_without_an_implant_or_unreadable_gets_no_mask_and_its_reason(tmp_path, capsys):
    empty = write_png(tmp_path / "no-implant.png", draw_radiograph(5, shape=(400, 320), implant=False).image)
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"DICM" * 10)
    code = main(["segment", str(empty), str(broken), "--out", str(tmp_path / "masks")])
    out = capsys.readouterr().out
    assert code == 1
    assert "no-implant.png: no mask (quality gate: no-implant)" in out
    assert "broken.dcm: no mask (quality gate: unreadable)" in out
    assert not list((tmp_path / "masks").glob("*.png"))


def test_two_files_that_would_write_the_same_mask_stop_before_any_work(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    img = draw_radiograph(6, shape=(400, 320)).image
    files = [write_png(tmp_path / d / "hip.png", img) for d in "ab"]
    code = main(["segment", *map(str, files), "--out", str(tmp_path / "masks")])
    assert code == 2 and "hip.mask.png" in capsys.readouterr().err
    assert not (tmp_path / "masks").exists()
