"""load_site: tensors, labels, split, QC counts, cache reuse, and no patient data anywhere."""

from __future__ import annotations

import logging
import os

import cv2
import numpy as np
import pytest
from conftest import CANARY, draw_radiograph, huge_png_header, write_dicom, write_labels, write_png

import client.data.site_data as site_data
from client.data.site_data import in_val_split, load_site
from common.errors import ConfigError
from common.preprocess_params import PreprocessParams

PARAMS = PreprocessParams(image_size=32)


@pytest.fixture
def decode_counter(monkeypatch):
    calls = []
    real = site_data.read_image

    def counting(path, params):
        calls.append(1)
        return real(path, params)

    monkeypatch.setattr(site_data, "read_image", counting)
    return calls


def test_load_site_tensors_labels_and_report(small_site, catalog):
    # Execute
    data = load_site(small_site, catalog=catalog, params=PARAMS)
    # Assert
    assert data.x.shape == (6, 1, 32, 32) and data.x.dtype == np.float32
    assert data.y.dtype == np.int64 and sorted(data.y.tolist()) == [0, 0, 0, 1, 1, 1]
    assert data.is_val.dtype == bool and data.is_val.shape == (6,)
    assert 0.0 <= data.x.min() and data.x.max() <= 1.0
    assert data.report.to_dict()["classes"] == {"stem-a": 3, "stem-b": 3}
    assert data.report.phi_findings["patient-name-present"] == 3  # the three DICOMs
    (xt, yt), (xv, yv) = data.train(), data.val()
    assert len(xt) + len(xv) == 6 and len(yt) == len(xt) and len(yv) == len(xv)


def test_identity_labels_without_site_toml(small_site, catalog):
    # Prepare: local labels that already are catalog ids, no site.toml
    (small_site / "site.toml").unlink()
    rows = (small_site / "labels.csv").read_text().replace("Local A", "stem-c").replace("Local B", "stem-a")
    (small_site / "labels.csv").write_text(rows)
    # Execute
    data = load_site(small_site, catalog=catalog, params=PARAMS)
    # Assert
    assert data.report.classes == {"stem-c": 3, "stem-a": 3}


def test_unknown_label_is_a_config_error_before_any_decoding(small_site, catalog, decode_counter):
    # Prepare
    (small_site / "site.toml").unlink()
    # Execute
    with pytest.raises(ConfigError) as info:
        load_site(small_site, catalog=catalog, params=PARAMS)
    # Assert
    assert "'Local A'" in str(info.value) and "'Local B'" in str(info.value) and "img" not in str(info.value)
    assert decode_counter == []


def _build_bad_site(tmp_path):
    """Good images mixed with one bad file per reason; every name carries the canary."""
    site = tmp_path / "site"
    (site / "images").mkdir(parents=True)
    good = [f"images/{CANARY}_good{k}.dcm" for k in range(3)]
    for k, rel in enumerate(good):
        write_dicom(site / rel, draw_radiograph(50 + k).image, monochrome1=k == 1)
    bad = {
        "unreadable": [],
        "too-small": [],
        "too-large": [],
        "blank-or-saturated": [],
        "no-implant": [],
        "foreign-object": [],
    }

    def add(reason, name, make):
        rel = f"images/{CANARY}_{name}"
        make(site / rel)
        bad[reason].append(rel)

    add("unreadable", "zero.dcm", lambda p: p.write_bytes(b""))
    add("unreadable", "short.dcm", lambda p: write_dicom(p, draw_radiograph(60).image, truncate=500))
    add("unreadable", "text.png", lambda p: p.write_text(CANARY))
    add("unreadable", "bad.jpg", lambda p: p.write_bytes(b"\xff\xd8\xff" + b"\x00" * 64))
    add("unreadable", "missing.dcm", lambda p: None)
    add("too-small", "tiny.png", lambda p: cv2.imwrite(str(p), np.full((1, 1), 200, np.uint8)))
    add("too-large", "huge.png", lambda p: p.write_bytes(huge_png_header(20_000)))
    add("blank-or-saturated", "blank.dcm", lambda p: write_dicom(p, np.full((200, 160), 0.3, np.float32)))
    add("no-implant", "bone.png", lambda p: write_png(p, draw_radiograph(61, implant=False).image))
    add("foreign-object", "coin.dcm", lambda p: write_dicom(p, draw_radiograph(62, foreign=True).image))
    write_labels(site, [(rel, "stem-a") for rel in good + [r for rels in bad.values() for r in rels]])
    return site, {k: len(v) for k, v in bad.items()}


def test_bad_files_are_counted_by_reason_and_the_rest_processed(tmp_path, catalog, caplog):
    # Prepare
    site, expected = _build_bad_site(tmp_path)
    caplog.set_level(logging.DEBUG)
    # Execute
    data = load_site(site, catalog=catalog, params=PARAMS, cache_dir=tmp_path / "cache")
    # Assert
    assert data.report.accepted == 3 and len(data.y) == 3
    assert data.report.rejected == expected
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("rejected f:") for m in messages)
    assert not any("CANARY" in m or str(tmp_path) in m or ".dcm" in m for m in messages)


def test_accepted_files_are_listed_in_array_order_and_rejects_are_not(tmp_path, catalog):
    # Prepare
    site, _ = _build_bad_site(tmp_path)
    # Execute
    data = load_site(site, catalog=catalog, params=PARAMS, cache_dir=tmp_path / "cache")
    again = load_site(site, catalog=catalog, params=PARAMS, cache_dir=tmp_path / "cache")  # from the cache
    # Assert
    expected = tuple(f"images/{CANARY}_good{k}.dcm" for k in range(3))
    assert data.files == again.files == expected and len(data.files) == len(data.y)


def test_cache_holds_no_patient_field_and_no_path(tmp_path, catalog):
    # Prepare
    site, _ = _build_bad_site(tmp_path)
    cache = tmp_path / "cache"
    # Execute
    load_site(site, catalog=catalog, params=PARAMS, cache_dir=cache)
    # Assert
    files = [p for p in cache.rglob("*") if p.is_file()]
    assert len(files) >= 3
    for p in files:
        data = p.read_bytes()
        assert b"CANARY" not in data and b"images" not in data and b".dcm" not in data
        assert str(tmp_path).encode() not in data


def test_cache_reuse_does_no_decoding(small_site, catalog, tmp_path, decode_counter):
    # Prepare
    cache = tmp_path / "cache"
    first = load_site(small_site, catalog=catalog, params=PARAMS, cache_dir=cache)
    assert len(decode_counter) == 6 and first.decoded == 6
    # Execute
    second = load_site(small_site, catalog=catalog, params=PARAMS, cache_dir=cache)
    # Assert
    assert len(decode_counter) == 6 and second.decoded == 0 and second.cached == 6
    assert np.array_equal(first.x, second.x) and np.array_equal(first.y, second.y)
    assert np.array_equal(first.is_val, second.is_val) and first.report == second.report


def test_cache_redoes_only_changed_files_and_other_params(small_site, catalog, tmp_path, decode_counter):
    # Prepare
    cache = tmp_path / "cache"
    load_site(small_site, catalog=catalog, params=PARAMS, cache_dir=cache)
    target = small_site / "images/img3.png"
    write_png(target, draw_radiograph(999).image, bits=16)
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    decode_counter.clear()
    # Execute
    changed = load_site(small_site, catalog=catalog, params=PARAMS, cache_dir=cache)
    n_changed = len(decode_counter)
    other = load_site(small_site, catalog=catalog, params=PreprocessParams(image_size=40), cache_dir=cache)
    # Assert
    assert n_changed == 1 and changed.decoded == 1 and changed.cached == 5
    assert len(decode_counter) == 7 and other.x.shape == (6, 1, 40, 40)


def test_relabelling_reuses_the_cache(small_site, catalog, tmp_path, decode_counter):
    # Prepare
    cache = tmp_path / "cache"
    load_site(small_site, catalog=catalog, params=PARAMS, cache_dir=cache)
    decode_counter.clear()
    # Execute
    data = load_site(small_site, catalog=catalog, params=PARAMS, cache_dir=cache,
                     label_map={"Local A": "stem-c", "Local B": "stem-c"})
    # Assert
    assert decode_counter == [] and data.report.classes == {"stem-c": 6}


def test_workers_give_the_same_result(small_site, catalog):
    one = load_site(small_site, catalog=catalog, params=PARAMS, workers=1)
    two = load_site(small_site, catalog=catalog, params=PARAMS, workers=2)
    assert np.array_equal(one.x, two.x) and np.array_equal(one.y, two.y) and one.report == two.report


def test_by_default_many_files_are_decoded_on_every_core_and_give_the_serial_result(small_site, catalog,
                                                                                   monkeypatch):
    import common.parallel as parallel

    # Prepare: a threshold the small site passes, and a record of the pool sizes asked for
    monkeypatch.setattr(parallel, "PARALLEL_MIN_JOBS", 2)
    monkeypatch.setattr(parallel, "available_cores", lambda: 2)
    asked = []
    real = parallel.default_workers
    monkeypatch.setattr("client.data.site_data.default_workers", lambda n: asked.append(real(n)) or asked[-1])
    # Execute
    serial = load_site(small_site, catalog=catalog, params=PARAMS, workers=1)
    auto = load_site(small_site, catalog=catalog, params=PARAMS)
    # Assert
    assert asked == [2]
    assert np.array_equal(serial.x, auto.x) and np.array_equal(serial.y, auto.y) and serial.report == auto.report


def test_default_workers_are_every_core_for_many_jobs_and_one_for_few(monkeypatch):
    import common.parallel as parallel

    monkeypatch.setattr(parallel, "available_cores", lambda: 6)
    assert parallel.default_workers(parallel.PARALLEL_MIN_JOBS - 1) == 1
    assert parallel.default_workers(parallel.PARALLEL_MIN_JOBS) == 6


@pytest.mark.parametrize(("fraction", "expected"), [(0.0, 0), (1.0, 6)])
def test_val_fraction_extremes(small_site, catalog, fraction, expected):
    data = load_site(small_site, catalog=catalog, params=PARAMS, val_fraction=fraction)
    assert int(data.is_val.sum()) == expected


def test_validation_split_is_a_stable_hash():
    rels = [f"images/img_{k:05d}.dcm" for k in range(2000)]
    share = np.mean([in_val_split(r, 0.2) for r in rels])
    assert 0.17 < share < 0.23
    assert [in_val_split(r, 0.2) for r in rels] == [in_val_split(r, 0.2) for r in rels]


@pytest.mark.parametrize("kwargs", [{"val_fraction": 1.5}, {"workers": 0}])
def test_bad_arguments(small_site, catalog, kwargs):
    with pytest.raises(ConfigError):
        load_site(small_site, catalog=catalog, params=PARAMS, **kwargs)


def test_generated_sites_load_with_their_site_toml(synth_smoke):
    # Prepare
    from common.catalog import Catalog

    catalog = Catalog.load(synth_smoke / "catalog.json")
    site = sorted((synth_smoke / "sites").iterdir())[0]
    # Execute
    data = load_site(site, catalog=catalog, params=PARAMS)
    # Assert
    total = data.report.total
    assert total == len((site / "labels.csv").read_text().strip().splitlines()) - 1
    assert data.report.accepted >= 0.9 * total
