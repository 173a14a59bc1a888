"""A real simulated federation (Flower simulation engine on Ray) on generated smoke data.

The default route (a dp-stats head on the session's public encoder) and the study CNN end to end.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from simulations.runner import SimOptions, run

pytestmark = pytest.mark.slow


def _run(tmp_path_factory, encoder=None, baseline=False, env=None, ray_address=None, **overrides):  # noqa: ANN001, ANN202
    out = tmp_path_factory.mktemp("run")
    mp = pytest.MonkeyPatch()
    mp.setenv("IMPLANTFL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    for key, value in (env or {}).items():
        mp.setenv(key, value)
    try:
        results = run(SimOptions(preset="smoke", overrides=overrides, out=out, progress=False, baseline=baseline,
                                 encoder=encoder, ray_address=ray_address))
    finally:
        mp.undo()
    return out, results


@pytest.fixture(scope="module")
def stale_ray_tmpdir():
    """A Ray temp dir holding the cluster file ``ray start`` leaves, naming a head that is gone."""
    import shutil
    import socket
    import tempfile

    with socket.socket() as s:  # a port nothing listens on any more
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    root = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must stay under 108 bytes
    (root / "ray").mkdir()
    (root / "ray" / "ray_current_cluster").write_text(dead + "\n")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, public_encoder):
    """3 sites, the default route: each releases DP class statistics of its encoder features once."""
    return _run(tmp_path_factory, public_encoder, baseline=True)


@pytest.fixture(scope="module")
def smoke_run_again(tmp_path_factory, public_encoder):
    """The same run config as ``smoke_run``, run a second time."""
    return _run(tmp_path_factory, public_encoder)


@pytest.fixture(scope="module")
def plain_runs(tmp_path_factory, public_encoder, stale_ray_tmpdir):
    """Two runs without DP and the same config; the second with a dead cluster's address file left on the machine."""
    return (_run(tmp_path_factory, public_encoder, dp=False),
            _run(tmp_path_factory, public_encoder, dp=False, env={"RAY_TMPDIR": str(stale_ray_tmpdir)}))


def _weights(out):
    import torch

    return {k: v.numpy() for k, v in torch.load(out / "release" / "model.pt", weights_only=True).items()}


@pytest.fixture(scope="module")
def learning_run(tmp_path_factory):
    """The study CNN end to end: 3 sites, 3 rounds of 5 local epochs without DP, enough to see it learn."""
    return _run(tmp_path_factory, **{"head": "none", "num-server-rounds": 3, "local-epochs": 5, "dp": False})


def test_the_cnn_federation_without_dp_clearly_beats_chance(learning_run):
    _, results = learning_run
    n_classes = len(results["final"]["per_class"])
    assert results["final"]["accuracy"] > 2.0 / n_classes
    assert "privacy" not in results


def test_the_smoke_federation_under_dp_beats_chance_three_times(smoke_run):
    _, results = smoke_run
    n_classes = len(results["final"]["per_class"])
    assert results["config"]["head"] == "dp-stats" and results["config"]["dp"] is True
    assert max(p["epsilon"] for p in results["privacy"].values()) <= 8.0
    assert results["final"]["accuracy"] >= 3.0 / n_classes


def test_a_run_with_a_head_reports_every_baseline_on_the_same_test_set(smoke_run):
    _, results = smoke_run
    base = results["baseline"]
    assert {"pooled", "pooled_cnn", "pooled_dp", "single_site"} <= set(base)
    assert base["pooled"]["dp"] is False and base["pooled_cnn"]["dp"] is False and base["pooled_dp"]["dp"] is True
    assert 0 < base["pooled_dp"]["epsilon"] <= 8.0
    assert set(base["single_site"]) == set(results["sites"])
    tested = results["final"]["examples"]
    assert all(b["final"]["examples"] == tested for k, b in base.items() if k != "single_site")
    assert results["encoder"]["sha256"] == results["config"]["encoder"]


def test_three_site_simulation_writes_the_run_directory(smoke_run):
    out, results = smoke_run
    # results.json follows the design's schema.
    on_disk = json.loads((out / "results.json").read_text())
    assert {"config", "rounds", "final", "privacy", "timing"} <= set(on_disk)
    assert [r["round"] for r in on_disk["rounds"]] == [1]
    assert len(on_disk["rounds"][0]["sites"]) == 3
    assert on_disk["timing"]["wall_s"] > 0
    assert (out / "release" / "model.pt").exists() and (out / "release" / "catalog.json").exists()
    assert (out / "plots" / "accuracy.png").stat().st_size > 1000
    assert (out / "report.md").exists()


def test_every_site_spent_its_one_release_and_no_more(smoke_run):
    _, results = smoke_run
    for site, p in results["privacy"].items():
        eps = [r["sites"][site]["epsilon"] for r in results["rounds"]]
        assert len(eps) == 1 and 7.5 < eps[0] <= 8.0, site
        assert p["epsilon"] == pytest.approx(eps[-1])
        assert p["steps"] == 1 and p["sample_rate"] == 1.0 and p["noise_multiplier"] > 0


def test_the_release_on_test_images_scores_what_the_run_reported(smoke_run):
    # Prepare: the release (encoder file + head) and the run's test images, preprocessed as the release says
    import torch

    from client.data.site_data import load_site
    from common.release_files import load_release

    out, results = smoke_run
    rel = load_release(out / "release")
    test = load_site(Path(results["config"]["data"]) / "test", catalog=rel.catalog, params=rel.preprocess,
                     val_fraction=0.0)
    # Execute: the released image model, end to end on the images
    with torch.no_grad():
        predicted = rel.model(torch.from_numpy(test.x)).argmax(1).numpy()
    # Assert: the same top-1 as the run's own evaluation of its global head on the test features
    assert rel.info["model"] == "encoder+head" and rel.info["encoder_sha256"] == results["config"]["encoder"]
    assert float((predicted == test.y).mean()) == pytest.approx(results["final"]["accuracy"], abs=1e-9)


def test_the_release_flags_unknown_by_the_distance_to_the_class_rays(smoke_run):
    # calibrated as common.open_set describes: on the validation images' projected features, above the threshold
    from common.release_files import load_release

    out, _ = smoke_run
    cal = load_release(out / "release").calibration
    assert cal.feature_metric == "ray-distance" and cal.feature_threshold > 0 and cal.unknown_threshold == 0.0
    assert cal.method.startswith("temperature-lbfgs+ray-distance") and cal.fitted_on >= 20


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


def test_a_cluster_left_on_the_machine_does_not_capture_a_plain_run(plain_runs):
    # the second plain run found a dead cluster's address file (stale_ray_tmpdir) and ran on its own instance
    (_, res_a), (_, res_b) = plain_runs
    assert res_a["config"]["execution"]["ray"] == res_b["config"]["execution"]["ray"] == "local"
    assert res_b["outcome"]["status"] == "completed"


@pytest.fixture(scope="module")
def two_node_cluster():
    """A real Ray cluster of two nodes on this machine (Ray's own test utility; its processes stopped by it)."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


def test_the_smoke_federation_on_a_two_node_cluster_matches_the_local_run(tmp_path_factory, public_encoder,
                                                                          plain_runs, two_node_cluster):
    # Execute: the same run config as the local plain runs, on the cluster named like RAY_ADDRESS would name it
    out, results = _run(tmp_path_factory, public_encoder, dp=False, ray_address=two_node_cluster.address)
    # Assert: it ran there (both nodes checked for the shared paths and the code), with the local run's result
    (local_out, local), _ = plain_runs
    execution = results["config"]["execution"]
    assert execution["ray"] == two_node_cluster.address and execution["nodes"] == 2 and execution["cpus"] == 2.0
    assert execution["nodes_checked"] == 2
    assert results["final"]["accuracy"] == local["final"]["accuracy"]
    a, b = _weights(out), _weights(local_out)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_a_crashed_simulation_runtime_ends_the_command_with_its_reason(tmp_path_factory, public_encoder, plain_runs):
    import subprocess
    import sys
    import time

    # Prepare: sites that ask for more CPUs than this machine has: Flower's engine cannot start one
    out = tmp_path_factory.mktemp("crash") / "run"
    cache = tmp_path_factory.getbasetemp() / "cache"  # the plain runs' data and caches
    cmd = [sys.executable, "-m", "simulations.cli", "run", "--preset", "smoke", "--no-dp", "--no-baseline",
           "--encoder", str(public_encoder), "--site-cpus", "64", "--out", str(out)]
    # Execute
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=Path(__file__).resolve().parents[2],
                          env={**__import__("os").environ, "IMPLANTFL_CACHE": str(cache)})
    # Assert: a non-zero exit in bounded time, and the run directory says it failed and why
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert time.monotonic() - t0 < 180
    assert "the simulation runtime crashed" in proc.stderr
    outcome = json.loads((out / "results.json").read_text())["outcome"]
    assert outcome["status"] == "failed" and "ActorPool is empty" in outcome["reason"]
