"""The learned (U-Net) segmenter: trained on drawn radiographs with masks, pinned by hash, used by ``segment``."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from client.cli import main
from client.data.learned_segmentation import (
    WEIGHTS,
    LearnedSegmenter,
    network_input,
    save_segmenter,
)
from common.errors import ConfigError
from tests.unit.client.conftest import draw_radiograph, write_png

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    from simulations.segmenter_training import train

    drawn = [draw_radiograph(100 + i, shape=(320, 256)) for i in range(48)]
    x = np.stack([network_input(d.image) for d in drawn])
    y = np.stack([(network_input(d.mask.astype(np.float32) / 255) > 0.5).astype(np.float32) for d in drawn])
    model, training = train(x, y, np.array([f"g{i % 8}" for i in range(48)]), epochs=15, seed=0)
    folder = tmp_path_factory.mktemp("unet")
    save_segmenter(model, folder, {"training": training})
    return folder


def test_a_trained_unet_finds_the_implant_on_radiographs_it_never_saw(segmenter):
    seg = LearnedSegmenter(segmenter)
    ious = []
    for i in range(6):
        truth = draw_radiograph(500 + i, shape=(300, 240))
        found = seg.segment(truth.image)
        assert found.box is not None
        assert found.mask.shape == truth.mask.shape
        ious.append(_iou(found.mask, truth.mask))
    assert np.mean(ious) > 0.6
    card = json.loads((segmenter / "segmenter.json").read_text())
    assert card["sha256"] == seg.sha256 and card["training"]["val_images"] > 0


def test_weights_that_do_not_match_their_card_are_refused(segmenter, tmp_path):
    (tmp_path / "segmenter.json").write_text((segmenter / "segmenter.json").read_text())
    blob = bytearray((segmenter / WEIGHTS).read_bytes())
    blob[-1] ^= 1
    (tmp_path / WEIGHTS).write_bytes(bytes(blob))
    with pytest.raises(ConfigError, match="does not match"):
        LearnedSegmenter(tmp_path)
    with pytest.raises(ConfigError, match="train-segmenter"):
        LearnedSegmenter(tmp_path / "missing")


def test_segment_with_the_unet_writes_a_mask_and_needs_its_model(segmenter, tmp_path, capsys):
    truth = draw_radiograph(77, shape=(400, 320))
    f = write_png(tmp_path / "hip.png", truth.image, bits=16)
    assert main(["segment", str(f), "--out", str(tmp_path / "m"), "--segmenter", "unet"]) == 2
    assert "--segmenter-model" in capsys.readouterr().err
    code = main(["segment", str(f), "--out", str(tmp_path / "m"), "--segmenter", "unet", "--segmenter-model",
                 str(segmenter), "--json"])
    answer = json.loads(capsys.readouterr().out)[0]
    assert code == 0
    mask = cv2.imread(answer["mask"], cv2.IMREAD_UNCHANGED)
    assert mask.shape == truth.mask.shape and _iou(mask, truth.mask) > 0.5
