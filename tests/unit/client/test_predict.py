"""Bedside prediction: top-k, the unknown flag, Grad-CAM, errors, and the predict/calibrate commands.

The module fixture generates the ``smoke`` synthetic federation, trains the study CNN
briefly on the pooled site training splits, calibrates it on the pooled validation splits
and writes a release, as a simulation run does.
"""

import argparse
import csv
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from client.bedside.gradcam import cam_target, grad_cam, peak
from client.bedside.predict import (
    COLOUR_PICTURE,
    FAR_FROM_CATALOG,
    LOW_CONFIDENCE,
    Predictor,
    cam_names,
    predict_files,
)
from client.bedside.predict_cli import add_parsers
from client.data.site_data import load_site
from client.data.transforms import CropROI, Resize, Sample
from common.calibration import Calibration, fit_from_splits, save_calibration
from common.catalog import Catalog
from common.config import RunConfig
from common.models import build_model
from common.preprocess_params import PreprocessParams

SIZE = 64
EPOCHS = 8


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


@pytest.fixture(scope="module")
def fed(tmp_path_factory) -> Path:
    """The smoke federation with 4x its site images (480): enough for the CNN to learn the
    6 classes in a few epochs (about 80% test accuracy against about 40% on the plain
    smoke preset), so that its Grad-CAM has something to show."""
    import dataclasses

    from simulations.synth import generate
    from simulations.synth.presets import get_preset

    smoke = get_preset("smoke")
    preset = dataclasses.replace(smoke, manufacturer_images=tuple(4 * n for n in smoke.manufacturer_images),
                                 hospital_images=tuple(4 * n for n in smoke.hospital_images))
    out = tmp_path_factory.mktemp("fed") / "smoke"
    generate(out, preset=preset, seed=0)
    return out


@pytest.fixture(scope="module")
def release(fed, tmp_path_factory) -> Path:
    from server.release import write_release

    catalog = Catalog.load(fed / "catalog.json")
    params = PreprocessParams(image_size=SIZE)
    sites = [load_site(d, catalog=catalog, params=params, val_fraction=0.3) for d in sorted((fed / "sites").iterdir())]
    x = torch.from_numpy(np.concatenate([s.train()[0] for s in sites]))
    y = torch.from_numpy(np.concatenate([s.train()[1] for s in sites]))
    torch.manual_seed(0)
    model = build_model("cnn", num_classes=len(catalog), image_size=SIZE)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(EPOCHS):
        model.train()
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), 32):
            idx = order[i : i + 32]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    cal = fit_from_splits(model, [s.val() for s in sites])
    # Judged by the release gate on its test images: better than chance is enough for these tests (minimum 0)
    from client.training.train import evaluate
    from common.metrics import classification_summary

    test = load_site(fed / "test", catalog=catalog, params=params, val_fraction=0.0)
    res = evaluate(model, test.x, test.y, device=torch.device("cpu"))
    summary = {"final": classification_summary(res.labels, res.probs, catalog.ids)}
    out = tmp_path_factory.mktemp("release") / "release"
    return write_release(out, arrays=ArrayRecord(model.state_dict()),
                         config=RunConfig(model="cnn", image_size=SIZE, release_min_accuracy=0.0),
                         catalog=catalog, preprocess=params, calibration=cal, onnx=False, summary=summary)


@pytest.fixture(scope="module")
def predictor(release) -> Predictor:
    return Predictor(release)


@pytest.fixture(scope="module")
def encoder_release(fed, tmp_path_factory) -> Path:
    """A release on a (tiny, untrained) public encoder with the cosine head solved from exact class sums,
    calibrated on the pooled validation splits as a run with a head calibrates it."""
    from common.dp_stats import feature_stats, solve_head
    from common.encoders import BackboneConfig, EncoderCard, FrozenEncoder, save_encoder
    from common.encoders.frozen import fit_projection
    from common.open_set import class_directions
    from server.release import write_release

    catalog = Catalog.load(fed / "catalog.json")
    params = PreprocessParams(image_size=SIZE)
    sites = [load_site(d, catalog=catalog, params=params, val_fraction=0.3) for d in sorted((fed / "sites").iterdir())]
    torch.manual_seed(0)
    encoder = FrozenEncoder(BackboneConfig(image_size=SIZE, dim=16, channels=(8, 8, 8, 8)))
    mean, projection, _ = fit_projection(encoder.encode(np.concatenate([s.x for s in sites]), raw=True), None)
    encoder.set_projection(mean, projection)
    folder = tmp_path_factory.mktemp("encoder")
    sha = save_encoder(encoder, folder, EncoderCard(arch="implant-cnn", dim=encoder.dim, sha256="",
                                                    source={"kind": "test"}, excludes="nothing", preprocess={},
                                                    config={})).sha256
    x, y = np.concatenate([s.train()[0] for s in sites]), np.concatenate([s.train()[1] for s in sites])
    weight, bias = solve_head(feature_stats(encoder.encode(x), y, len(catalog)), solver="cosine")
    head = torch.nn.Linear(encoder.dim, len(catalog))
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight))
        head.bias.copy_(torch.from_numpy(bias))
    val = [s.val() for s in sites]
    cal = fit_from_splits(head, [(encoder.encode(xv), yv) for xv, yv in val],
                          directions=class_directions(weight), projected=[encoder.encode(xv, projected=True)
                                                                          for xv, _ in val])
    from client.training.train import evaluate
    from common.metrics import classification_summary

    test = load_site(fed / "test", catalog=catalog, params=params, val_fraction=0.0)
    res = evaluate(head, encoder.encode(test.x), test.y, device=torch.device("cpu"))
    summary = {"final": classification_summary(res.labels, res.probs, catalog.ids)}
    out = tmp_path_factory.mktemp("encoder-release") / "release"
    return write_release(out, arrays=ArrayRecord(head.state_dict()), summary=summary,
                         config=RunConfig(head="dp-stats", num_server_rounds=1, encoder=sha, image_size=SIZE,
                                          release_min_accuracy=0.0),
                         catalog=catalog, preprocess=params, calibration=cal, onnx=False, encoder_dir=folder)


@pytest.fixture(scope="module")
def test_items(fed) -> list[dict]:
    """Every global test image with its label and implant mask file."""
    labels = {r["file"]: r["label"] for r in csv.DictReader(open(fed / "test" / "labels.csv"))}
    return [{**r, "label": labels[r["file"]]} for r in csv.DictReader(open(fed / "test" / "annotations.csv"))]


@pytest.fixture(scope="module")
def clean_items(predictor, fed, test_items) -> list[dict]:
    """The test images the quality gate accepts (a few generated images are hard cases it rejects)."""
    return [it for it in test_items if predictor.prepare(fed / "test" / it["file"]).image is not None]


@pytest.fixture(scope="module")
def clean_image(fed, clean_items) -> Path:
    return fed / "test" / clean_items[0]["file"]


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory) -> dict[str, Path]:
    """Images with no implant: blank, noise, and a drawn colourful scene."""
    d = tmp_path_factory.mktemp("odd")
    rng = np.random.default_rng(0)
    scene = np.zeros((224, 192, 3), np.uint8)
    scene[:120], scene[120:] = (235, 180, 90), (60, 170, 60)  # sky, grass (BGR)
    cv2.circle(scene, (150, 45), 25, (0, 230, 255), -1)  # sun
    cv2.rectangle(scene, (30, 90), (100, 170), (40, 40, 200), -1)  # house
    cv2.fillPoly(scene, [np.array([[25, 90], [65, 55], [105, 90]])], (30, 60, 120))  # roof
    images = {"blank": np.full((224, 192), 128, np.uint8), "noise": rng.integers(0, 256, (224, 192)).astype(np.uint8),
              "scene": scene}
    paths = {}
    for name, img in images.items():
        paths[name] = d / f"{name}.png"
        cv2.imwrite(str(paths[name]), img)
    return paths


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="implantfl-client")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


# ---------------------------------------------------------------------- predict command
def test_predict_answers_a_dicom_and_a_png(fed, release, clean_items, capsys):
    # Prepare: one file of each kind from the generated test set
    files = [fed / "test" / it["file"] for it in clean_items]
    dcm = next(f for f in files if f.suffix == ".dcm")
    png = next(f for f in files if f.suffix == ".png")
    # Execute
    code = _cli(["predict", str(dcm), str(png), "--model", str(release), "--json"])
    # Assert
    answers = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [a["file"] for a in answers] == [str(dcm), str(png)]
    ids = set(Catalog.load(release / "catalog.json").ids)
    for a in answers:
        probs = [t["probability"] for t in a["top_k"]]
        assert len(a["top_k"]) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
        assert {t["id"] for t in a["top_k"]} <= ids and all(t["manufacturer"] and t["model"] for t in a["top_k"])
        assert isinstance(a["unknown"], bool) and a["cam"] is None


def test_bad_files_get_an_error_and_the_others_are_still_answered(release, clean_image, tmp_path, capsys):
    # Prepare
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    good = clean_image
    # Execute
    code = _cli(["predict", str(notes), str(tmp_path / "missing.png"), str(good), "--model", str(release), "--json"])
    answers = json.loads(capsys.readouterr().out)
    code_none = _cli(["predict", str(notes), "--model", str(release), "--json"])
    # Assert
    assert code == 0 and code_none == 1
    assert [a.get("error") for a in answers] == ["unreadable", "unreadable", None]
    # every answer, errors included, carries the release verdict it was given under
    assert set(answers[0]) == {"file", "error", "detail", "gate"} and len(answers[2]["top_k"]) == 3
    assert answers[0]["gate"] == answers[2]["gate"] and "fit_for_use" in answers[0]["gate"]


def test_text_output_lists_the_top_k_and_writes_overlays(release, clean_image, tmp_path, capsys):
    # Prepare
    image = clean_image
    # Execute
    code = _cli(["predict", str(image), "--model", str(release), "--top-k", "2", "--cam", str(tmp_path / "cams")])
    # Assert
    out = capsys.readouterr().out
    gate_line, answer = out.split("\n", 1)
    assert gate_line.startswith("release: fit for use (top-1 ")
    assert code == 0 and answer.startswith(str(image)) and "  1. " in out and "  2. " in out and "  3. " not in out
    overlay = cv2.imread(str(tmp_path / "cams" / f"{image.stem}.cam.png"))
    assert overlay is not None and overlay.shape[0] == 256 and overlay.shape[1] > 256


def test_logs_name_no_paths(fed, release, clean_image, odd_images, tmp_path, caplog):
    files = [clean_image, odd_images["blank"], tmp_path / "missing.dcm"]
    with caplog.at_level(logging.DEBUG):
        predict_files(files, release, cam_dir=tmp_path / "cams")
    assert caplog.records, "predict should log what it did"
    for rec in caplog.records:
        text = rec.getMessage()
        assert str(tmp_path) not in text and str(fed) not in text and ".png" not in text and ".dcm" not in text


# ---------------------------------------------------------------------- unknown flag
@pytest.mark.parametrize("name", ["blank", "noise", "scene"])
def test_unknown_fires_on_images_without_an_implant(predictor, odd_images, name):
    answer = predictor.predict_file(odd_images[name])
    assert answer.answered and answer.unknown, answer
    assert answer.reason != LOW_CONFIDENCE or answer.top_k  # a low-confidence answer still lists classes


def test_colour_scene_is_recognised_as_a_picture(predictor, odd_images):
    assert predictor.predict_file(odd_images["scene"]).reason == COLOUR_PICTURE


def test_unknown_spares_most_clean_test_images(predictor, fed, clean_items):
    flags = [predictor.predict_file(fed / "test" / it["file"]).unknown for it in clean_items]
    assert len(flags) >= 30 and np.mean(flags) < 0.5


@pytest.mark.parametrize(("threshold", "flagged"), [(1.0, True), (0.0, False)])
def test_unknown_threshold_decides_for_clean_images(release, clean_image, tmp_path, threshold, flagged):
    # Prepare: a copy of the release with another threshold
    import shutil

    copy = shutil.copytree(release, tmp_path / "rel")
    save_calibration(copy, Calibration(temperature=1.0, unknown_threshold=threshold, fitted_on=1, method="test"))
    # Execute
    answer = Predictor(copy).predict_file(clean_image)
    # Assert
    assert answer.unknown is flagged and len(answer.top_k) == 3
    assert (answer.reason == LOW_CONFIDENCE) is flagged


def test_an_encoder_release_flags_an_image_by_its_distance_to_the_class_rays(encoder_release, clean_image, tmp_path):
    # Prepare: the release's own score of a clean catalog image, and copies with thresholds either side of it
    import dataclasses
    import shutil

    from common.open_set import RAY_DISTANCE, head_directions, projected_features, ray_distance

    pred = Predictor(encoder_release)
    cal = pred.release.calibration
    image = pred.prepare(clean_image).image
    score = pred.feature_score(image)
    answers = {}
    for name, threshold in (("far", score - 1e-3), ("near", score + 1e-3)):
        copy = shutil.copytree(encoder_release, tmp_path / name)
        save_calibration(copy, dataclasses.replace(cal, feature_threshold=threshold))
        answers[name] = Predictor(copy).predict_file(clean_image)
    # Assert: the score is the distance of the image's projected features to the nearest class ray, and the
    # release flags it above its threshold (fitted as a run fits it: the high quantile on validation images)
    expected = ray_distance(projected_features(pred.model.encoder, image[None, None]), head_directions(pred.model))
    assert cal.feature_metric == RAY_DISTANCE and cal.method.startswith("temperature-lbfgs+ray-distance")
    assert score == pytest.approx(float(expected[0])) and cal.feature_threshold > 0
    assert answers["far"].unknown and answers["far"].reason == FAR_FROM_CATALOG
    assert "distance" in answers["far"].detail and not answers["near"].unknown


def test_an_encoder_release_calibrated_on_the_cosine_keeps_it(encoder_release, clean_image, tmp_path):
    # Prepare: calibration.json as releases before the ray distance wrote it (no feature_metric)
    import shutil

    copy = shutil.copytree(encoder_release, tmp_path / "rel")
    old = {"temperature": 1.0, "unknown_threshold": 0.0, "fitted_on": 50, "method": "temperature-lbfgs+features-q0.025",
           "feature_threshold": 1.0}  # no cosine reaches 1 on a real image: every image below it
    (copy / "calibration.json").write_text(json.dumps(old))
    # Execute
    pred = Predictor(copy)
    answer = pred.predict_file(clean_image)
    # Assert: the score is the cosine to the nearest class direction, unknown below the threshold
    assert -1.0 <= pred.feature_score(pred.prepare(clean_image).image) < 1.0
    assert answer.unknown and answer.reason == FAR_FROM_CATALOG and "similarity" in answer.detail


# ---------------------------------------------------------------------- Grad-CAM
def _implant_mask_in_model_input(predictor: Predictor, fed: Path, item: dict) -> np.ndarray:
    """The annotated implant mask carried through the same ROI crop and resize as the image."""
    from client.data.ingest import read_image

    pixels = read_image(fed / "test" / item["file"], predictor.params).pixels
    seg = predictor.pipeline(Sample(pixels)).seg
    mask = cv2.imread(str(fed / "test" / item["mask"]), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255
    return Resize(SIZE)(CropROI(predictor.params.roi_margin)(Sample(mask, seg))).image > 0.5


def test_gradcam_peak_falls_on_the_implant_far_more_often_than_chance(predictor, fed, clean_items):
    """The peak of the top class's Grad-CAM lies on the implant, far more often than a peak drawn at random.

    "On the implant" is the annotated implant mask in model-input pixels, grown by half a
    Grad-CAM cell (the CAM layer is SIZE/8 = 8 cells wide, so one cell is 8 pixels): the
    CAM cannot place its peak more finely than that, and the model also looks at the
    implant's outline, just outside the mask. The implant's bounding box is not used: in
    the ROI crop it covers about 35% of the image (the outline and the box corners
    included), so a box hit says little. Chance is the grown mask's area fraction (what a
    uniformly random peak hits). "Far more often": at least 1.5x chance and a one-sided
    binomial test against chance at p < 0.001. Measured on this fixture: 0.60 against
    0.29 by chance (60 images); on the plain 120-image smoke preset the CNN reaches only
    ~40% test accuracy and its CAM is no better than chance.
    """
    from scipy.stats import binomtest

    half_cell = SIZE // 8 // 2
    kernel = np.ones((2 * half_cell + 1, 2 * half_cell + 1), np.uint8)
    hits, chance = [], []
    for item in clean_items:
        prep = predictor.prepare(fed / "test" / item["file"])
        region = cv2.dilate(_implant_mask_in_model_input(predictor, fed, item).astype(np.uint8), kernel) > 0
        px, py = peak(predictor.cam(prep.image, int(predictor.probabilities(prep.image).argmax())))
        hits.append(bool(region[py, px]))
        chance.append(float(region.mean()))
    p_chance = float(np.mean(chance))
    test = binomtest(int(np.sum(hits)), len(hits), p_chance, alternative="greater")
    assert np.mean(hits) >= 1.5 * p_chance and test.pvalue < 1e-3, (np.mean(hits), p_chance, test.pvalue)


def test_gradcam_uses_the_cam_layer_before_its_pooling():
    model = build_model("cnn", num_classes=3, image_size=32)
    assert cam_target(model) is model.features[-1][2]  # conv -> norm -> ReLU | max-pool -> dropout
    cam = grad_cam(model, torch.rand(1, 1, 32, 32))
    assert cam.shape == (32, 32) and cam.min() >= 0 and cam.max() <= 1


def test_models_without_a_cam_layer_get_a_saliency_map():
    model = build_model("dnn", num_classes=3, image_size=32).eval()
    cam = grad_cam(model, torch.rand(1, 1, 32, 32))
    assert cam_target(model) is None and cam.shape == (32, 32) and cam.max() == pytest.approx(1.0)


def test_overlay_names_are_unique_per_batch(tmp_path):
    names = cam_names([Path("a/x.dcm"), Path("b/x.png"), Path("y.png")], tmp_path)
    assert [n.name for n in names] == ["x.cam.png", "x-2.cam.png", "y.cam.png"]


# ---------------------------------------------------------------------- release + calibrate
def test_calibrate_writes_the_sites_calibration_into_the_release(release, fed, tmp_path, capsys):
    # Prepare
    import shutil

    copy = shutil.copytree(release, tmp_path / "rel")
    site = fed / "sites" / "mfr-auralis"
    # Execute
    code = _cli(["calibrate", "--model", str(copy), "--data", str(site), "--cache", str(tmp_path / "cache"),
                 "--val-fraction", "0.8", "--json"])
    # Assert
    out = json.loads(capsys.readouterr().out)
    cal = json.loads((copy / "calibration.json").read_text())
    n_val = int(load_site(site, catalog=Catalog.load(copy / "catalog.json"), params=PreprocessParams(image_size=SIZE),
                          cache_dir=tmp_path / "cache", val_fraction=0.8).is_val.sum())
    assert code == 0 and cal["fitted_on"] == out["fitted_on"] == n_val >= 20
    assert cal["temperature"] > 0 and 0 <= cal["unknown_threshold"] <= 1 and cal["method"].startswith("temperature")


def test_calibrate_fits_an_encoder_release_s_feature_threshold(encoder_release, fed, tmp_path, capsys):
    import shutil

    copy = shutil.copytree(encoder_release, tmp_path / "rel")
    code = _cli(["calibrate", "--model", str(copy), "--data", str(fed / "sites" / "mfr-auralis"), "--val-fraction", "0.8",
                 "--json"])
    out = json.loads(capsys.readouterr().out)
    cal = json.loads((copy / "calibration.json").read_text())
    assert code == 0 and cal["feature_metric"] == "ray-distance" and cal["feature_threshold"] > 0
    assert cal["unknown_threshold"] == 0.0 and 0.0 < out["flagged_unknown"] < 0.2


def test_calibrate_refuses_a_split_too_small_to_fit(release, fed, tmp_path):
    from common.errors import ConfigError

    with pytest.raises(ConfigError, match="validation image"):
        _cli(["calibrate", "--model", str(release), "--data", str(fed / "sites" / "hosp-a"), "--val-fraction", "0.05"])
