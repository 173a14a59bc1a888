import csv
import tomllib
from pathlib import Path

import cv2
import numpy as np
import pytest

from common.catalog import Catalog
from common.errors import CatalogError, ConfigError, InvalidInputError
from simulations.datasets import (
    aggregate_by,
    average_by_key,
    build_federation,
    label_id,
    open_dataset,
    read_studies,
    split_test,
)
from simulations.datasets.kaggle_hip import png_colour_type


# ------------------------------------------------------------------ fixture trees
def _grey(path: Path, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((8, 8), value, np.uint8))
    return path


def _rgba(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.zeros((8, 8, 4), np.uint8)
    img[..., :3], img[..., 3] = 120, 255
    img[:2, :, 3] = 0  # a transparent band
    assert cv2.imwrite(str(path), img)
    return path


def _palette(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        from PIL import Image
    except ImportError:  # no Pillow: an RGB PNG still exercises the non-grey path
        assert cv2.imwrite(str(path), np.full((8, 8, 3), 90, np.uint8))
        return path
    img = Image.new("P", (8, 8), color=1)
    img.putpalette([0, 0, 0, 90, 90, 90] + [0, 0, 0] * 254)
    img.save(path)
    return path


@pytest.fixture
def kaggle_tree(tmp_path):
    data = tmp_path / "hip" / "Data"
    _grey(data / "Control" / "c1.png")
    _palette(data / "Control" / "c2.png")
    _rgba(data / "Control" / "c3.png")
    _grey(data / "Loose" / "l1.png")
    _palette(data / "Loose" / "l2.png")
    (data / "Loose" / "notes.txt").write_text("not an image")
    return tmp_path / "hip"


MURA_IMAGES = {
    "train": [
        ("XR_WRIST", "patient00001", "study1_positive", 2),
        ("XR_WRIST", "patient00002", "study1_negative", 1),
        ("XR_WRIST", "patient00004", "study1_negative", 1),
        ("XR_ELBOW", "patient00001", "study1_negative", 1),
        ("XR_ELBOW", "patient00003", "study1_positive", 1),
        ("XR_ELBOW", "patient00005", "study2_positive", 2),
    ],
    "valid": [
        ("XR_WRIST", "patient11185", "study1_positive", 2),
        ("XR_ELBOW", "patient11186", "study1_negative", 1),
    ],
}


@pytest.fixture
def mura_tree(tmp_path):
    base = tmp_path / "downloads"
    data = base / "MURA-v1.1"
    for split, studies in MURA_IMAGES.items():
        image_lines, study_lines = [], []
        for part, patient, study, views in studies:
            rel = f"MURA-v1.1/{split}/{part}/{patient}/{study}"
            for v in range(1, views + 1):
                _grey(base / rel / f"image{v}.png", 40 * v)
                image_lines.append(f"{rel}/image{v}.png\n")
            study_lines.append(f"{rel}/,{1 if study.endswith('positive') else 0}\n")
        # As downloaded: no header rows
        (data / f"{split}_image_paths.csv").write_text("".join(image_lines))
        (data / f"{split}_labeled_studies.csv").write_text("".join(study_lines))
    return base


@pytest.fixture
def folder_tree(tmp_path):
    root = tmp_path / "implants"
    for i in range(6):
        _grey(root / "Depuy Corail" / f"a{i}.png", 10 + i)
        _grey(root / "Zimmer_M-L Taper" / "batch" / f"b{i}.png", 200 - i)
    _grey(root / "Zimmer_M-L Taper" / ".hidden.png")
    (root / "README.txt").write_text("a file at the top level is not a label")
    return root


# ------------------------------------------------------------------ adapters
@pytest.mark.parametrize(
    ("name", "expected"),
    [("Depuy Corail", "depuy-corail"), ("Zimmer_M-L Taper", "zimmer_m-l-taper"), ("  Loose ", "loose"),
     ("XR_WRIST", "xr_wrist"), ("Smith & Nephew / Polarstem", "smith-nephew-polarstem")],
)
def test_label_names_become_catalog_ids(name, expected):
    assert label_id(name) == expected


def test_folder_adapter_reads_one_subfolder_per_label(folder_tree):
    index = open_dataset(f"folder:{folder_tree}")
    assert index.catalog.ids == ["depuy-corail", "zimmer_m-l-taper"]
    assert index.counts() == {"depuy-corail": 6, "zimmer_m-l-taper": 6}  # hidden file and README skipped
    assert all(r.path.is_absolute() and r.path.is_file() for r in index.records)
    assert index.labels().tolist() == [0] * 6 + [1] * 6


def test_folder_labels_that_collide_as_ids_are_refused(tmp_path):
    _grey(tmp_path / "d" / "Loose" / "a.png")
    _grey(tmp_path / "d" / "loose" / "b.png")
    with pytest.raises(CatalogError, match="both map to catalog id 'loose'"):
        open_dataset(f"folder:{tmp_path / 'd'}")


def test_csv_manifest_reads_sites_patients_and_manufacturers(tmp_path):
    # Prepare
    a, b = _grey(tmp_path / "img" / "a.png"), _grey(tmp_path / "img" / "b.png")
    (tmp_path / "m.csv").write_text(
        "file,label,site,patient,manufacturer\n"
        f"img/a.png,Corail,Leeds,p1,DePuy\n{b},Polarstem,Oslo,p2,Smith & Nephew\n"
    )
    # Execute
    index = open_dataset(f"csv:{tmp_path / 'm.csv'}")
    # Assert
    assert [r.path for r in index.records] == [a.resolve(), b.resolve()]
    assert [(r.site, r.patient) for r in index.records] == [("Leeds", "p1"), ("Oslo", "p2")]
    assert index.manufacturers() == ["DePuy", "Smith & Nephew"]


@pytest.mark.parametrize(
    ("text", "match"),
    [("file,label\nimg/missing.png,A\n", r"1 row\(s\) name a file that does not exist \(rows 2\)"),
     ("file,label,scanner\nimg/a.png,A,x\n", "unknown column"),
     ("path,label\nimg/a.png,A\n", "columns file,label")],
)
def test_csv_manifest_problems_are_reported_by_row_not_path(tmp_path, text, match):
    _grey(tmp_path / "img" / "a.png")
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(InvalidInputError, match=match) as err:
        open_dataset(f"csv:{tmp_path / 'm.csv'}")
    assert "missing.png" not in str(err.value)


@pytest.mark.parametrize("sub", ["", "Data"])
def test_kaggle_hip_adapter_reads_control_and_loose_in_any_png_mode(kaggle_tree, sub):
    # Execute
    index = open_dataset(f"kaggle-hip:{kaggle_tree / sub}")
    # Assert
    assert index.counts() == {"control": 3, "loose": 2}
    modes = index.notes["png_colour_types"]
    assert modes["grey"] == 2 and modes["rgba"] == 1 and modes.get("palette", 0) + modes.get("rgb", 0) == 2
    for r in index.records:  # every mode decodes to one grey channel through cv2
        img = cv2.imread(str(r.path), cv2.IMREAD_GRAYSCALE)
        assert img is not None and img.ndim == 2 and img.shape == (8, 8)


def test_png_colour_type_reads_the_header(tmp_path):
    assert png_colour_type(_grey(tmp_path / "g.png")) == "grey"
    assert png_colour_type(_rgba(tmp_path / "r.png")) == "rgba"
    (tmp_path / "x.png").write_bytes(b"not a png")
    assert png_colour_type(tmp_path / "x.png") == "other"


def test_mura_adapter_reads_headerless_csvs_with_study_labels(mura_tree):
    # Execute
    index = open_dataset(f"mura:{mura_tree}")
    # Assert
    assert index.catalog.ids == ["abnormal", "normal"]
    assert len(index) == 11
    first = index.records[0]
    assert (first.label, first.patient, first.study, first.body_part, first.split) == (
        "abnormal", "patient00001", "XR_WRIST/patient00001/study1_positive", "wrist", "train")
    assert {r.split for r in index.records} == {"train", "valid"}
    assert index.notes["patients_in_both_splits"] == 0


@pytest.mark.parametrize("part", ["XR_WRIST", "wrist", "Wrist"])
def test_mura_body_part_filter(mura_tree, part):
    index = open_dataset(f"mura:{mura_tree / 'MURA-v1.1'}", body_part=part)
    assert {r.body_part for r in index.records} == {"wrist"} and len(index) == 6


def test_mura_unknown_body_part_lists_the_choices(mura_tree):
    with pytest.raises(InvalidInputError, match="choose from elbow, wrist"):
        open_dataset(f"mura:{mura_tree}", body_part="XR_KNEE")


def test_mura_test_split_is_the_official_valid_split_and_study_predictions_average_views(mura_tree):
    # Prepare
    index = open_dataset(f"mura:{mura_tree}", body_part="wrist")
    train, test = split_test(index)
    probs = np.array([[0.2, 0.8], [0.6, 0.4]])  # the two views of the one valid wrist study
    # Execute
    keys, mean, labels = aggregate_by(index, probs, key="study", rows=test)
    # Assert
    assert [index.records[i].split for i in test] == ["valid", "valid"]
    assert len(train) == 4
    assert keys == ["XR_WRIST/patient11185/study1_positive"]
    np.testing.assert_allclose(mean, [[0.4, 0.6]])
    assert labels.tolist() == [index.catalog.index_of("abnormal")]


def test_split_without_an_official_split_is_stratified_and_patient_disjoint(tmp_path):
    # Prepare: 10 patients x 2 images, two labels
    rows = ["file,label,patient"]
    for p in range(10):
        for v in range(2):
            _grey(tmp_path / f"p{p}_{v}.png")
            rows.append(f"p{p}_{v}.png,{'A' if p % 2 else 'B'},p{p}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    index = open_dataset(f"csv:{tmp_path / 'm.csv'}")
    # Execute
    train, test = split_test(index, fraction=0.2, seed=1)
    # Assert
    patients = lambda rows: {index.records[i].patient for i in rows}  # noqa: E731
    assert patients(train).isdisjoint(patients(test))
    assert len(patients(test)) == 2 and sorted(index.labels()[test].tolist()) == [0, 0, 1, 1]


@pytest.mark.parametrize("spec", ["mura", "nifti:/tmp", "folder:/no/such/folder"])
def test_bad_dataset_specs_are_refused(spec):
    with pytest.raises(ConfigError):
        open_dataset(spec)


# ------------------------------------------------------------------ federation folder
def _labels_csv(site: Path) -> list[dict[str, str]]:
    with (site / "labels.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_federation_folder_links_the_originals_in_the_runner_layout(folder_tree, tmp_path):
    # Execute
    out, part, index = build_federation(f"folder:{folder_tree}", tmp_path / "fed", "iid:sites=2", seed=0)
    # Assert
    assert Catalog.load(out / "catalog.json").ids == index.catalog.ids
    assert sorted(p.name for p in (out / "sites").iterdir()) == ["site-01", "site-02"]
    originals = {r.path for r in index.records}
    seen = []
    for site in [out / "sites" / "site-01", out / "sites" / "site-02", out / "test"]:
        rows = _labels_csv(site)
        assert rows and set(rows[0]) == {"file", "label"}
        toml = tomllib.loads((site / "site.toml").read_text())
        assert toml["site"]["name"] == site.name
        for row in rows:
            link = site / row["file"]
            assert link.is_symlink() and link.resolve() in originals  # a link, never a copy
            # sites keep the dataset's label names, mapped by site.toml; test/ is labelled by catalog id
            expected = row["label"] if site.name == "test" else index.label_ids[row["label"]]
            assert toml["labels"][row["label"]] == expected
            seen.append(link.resolve())
    assert sorted(seen) == sorted(originals)  # every image exactly once across sites and test
    assert {s: len(i) for s, i in part.sites.items()} == {"site-01": 5, "site-02": 5}
    assert {r["label"] for r in _labels_csv(out / "sites" / "site-01")} <= {"Depuy Corail", "Zimmer_M-L Taper"}
    assert {r["label"] for r in _labels_csv(out / "test")} == {"depuy-corail", "zimmer_m-l-taper"}


def test_federation_folder_opens_in_the_runner_and_refuses_to_overwrite(folder_tree, tmp_path):
    from simulations.federation import Federation

    out, _, _ = build_federation(f"folder:{folder_tree}", tmp_path / "fed", "dirichlet:sites=2,alpha=1")
    fed = Federation.open(out)
    assert list(fed.site_dirs) == ["hospital-01", "hospital-02"] and fed.test_dir == out / "test"
    assert set(fed.kinds().values()) == {"hospital"}
    with pytest.raises(ConfigError, match="already holds a federation"):
        build_federation(f"folder:{folder_tree}", out, "iid:sites=2")
    build_federation(f"folder:{folder_tree}", out, "iid:sites=3", overwrite=True)
    assert len(Federation.open(out).site_dirs) == 3


def test_mura_federation_keeps_patients_whole_and_writes_study_keys_for_the_test_set(mura_tree, tmp_path):
    # Execute
    out, part, index = build_federation(f"mura:{mura_tree}", tmp_path / "fed", "iid:sites=2", seed=0)
    # Assert
    patients = [{index.records[i].patient for i in rows} for rows in part.sites.values()]
    assert patients[0].isdisjoint(patients[1])
    with (out / "test" / "studies.csv").open(newline="") as fh:
        studies = list(csv.DictReader(fh))
    assert [s["body_part"] for s in studies] == ["wrist", "wrist", "elbow"]
    assert len(_labels_csv(out / "test")) == 3
    assert not (out / "sites" / "site-01" / "studies.csv").exists()


def test_study_level_scores_from_the_federation_folder(mura_tree, tmp_path):
    # Prepare: what the runner has after evaluating test/: files, per-image probabilities, labels
    out, _, _ = build_federation(f"mura:{mura_tree}", tmp_path / "fed", "iid:sites=2")
    files = [r["file"] for r in _labels_csv(out / "test")]
    probs = np.array([[0.1, 0.9], [0.5, 0.5], [0.7, 0.3]])
    # Execute
    studies = read_studies(out / "test")
    keys, mean, labels = average_by_key([studies[f][0] for f in files], probs, np.array([0, 0, 1]))
    # Assert: the two wrist views average into one study
    assert keys == ["XR_WRIST/patient11185/study1_positive", "XR_ELBOW/patient11186/study1_negative"]
    np.testing.assert_allclose(mean, [[0.3, 0.7], [0.7, 0.3]])
    assert labels.tolist() == [0, 1]
