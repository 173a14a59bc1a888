"""A real simulated federation (Flower simulation engine on Ray) on generated smoke data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from simulations.runner import SimOptions, run

pytestmark = pytest.mark.slow


def _run(tmp_path_factory, **overrides):
    out = tmp_path_factory.mktemp("run")
    mp = pytest.MonkeyPatch()
    mp.setenv("IMPLANTFL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    try:
        results = run(SimOptions(preset="smoke", overrides=overrides, out=out, progress=False, baseline=False))
    finally:
        mp.undo()
    return out, results


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """3 sites, 2 rounds, DP-SGD at every site."""
    return _run(tmp_path_factory, **{"num-server-rounds": 2})


@pytest.fixture(scope="module")
def smoke_run_again(tmp_path_factory):
    """The same run config as ``smoke_run``, run a second time."""
    return _run(tmp_path_factory, **{"num-server-rounds": 2})


@pytest.fixture(scope="module")
def plain_runs(tmp_path_factory):
    """Two runs without DP and the same config."""
    overrides = {"num-server-rounds": 1, "local-epochs": 1, "dp": False}
    return _run(tmp_path_factory, **overrides), _run(tmp_path_factory, **overrides)


def _weights(out):
    import torch

    return {k: v.numpy() for k, v in torch.load(out / "release" / "model.pt", weights_only=True).items()}


@pytest.fixture(scope="module")
def learning_run(tmp_path_factory):
    """3 sites, 3 rounds of 5 local epochs without DP: enough to see the global model learn."""
    return _run(tmp_path_factory, **{"num-server-rounds": 3, "local-epochs": 5, "dp": False})


def test_global_model_clearly_beats_chance(learning_run):
    _, results = learning_run
    n_classes = len(results["final"]["per_class"])
    assert results["final"]["accuracy"] > 2.0 / n_classes
    assert "privacy" not in results


def test_three_site_simulation_writes_the_run_directory(smoke_run):
    out, results = smoke_run
    # results.json follows the design's schema.
    on_disk = json.loads((out / "results.json").read_text())
    assert {"config", "rounds", "final", "privacy", "timing"} <= set(on_disk)
    assert [r["round"] for r in on_disk["rounds"]] == [1, 2]
    assert len(on_disk["rounds"][0]["sites"]) == 3
    assert on_disk["timing"]["wall_s"] > 0
    assert (out / "release" / "model.pt").exists() and (out / "release" / "catalog.json").exists()
    assert (out / "plots" / "accuracy.png").stat().st_size > 1000
    assert (out / "report.md").exists()


def test_every_site_spent_privacy_and_it_grows_per_round(smoke_run):
    _, results = smoke_run
    for site, p in results["privacy"].items():
        eps = [r["sites"][site]["epsilon"] for r in results["rounds"]]
        assert eps == sorted(eps) and eps[0] > 0, site
        assert p["epsilon"] == pytest.approx(eps[-1])
        assert p["steps"] > 0 and p["noise_multiplier"] > 0


def test_release_loads_into_a_plain_model(smoke_run):
    from server.release import load_release

    out, _ = smoke_run
    rel = load_release(out / "release")
    assert len(rel.catalog) == len(json.loads((out / "release" / "catalog.json").read_text())["classes"])


def test_two_dp_runs_with_the_same_config_end_with_different_weights(smoke_run, smoke_run_again):
    # The sites' DP noise comes from their own OS entropy: the server's config does not fix it
    a, b = _weights(smoke_run[0]), _weights(smoke_run_again[0])
    assert a.keys() == b.keys()
    assert any(not np.array_equal(a[k], b[k]) for k in a)
    assert smoke_run[1]["dp_noise"]["source"] == "site OS entropy"
    assert smoke_run[1]["dp_noise"]["protects_against_server"] is True


def test_two_runs_without_dp_and_the_same_config_end_bit_identical(plain_runs):
    (out_a, res_a), (out_b, _) = plain_runs
    a, b = _weights(out_a), _weights(out_b)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert res_a["dp_noise"]["source"] == "none"
