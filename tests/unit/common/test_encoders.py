"""Public encoders: named by the hash of their file, frozen, unit-norm features, the public projection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.encoders import BackboneConfig, EncoderCard, FrozenEncoder, load_encoder, save_encoder
from common.encoders.frozen import fit_projection
from common.errors import ConfigError, InvalidInputError


def _encoder(seed: int = 0) -> FrozenEncoder:
    torch.manual_seed(seed)
    return FrozenEncoder(BackboneConfig(image_size=32, dim=16, channels=(8, 8, 8, 8)))


def _card() -> EncoderCard:
    return EncoderCard(arch="", dim=0, sha256="", source={"kind": "test"}, excludes="nothing", preprocess={}, config={})


def test_saved_encoder_is_named_by_its_file_hash_and_loads_identically(tmp_path):
    enc = _encoder()
    card = save_encoder(enc, tmp_path / "e", _card())
    loaded = load_encoder(tmp_path / "e", expected_sha256=card.sha256)
    x = torch.rand(3, 1, 32, 32)
    assert loaded.sha256 == card.sha256 and len(card.sha256) == 64
    torch.testing.assert_close(loaded(x), enc(x))


def test_a_wrong_hash_is_refused_never_a_silent_fallback(tmp_path):
    save_encoder(_encoder(0), tmp_path / "a", _card())
    other = save_encoder(_encoder(1), tmp_path / "b", _card())
    with pytest.raises(ConfigError, match="encoder mismatch"):
        load_encoder(tmp_path / "a", expected_sha256=other.sha256)


def test_a_tampered_or_truncated_file_is_refused(tmp_path):
    card = save_encoder(_encoder(), tmp_path / "e", _card())
    path = tmp_path / "e" / "encoder.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match="mismatch"):
        load_encoder(tmp_path / "e", expected_sha256=card.sha256)
    with pytest.raises(InvalidInputError, match="cannot be loaded"):
        load_encoder(tmp_path / "e")


def test_features_are_unit_norm_and_the_encoder_stays_frozen():
    enc = _encoder()
    enc.train()  # a frozen encoder ignores training mode
    f = enc(torch.rand(5, 1, 32, 32))
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    torch.testing.assert_close(f.norm(dim=1), torch.ones(5))


def test_the_unit_norm_features_are_the_projected_ones_scaled():
    enc = _encoder()
    rng = np.random.default_rng(0)
    enc.set_projection(rng.normal(0, 0.1, enc.raw_dim), rng.normal(0, 1.0, (enc.raw_dim, 5)))
    x = np.random.default_rng(1).random((4, 1, 32, 32), dtype=np.float32)
    r = enc.encode(x, projected=True)
    f = enc.encode(x)
    assert r.shape == f.shape == (4, 5) and enc.encode(x, raw=True).shape == (4, enc.raw_dim)
    np.testing.assert_allclose(f, r / np.linalg.norm(r, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.linalg.norm(r, axis=1), 1.0)  # the norm the open-set distance reads


def test_the_discriminant_projection_whitens_within_class_and_keeps_the_asked_dimension():
    # Prepare: 40 public classes in 12 raw dimensions
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 12)) * 3
    y = np.repeat(np.arange(40), 10)
    raw = centres[y] + rng.normal(size=(400, 12))
    # Execute
    mean, proj, info = fit_projection(raw, y, dim=6, shrinkage=0.0)
    z = (raw - mean) @ proj
    within = np.concatenate([z[y == c] - z[y == c].mean(0) for c in range(40)])
    # Assert: within-class covariance is the identity in the projected space
    assert proj.shape == (12, 6) and info["kind"] == "discriminant"
    np.testing.assert_allclose(within.T @ within / (400 - 40), np.eye(6), atol=1e-6)


def test_too_few_public_classes_fall_back_to_standardisation():
    raw = np.random.default_rng(0).normal(size=(50, 12))
    _, proj, info = fit_projection(raw, np.zeros(50), dim=16)
    assert info["kind"] == "standardise" and proj.shape == (12, 12)
