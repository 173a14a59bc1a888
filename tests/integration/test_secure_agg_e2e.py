"""Secure aggregation (SecAgg+) end to end on Flower's simulation engine.

The same one-round run (smoke data, DP-SGD, three training sites and one whose budget is
spent) twice: with ``secure-aggregation = true`` and without. The ServerApp's Grid is
wrapped to keep what the server receives and the global weights it sends for evaluation.
Both runs ask for reproducible noise (seeded per site and round), so both runs' sites compute the
same updates: the secure
global model must equal plain FedAvg's up to SecAgg+'s quantisation, while no train reply
of the secure run carries a single weight.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from tests.integration.recording import recording_server_app

pytestmark = pytest.mark.slow

OVERRIDES = {"head": "none", "num-server-rounds": 1, "local-epochs": 1, "reproducible-noise": True}


class RecordingGrid:
    """Flower's Grid, keeping every reply and the arrays of every evaluate message sent."""

    def __init__(self, grid) -> None:  # noqa: ANN001
        self._grid = grid
        self.replies: list = []
        self.evaluated: dict[str, np.ndarray] | None = None
        self.trained_from: dict[str, np.ndarray] | None = None  # the global weights the sites trained from

    def send_and_receive(self, messages, *, timeout=None):  # noqa: ANN001, ANN201
        messages = list(messages)
        if messages and messages[0].metadata.message_type == "evaluate" and self.evaluated is None:
            record = messages[0].content.array_records["arrays"]
            self.evaluated = {k: v.numpy().copy() for k, v in record.items()}
        if self.trained_from is None and messages and "arrays" in messages[0].content.array_records:
            record = messages[0].content.array_records["arrays"]
            self.trained_from = {k: v.numpy().copy() for k, v in record.items()}
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self.replies.extend(replies)
        return replies

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._grid, name)


def _run(tmp_path_factory, name: str, secure: bool, **extra):  # noqa: ANN001, ANN202
    import server.app as server_app
    import simulations.runner as runner

    base = tmp_path_factory.mktemp(name)
    grids: list[RecordingGrid] = []
    make_sites = runner.simulated_sites

    def sites_with_refusal(fed, **kwargs):  # noqa: ANN001, ANN202
        healthy = make_sites(fed, **kwargs)
        return [*healthy, dataclasses.replace(healthy[0], name="budget-site", state_dir=base / "state" / "budget-site",
                                              policy={"max-epsilon": 0.01, "allow-reproducible-noise": True})]

    mp = pytest.MonkeyPatch()
    mp.setenv("IMPLANTFL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    mp.setattr(runner, "simulated_sites", sites_with_refusal)
    mp.setattr(server_app, "build_server_app", recording_server_app(grids, RecordingGrid))
    try:
        results = runner.run(runner.SimOptions(
            preset="smoke", overrides={**OVERRIDES, "secure-aggregation": secure, **extra}, out=base / "run",
            progress=False, baseline=False))
    finally:
        mp.undo()
    [grid] = grids
    return json.loads((base / "run" / "results.json").read_text()), results, grid


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return _run(tmp_path_factory, "secure", True), _run(tmp_path_factory, "plain", False)


def test_secure_aggregation_gives_fedavgs_model_without_the_server_seeing_one_update(runs):
    (secure, _, secure_grid), (plain, _, plain_grid) = runs
    # Both runs used the same three sites; the budget-exhausted site contributed nothing and said why
    for results in (secure, plain):
        [rnd] = results["rounds"]
        assert rnd["aggregate"]["sites-used"] == 3
        assert rnd["sites"]["budget-site"]["status"] == "budget-exhausted" and "budget" in rnd["sites"]["budget-site"]["reason"]
    # The secure global model is plain FedAvg's, up to SecAgg+'s quantisation (~1e-5 here)
    a, b = secure_grid.evaluated, plain_grid.evaluated
    assert a is not None and b is not None and a.keys() == b.keys()
    diff = max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a)
    moved = max(float(np.max(np.abs(b[k]))) for k in b)
    assert diff < 1e-3 < moved
    # Not one train reply of the secure run carried weights; the plain run's did
    def weights_in(replies, kind):  # noqa: ANN001, ANN202
        return [sum(len(r) for r in m.content.array_records.values())
                for m in replies if not m.has_error() and m.metadata.message_type == kind]
    assert weights_in(secure_grid.replies, "train") and not any(weights_in(secure_grid.replies, "train"))
    assert sum(n > 0 for n in weights_in(plain_grid.replies, "train")) == 3


def test_secure_run_reports_each_sites_privacy_and_states_its_guarantee(runs):
    (secure, _, _), (plain, _, _) = runs
    # Per-site metrics still reach the server in plain text: the same epsilon as the plain run
    for site, p in plain["privacy"].items():
        assert secure["privacy"][site]["epsilon"] == pytest.approx(p["epsilon"])
    g = secure["secure_aggregation"]
    assert g["protocol"].startswith("SecAgg+") and "single site" in g["server_never_sees"]
    assert g["max_weight"] == 10_000 and g["reconstruction_threshold"] == 0.6
    assert "secure_aggregation" not in plain


CLIP = 0.05


def test_client_level_dp_clipped_at_the_sites_runs_under_secure_aggregation(tmp_path_factory):
    # Execute: SecAgg+ with client-level DP clipped at the sites, no noise (so the clipping can be checked)
    results, _, grid = _run(tmp_path_factory, "secure-client-dp", True, **{
        "client-dp": "fixed-client", "client-dp-clip": CLIP, "client-dp-noise": 0.0})
    # Assert: the three sites' clipped updates were averaged with equal weights; the move is at most the bound
    [rnd] = results["rounds"]
    assert rnd["aggregate"]["sites-used"] == 3
    before, after = grid.trained_from, grid.evaluated
    move = np.sqrt(sum(np.sum((after[k].astype(np.float64) - before[k]) ** 2) for k in before))
    assert 0.2 * CLIP < move <= CLIP * 1.01
    g = results["client_level_privacy"]
    assert (g["mechanism"], g["clipped_at"], g["sites_used_per_round"]) == ("fixed-client", "site", [3])
    assert "secure_aggregation" in results


def test_a_secure_round_in_which_every_site_refuses_leaves_the_model_unchanged(tmp_path_factory):
    # Execute: every site's policy refuses the run's noise, so nobody contributes to the masked sum
    results, _, grid = _run(tmp_path_factory, "secure-all-refuse", True, **{
        "target-epsilon": 0.0, "noise-multiplier": 0.05})
    # Assert: the round completed, said why per site, and the global model did not move
    [rnd] = results["rounds"]
    assert rnd["aggregate"]["sites-used"] == 0
    assert {s["status"] for s in rnd["sites"].values()} == {"policy-refused"} and len(rnd["sites"]) == 4
    before, after = grid.trained_from, grid.evaluated
    assert all(np.array_equal(after[k], before[k]) for k in before)
