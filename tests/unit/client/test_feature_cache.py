"""A site's public-encoder features are cached: unchanged files are never encoded again."""

from __future__ import annotations

import os

import pytest
import torch

from client.data.features import site_features
from client.data.site_data import load_site
from common.catalog import Catalog, ImplantClass
from common.encoders import BackboneConfig, EncoderCard, FrozenEncoder, load_encoder, save_encoder
from common.preprocess_params import PreprocessParams
from tests.unit.client.conftest import draw_radiograph, write_labels, write_png

PARAMS = PreprocessParams(image_size=32)


@pytest.fixture
def site(tmp_path):
    (tmp_path / "site" / "images").mkdir(parents=True)
    rows = []
    for k in range(5):
        write_png(tmp_path / "site" / f"images/{k}.png", draw_radiograph(50 + k).image)
        rows.append((f"images/{k}.png", "a" if k % 2 else "b"))
    write_labels(tmp_path / "site", rows)
    torch.manual_seed(0)
    enc = FrozenEncoder(BackboneConfig(image_size=32, dim=8, channels=(8, 8, 8, 8)))
    save_encoder(enc, tmp_path / "enc", EncoderCard("", 0, "", {}, "", {}, {}))
    catalog = Catalog("t", "1", (ImplantClass("a", "M", "A"), ImplantClass("b", "M", "B")))
    return tmp_path, load_encoder(tmp_path / "enc"), catalog


def _features(root, enc, catalog):  # noqa: ANN001, ANN202
    data = load_site(root / "site", catalog=catalog, params=PARAMS, cache_dir=root / "cache", val_fraction=0.0)
    return data, site_features(data, enc, params=PARAMS, cache_dir=root / "cache")


def test_later_calls_encode_nothing_and_return_the_same_features(site):
    root, enc, catalog = site
    _, first = _features(root, enc, catalog)
    _, second = _features(root, enc, catalog)
    assert first.encoded == 5 and second.encoded == 0
    assert (first.f == second.f).all()


def test_a_changed_file_alone_is_encoded_again(site):
    root, enc, catalog = site
    _features(root, enc, catalog)
    path = root / "site" / "images" / "2.png"
    write_png(path, draw_radiograph(99).image)
    os.utime(path, ns=(1, 1))
    _, again = _features(root, enc, catalog)
    assert again.encoded == 1


def test_another_encoder_never_reuses_the_cached_features(site):
    root, enc, catalog = site
    _features(root, enc, catalog)
    torch.manual_seed(1)
    save_encoder(FrozenEncoder(BackboneConfig(image_size=32, dim=8, channels=(8, 8, 8, 8))), root / "enc2",
                 EncoderCard("", 0, "", {}, "", {}, {}))
    data, other = _features(root, load_encoder(root / "enc2"), catalog)
    assert other.encoded == len(data.y)


def test_the_cache_holds_no_path_or_file_name(site):
    root, enc, catalog = site
    _features(root, enc, catalog)
    blobs = b"".join(p.read_bytes() for p in (root / "cache").glob("features-*"))
    assert b"images/" not in blobs and b".png" not in blobs and str(root).encode() not in blobs
