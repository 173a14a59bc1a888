"""Synthetic federation generator: layout contract, determinism, labels, boxes, DICOM/PNG."""

from __future__ import annotations

import csv
import dataclasses
import json
import tomllib
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from common.catalog import Catalog
from common.errors import ConfigError
from simulations.synth import PRESETS, generate, get_preset
from simulations.synth.catalog_spec import DESIGNS, build_catalog, design

# A few images per site, but every site (and so every scanner and export habit) of the default.
MINI_DEFAULT = dataclasses.replace(get_preset("hip-consortium"), manufacturer_images=(5, 5, 5, 5),
                                   hospital_images=(6, 6, 6, 6), test_per_class=1)
TINY = dataclasses.replace(get_preset("smoke"), manufacturer_images=(6,), hospital_images=(6, 6), test_per_class=2)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("smoke")
    return out, generate(out, preset="smoke", seed=3)


@pytest.fixture(scope="module")
def mini_default(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("mini")
    return out, generate(out, preset=MINI_DEFAULT, seed=0)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _folders(out: Path) -> list[Path]:
    return [*sorted((out / "sites").iterdir()), out / "test"]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _load(path: Path) -> np.ndarray:
    """Pixels in [0, 1], high = dense, whatever the file kind."""
    if path.suffix == ".dcm":
        ds = pydicom.dcmread(path)
        maxval = (1 << int(ds.BitsStored)) - 1
        img = ds.pixel_array.astype(np.float64) / maxval
        return 1.0 - img if ds.PhotometricInterpretation == "MONOCHROME1" else img
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return img.astype(np.float64) / (65535.0 if img.dtype == np.uint16 else 255.0)


def test_same_seed_is_byte_identical_and_another_seed_differs(tmp_path: Path) -> None:
    # Prepare / Execute: the same seed once in this process and once on two processes
    generate(tmp_path / "a", preset=TINY, seed=11, workers=1)
    generate(tmp_path / "b", preset=TINY, seed=11, workers=2)
    generate(tmp_path / "c", preset=TINY, seed=12)
    a, b, c = (_files(tmp_path / x) for x in "abc")
    # Assert
    assert a == b
    assert a.keys() == c.keys()
    differing = [k for k in a if a[k] != c[k]]
    assert any(k.startswith("sites/") and k.endswith((".dcm", ".png")) for k in differing)
    assert "sites/hosp-a/labels.csv" in differing or "sites/hosp-a/annotations.csv" in differing


def test_full_catalog_has_enough_models_and_makers() -> None:
    cat = build_catalog()
    assert len(cat) >= 12
    assert len(cat.manufacturers) >= 4
    assert all(c.component == "femoral-stem" for c in cat)


@pytest.mark.parametrize(
    ("first", "second", "only_difference"),
    [
        ("auralis-a1", "auralis-a1c", {"collar"}),
        ("bexmed-b1", "bexmed-b1v", {"neck_angle"}),
        ("corvant-c2", "corvant-c3", {"porous"}),
        ("dynaflex-d1", "dynaflex-d2", {"holes"}),
    ],
)
def test_subtle_pairs_differ_in_one_feature(first: str, second: str, only_difference: set[str]) -> None:
    a, b = design(first), design(second)
    geometry = {f.name for f in dataclasses.fields(a)} - {"id", "model"}
    assert {f for f in geometry if getattr(a, f) != getattr(b, f)} == only_difference


def test_designs_are_geometrically_distinct() -> None:
    shapes = {tuple(getattr(d, f.name) for f in dataclasses.fields(d)[3:]) for d in DESIGNS}
    assert len(shapes) == len(DESIGNS)


@pytest.mark.parametrize("fixture", ["smoke", "mini_default"])
def test_manufacturer_sites_hold_only_their_own_models(fixture: str, request: pytest.FixtureRequest) -> None:
    out, info = request.getfixturevalue(fixture)
    maker_of = {c.id: c.manufacturer for c in Catalog.load(out / "catalog.json")}
    makers = [s for s in info["sites"] if s["kind"] == "manufacturer"]
    assert makers and all(s["name"] == f"mfr-{s['manufacturer'].lower()}" for s in makers)
    for site in makers:
        assert {maker_of[c] for c in site["classes"]} == {site["manufacturer"]}


@pytest.mark.parametrize("fixture", ["smoke", "mini_default"])
def test_every_label_maps_through_site_toml_into_the_catalog(fixture: str, request: pytest.FixtureRequest) -> None:
    out, _ = request.getfixturevalue(fixture)
    ids = set(Catalog.load(out / "catalog.json").ids)
    for folder in _folders(out):
        toml = tomllib.loads((folder / "site.toml").read_text(encoding="utf-8"))
        rows = _rows(folder / "labels.csv")
        assert toml["site"]["name"] == folder.name
        assert rows and all(toml["labels"][r["label"]] in ids for r in rows)
        assert all((folder / r["file"]).is_file() for r in rows)
    test_map = tomllib.loads((out / "test" / "site.toml").read_text(encoding="utf-8"))["labels"]
    assert test_map == {i: i for i in ids}


def test_local_labels_are_the_sites_own_names(smoke: tuple[Path, dict]) -> None:
    out, _ = smoke
    maker = {r["label"] for r in _rows(out / "sites/mfr-auralis/labels.csv")}
    test = {r["label"] for r in _rows(out / "test/labels.csv")}
    assert maker <= {d.model for d in DESIGNS if d.manufacturer == "Auralis"}
    assert test == set(Catalog.load(out / "catalog.json").ids)


def test_boxes_lie_in_the_image_and_match_the_masks(smoke: tuple[Path, dict]) -> None:
    out, _ = smoke
    for folder in _folders(out):
        rows = _rows(folder / "annotations.csv")
        assert [r["file"] for r in rows] == [r["file"] for r in _rows(folder / "labels.csv")]
        for r in rows:
            mask = cv2.imread(str(folder / r["mask"]), cv2.IMREAD_UNCHANGED)
            image = _load(folder / r["file"])
            ys, xs = np.nonzero(mask)
            box = tuple(int(r[k]) for k in ("x0", "y0", "x1", "y1"))
            assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
            assert mask.shape == image.shape
            assert box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert 0 <= box[0] < box[2] <= mask.shape[1] and 0 <= box[1] < box[3] <= mask.shape[0]


def test_metal_is_the_densest_thing(smoke: tuple[Path, dict]) -> None:
    out, _ = smoke
    folder = out / "sites" / "hosp-a"
    for r in _rows(folder / "annotations.csv")[:20]:
        image = _load(folder / r["file"])
        metal = cv2.imread(str(folder / r["mask"]), cv2.IMREAD_UNCHANGED) > 0
        ring = cv2.dilate(metal.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0  # blurred metal edges
        assert np.median(image[metal]) > np.percentile(image[~ring], 97)


def test_dicoms_carry_the_technical_tags_and_a_fake_patient(mini_default: tuple[Path, dict]) -> None:
    out, _ = mini_default
    seen: dict[str, set] = {"photometric": set(), "modality": set(), "syntax": set()}
    for path in out.rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        seen["photometric"].add(ds.PhotometricInterpretation)
        seen["modality"].add(ds.Modality)
        seen["syntax"].add(ds.file_meta.TransferSyntaxUID.name)
        assert "CANARY" in str(ds.PatientName) and ds.PatientID
        assert 12 <= int(ds.BitsStored) <= 16 and int(ds.HighBit) == int(ds.BitsStored) - 1
        assert {"RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"} <= set(ds.dir())
        assert "ImagerPixelSpacing" in ds if ds.Modality == "DX" else "PixelSpacing" in ds
        assert ds.pixel_array.shape == (ds.Rows, ds.Columns)
        assert int(ds.pixel_array.max()) < 1 << int(ds.BitsStored)
    assert seen["photometric"] == {"MONOCHROME1", "MONOCHROME2"}
    assert seen["modality"] == {"CR", "DX"}
    assert "Explicit VR Little Endian" in seen["syntax"]


def test_both_file_kinds_and_png_depths_are_present(mini_default: tuple[Path, dict]) -> None:
    out, info = mini_default
    kinds = {site: {p.suffix for p in (out / "sites" / site / "images").iterdir()} for site in
             (s["name"] for s in info["sites"])}
    depths = {cv2.imread(str(p), cv2.IMREAD_UNCHANGED).dtype for p in out.rglob("images/*.png")}
    assert {".dcm"} in kinds.values() and {".png"} in kinds.values() and {".dcm", ".png"} in kinds.values()
    assert depths == {np.dtype(np.uint8), np.dtype(np.uint16)}


def test_sites_differ_in_resolution_within_bounds(mini_default: tuple[Path, dict]) -> None:
    out, _ = mini_default
    sizes = {folder.name: _load(next((folder / "images").iterdir())).shape for folder in _folders(out)}
    assert all(256 <= side <= 448 for shape in sizes.values() for side in shape)
    assert len(set(sizes.values())) >= 3


def test_federation_json_matches_the_files(smoke: tuple[Path, dict]) -> None:
    out, info = smoke
    assert json.loads((out / "federation.json").read_text(encoding="utf-8")) == info
    assert {"preset", "seed", "generator_version", "image_count", "sites", "test"} <= info.keys()
    assert [s["kind"] for s in info["sites"]] == ["manufacturer", "hospital", "hospital"]
    for site in info["sites"]:
        rows = _rows(out / "sites" / site["name"] / "labels.csv")
        assert site["images"] == len(rows) == sum(site["classes"].values())
    assert info["test"]["classes"] == dict.fromkeys(get_preset("smoke").classes or (), 10)
    assert info["image_count"] == sum(s["images"] for s in info["sites"]) + info["test"]["images"]


def test_default_preset_has_the_designed_shape() -> None:
    preset = get_preset("hip-consortium")
    assert len(preset.manufacturers) == 4 and len(preset.hospital_images) == 4
    assert 1_400 <= preset.site_images <= 1_800
    assert 440 <= preset.test_per_class * len(DESIGNS) <= 520
    assert set(PRESETS) >= {"hip-consortium", "smoke"}


def test_unknown_preset_is_a_config_error_listing_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="hip-consortium.*smoke"):
        generate(tmp_path, preset="nope")


@pytest.mark.parametrize(
    "change",
    [{"difficulty": -0.1}, {"crop_fraction": 0.9}, {"manufacturer_images": (5, 5)}, {"hospital_images": (0,)},
     {"dirichlet_alpha": 0.0}],
)
def test_invalid_presets_are_rejected(change: dict) -> None:
    with pytest.raises(ConfigError):
        dataclasses.replace(get_preset("smoke"), **change)


def test_progress_bar_does_not_change_the_output(tmp_path: Path) -> None:
    small = dataclasses.replace(TINY, name="tiny", hospital_images=(2,), manufacturer_images=(2,), test_per_class=1)
    plain = generate(tmp_path / "plain", preset=small, seed=5)
    shown = generate(tmp_path / "shown", preset=small, seed=5, progress=True)
    assert plain == shown and _files(tmp_path / "plain") == _files(tmp_path / "shown")
