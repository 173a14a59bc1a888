"""A site's task on the default route: the encoder check, the dp-stats release and its ledger row."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.config import RunConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from client.site.config import SiteConfig
    from common.catalog import Catalog, ImplantClass
    from common.encoders import BackboneConfig, EncoderCard, FrozenEncoder, save_encoder
    from common.preprocess_params import PreprocessParams
    from tests.unit.client.conftest import draw_radiograph, write_labels, write_png

    root = tmp_path_factory.mktemp("head-site")
    (root / "site" / "images").mkdir(parents=True)
    rows = [(f"images/{k}.png", "stem-a" if k < 4 else "stem-b") for k in range(8)]
    for k, (name, _) in enumerate(rows):
        write_png(root / "site" / name, draw_radiograph(400 + k).image)
    write_labels(root / "site", rows)
    catalog = Catalog("test", "1", tuple(ImplantClass(f"stem-{k}", "Maker", f"Stem {k}") for k in "abc"))
    catalog.save(root / "catalog.json")
    torch.manual_seed(0)
    card = save_encoder(FrozenEncoder(BackboneConfig(image_size=32, dim=8, channels=(8, 8, 8, 8))), root / "encoder",
                        EncoderCard("", 0, "", {}, "", {}, {}))

    def make(name="hosp-x", **extra):  # noqa: ANN001, ANN003, ANN202
        return SiteConfig(name=name, data_dir=root / "site", catalog_path=root / "catalog.json",
                           cache_dir=root / "cache", state_dir=root / "state" / name,
                           preprocess=PreprocessParams(image_size=32), device="cpu", encoder_path=root / "encoder",
                           **extra)

    return make, catalog, card.sha256


def _train(runtime, catalog, encoder, **overrides):  # noqa: ANN001, ANN202
    from client import task
    from common.encoders import load_encoder
    from server.app import initial_arrays

    values = {"image_size": 32, "val_fraction": 0.0, "head": "dp-stats", "num_server_rounds": 1,
              "target_epsilon": 4.0, "encoder": encoder, **overrides}
    cfg = RunConfig(**values)
    arrays = initial_arrays(cfg, catalog, load_encoder(runtime.encoder_path))
    config = {**cfg.to_flower(), "server-round": 1, "catalog-fingerprint": catalog.fingerprint()}
    return task.train(runtime, arrays, config, run_id=1)


def test_a_site_releases_noised_statistics_once_and_its_ledger_says_so(site):
    # Prepare / Execute
    make, catalog, sha = site
    runtime = make("release-site")
    reply = _train(runtime, catalog, sha)
    # Assert: the release is the class sums (cosine solver), 3 classes x 8 dims, noised
    assert reply.config_records["site"]["status"] == "ok" and reply.config_records["site"]["payload"] == "dp-stats"
    record = reply.array_records["arrays"]
    assert list(record.keys()) == ["sums"] and record["sums"].numpy().shape == (3, 8)
    assert np.abs(record["sums"].numpy()[2]).max() > 0  # noise also for the class this site does not hold
    from client.training.privacy import PrivacyLedger

    [row] = PrivacyLedger(runtime.ledger_path).rows()
    assert (row.sample_rate, row.steps) == (1.0, 1)
    assert reply.metric_records["metrics"]["epsilon"] == pytest.approx(row.epsilon_cumulative)
    assert 3.9 < row.epsilon_cumulative <= 4.0


def test_the_one_shot_epsilon_agrees_with_an_independent_accountant(site):
    import dp_accounting
    from dp_accounting import rdp

    make, catalog, sha = site
    runtime = make("accounted-site")
    _train(runtime, catalog, sha)
    from client.training.privacy import PrivacyLedger

    [row] = PrivacyLedger(runtime.ledger_path).rows()
    ref = rdp.RdpAccountant()
    ref.compose(dp_accounting.GaussianDpEvent(row.noise_multiplier))
    assert row.epsilon_cumulative == pytest.approx(ref.get_epsilon(1e-5), rel=0.01)


def test_a_site_refuses_an_encoder_it_does_not_have(site):
    make, catalog, sha = site
    other = "0" * 64
    from client import task
    from server.app import initial_arrays

    cfg = RunConfig(image_size=32, val_fraction=0.0, head="dp-stats", num_server_rounds=1, encoder=other)
    from common.encoders import load_encoder

    arrays = initial_arrays(cfg.replace(encoder=sha), catalog, load_encoder(make().encoder_path))
    config = {**cfg.to_flower(), "server-round": 1, "catalog-fingerprint": catalog.fingerprint()}
    reply = task.train(make("mismatch-site"), arrays, config, run_id=1)
    status = reply.config_records["site"]
    assert status["status"] == "error" and "encoder mismatch" in status["reason"]
    assert not reply.array_records


def test_a_site_policy_can_pin_the_encoders_it_accepts(site):
    make, catalog, sha = site
    pinned = make("pinned-site", policy={"allowed-encoders": ["f" * 64]})
    reply = _train(pinned, catalog, sha)
    assert reply.config_records["site"]["status"] == "error"
    assert "allowed-encoders" in reply.config_records["site"]["reason"]
    allowed = make("allowed-site", policy={"allowed-encoders": [sha]})
    assert _train(allowed, catalog, sha).config_records["site"]["status"] == "ok"


def test_a_linear_head_trains_with_dp_sgd_on_the_features(site):
    make, catalog, sha = site
    reply = _train(make("linear-site"), catalog, sha, head="linear", num_server_rounds=2, batch_size=4,
                   learning_rate=0.5, optimizer="sgd")
    assert reply.config_records["site"]["status"] == "ok"
    assert set(reply.array_records["arrays"].keys()) == {"weight", "bias"}
    assert reply.metric_records["metrics"]["dp-steps"] >= 1


def test_dp_stats_then_linear_rounds_spend_the_target_together(site):
    # Prepare: a run whose round 1 releases statistics (half the budget) and whose rounds 2-3 train DP-SGD
    make, catalog, sha = site
    runtime = make("combined-site")
    overrides = {"head": "dp-stats+linear", "num_server_rounds": 3, "batch_size": 4, "learning_rate": 0.5,
                 "optimizer": "sgd", "dp_stats_share": 0.5}
    from client.training.privacy import PrivacyLedger
    from client.training.train import TrainSettings  # noqa: F401 - the site's DP-SGD path

    # Execute: the three rounds as the server would send them (the head stays the zero head here)
    replies = []
    for rnd in (1, 2, 3):
        from client import task
        from common.encoders import load_encoder
        from server.app import initial_arrays

        cfg = RunConfig(image_size=32, val_fraction=0.0, target_epsilon=4.0, encoder=sha,
                        **{k.replace("-", "_"): v for k, v in overrides.items()})
        arrays = initial_arrays(cfg, catalog, load_encoder(runtime.encoder_path))
        config = {**cfg.to_flower(), "server-round": rnd, "catalog-fingerprint": catalog.fingerprint()}
        replies.append(task.train(runtime, arrays, config, run_id=7))
    # Assert: a release, then two DP-SGD rounds; the three rows compose to the target, not beyond
    assert replies[0].config_records["site"]["payload"] == "dp-stats"
    assert all("payload" not in r.config_records["site"] for r in replies[1:])
    rows = PrivacyLedger(runtime.ledger_path).rows()
    assert [(r.sample_rate == 1.0, r.steps == 1) for r in rows][0] == (True, True)
    assert 3.9 < rows[-1].epsilon_cumulative <= 4.0
    assert 1.9 < rows[0].epsilon_cumulative <= 2.0


def test_finetune_trains_the_encoder_and_the_head_with_dp(site):
    make, catalog, sha = site
    reply = _train(make("finetune-site"), catalog, sha, head="finetune", num_server_rounds=1, batch_size=4,
                   learning_rate=0.01, optimizer="sgd")
    assert reply.config_records["site"]["status"] == "ok"
    keys = set(reply.array_records["arrays"].keys())
    assert any(k.startswith("encoder.backbone.") for k in keys) and {"head.weight", "head.bias"} <= keys
