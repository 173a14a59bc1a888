import csv
import filecmp
import json
import tomllib

import cv2
import numpy as np
import pydicom
import pytest

from common.catalog import Catalog
from common.errors import ConfigError
from simulations.synth import generate
from simulations.synth.catalog_spec import build_catalog


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("fed")
    return out, generate(out, preset="smoke", seed=3)


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_same_seed_is_byte_identical_and_another_seed_differs(smoke, tmp_path):
    out, _ = smoke
    again = tmp_path / "again"
    generate(again, preset="smoke", seed=3)
    assert _files(out) == _files(again)
    match, mismatch, errors = filecmp.cmpfiles(out, again, [str(p) for p in _files(out)], shallow=False)
    assert mismatch == [] and errors == []
    other = tmp_path / "other"
    generate(other, preset="smoke", seed=4)
    assert not filecmp.cmp(out / "sites/hosp-a/labels.csv", other / "sites/hosp-a/labels.csv", shallow=False) or \
        not filecmp.cmp(out / "test/annotations.csv", other / "test/annotations.csv", shallow=False)


def test_full_catalog_has_enough_models_and_makers():
    cat = build_catalog()
    assert len(cat) >= 12
    assert len(cat.manufacturers) >= 4


def test_manufacturer_sites_hold_only_their_own_models(smoke):
    out, info = smoke
    cat = Catalog.load(out / "catalog.json")
    maker_of = {c.id: c.manufacturer for c in cat}
    for site in info["sites"]:
        if site["kind"] == "manufacturer":
            assert {maker_of[c] for c in site["classes"]} == {site["manufacturer"]}


def test_every_label_maps_through_site_toml_into_the_catalog(smoke):
    out, info = smoke
    ids = set(Catalog.load(out / "catalog.json").ids)
    for site in [*(s["name"] for s in info["sites"])]:
        folder = out / "sites" / site
        mapping = tomllib.loads((folder / "site.toml").read_text())["labels"]
        with open(folder / "labels.csv") as fh:
            rows = list(csv.DictReader(fh))
        assert rows and all(mapping[r["label"]] in ids for r in rows)
        assert all((folder / r["file"]).exists() for r in rows)


def test_boxes_lie_in_the_image_and_match_the_masks(smoke):
    out, _ = smoke
    folder = out / "sites" / "mfr-auralis"
    with open(folder / "annotations.csv") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows[:15]:
        mask = cv2.imread(str(folder / r["mask"]), cv2.IMREAD_UNCHANGED)
        ys, xs = np.nonzero(mask)
        box = tuple(int(r[k]) for k in ("x0", "y0", "x1", "y1"))
        assert box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert 0 <= box[0] < box[2] <= mask.shape[1] and 0 <= box[1] < box[3] <= mask.shape[0]


def test_dicoms_carry_the_technical_tags_and_a_fake_patient(tmp_path):
    generate(tmp_path, preset="smoke", seed=0)
    dicoms = list(tmp_path.rglob("*.dcm"))
    pngs = list(tmp_path.rglob("images/*.png"))
    assert dicoms and pngs
    seen = {"photometric": set(), "modality": set(), "bits": set()}
    for path in dicoms:
        ds = pydicom.dcmread(path)
        seen["photometric"].add(ds.PhotometricInterpretation)
        seen["modality"].add(ds.Modality)
        seen["bits"].add(int(ds.BitsStored))
        assert "CANARY" in str(ds.PatientName) and ds.PatientID
        assert "RescaleSlope" in ds and "WindowCenter" in ds
        assert ("PixelSpacing" in ds) or ("ImagerPixelSpacing" in ds)
    assert seen["photometric"] == {"MONOCHROME1", "MONOCHROME2"}
    assert seen["modality"] == {"CR", "DX"}
    assert all(12 <= b <= 16 for b in seen["bits"])


def test_federation_json_counts_match(smoke):
    out, info = smoke
    on_disk = json.loads((out / "federation.json").read_text())
    assert on_disk == info
    assert info["image_count"] == sum(s["images"] for s in info["sites"]) + info["test"]["images"]


def test_unknown_preset_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="hip-consortium"):
        generate(tmp_path, preset="nope")
