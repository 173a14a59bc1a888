"""Honest outcomes: failed rounds, failed runs, a site's own refusal and its errors, as the operator sees them."""

from __future__ import annotations

import json

import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from common.errors import ImplantFLError
from server.status import format_text, summarize
from tests.unit.server.test_loop import (  # noqa: F401
    CFG,
    FakeGrid,
    _app_run,
    _run,
    honest,
    nan_weights,
    task_identity,
)


def refuses(site: str, reason: str = "this site has no accepted training images"):  # noqa: ANN201
    """A site that refuses training with its own reason and evaluates nothing."""
    def reply(msg: Message) -> RecordDict:
        if msg.metadata.message_type.startswith("train"):
            return RecordDict({"metrics": MetricRecord({"num-examples": 0, "epsilon": 0.0}),
                               "site": ConfigRecord({"name": site, "status": "error", "reason": reason})})
        return RecordDict({"metrics": MetricRecord({"num-examples": 0, "val-loss": 0.0, "val-accuracy": 0.0}),
                           "site": ConfigRecord({"name": site, "status": "ok", "reason": ""})})
    return reply


def test_a_round_without_an_accepted_update_is_failed_and_says_why():
    state = _run(FakeGrid({1: nan_weights("x")}), CFG.replace(num_server_rounds=2))
    assert [r.failed != "" for r in state.history.rounds] == [True, True]
    assert "non-finite" in state.history.rounds[0].failed


def test_a_sites_own_refusal_stays_its_reason_after_its_evaluation_reply():
    # Prepare / Execute: the site refuses to train, then answers evaluation with no examples
    state = _run(FakeGrid({1: honest("a"), 2: refuses("b")}), CFG.replace(fraction_evaluate=1.0))
    # Assert: what the server shows is the site's own reason, not "rejected / no examples reported"
    [record] = state.history.rounds
    assert record.sites["b"]["status"] == "error"
    assert record.sites["b"]["reason"] == "this site has no accepted training images"


def test_a_deployed_run_whose_rounds_all_failed_ends_failed_and_reports_it(tmp_path):
    # Prepare: every site's update is rejected
    grid = FakeGrid({1: nan_weights("x"), 2: nan_weights("y")})
    # Execute: the ServerApp's own run (no central evaluation: a deployment)
    with pytest.raises(ImplantFLError, match="every round failed"):
        _app_run(grid, CFG.replace(num_server_rounds=2, model="dnn"), tmp_path / "ckpt")
    # Assert: the checkpoint, status, results.json and report.md all say it failed and why
    state = json.loads((tmp_path / "ckpt" / "state.json").read_text())
    assert state["meta"]["outcome"]["status"] == "failed"
    summary = summarize(state)
    assert summary["outcome"]["status"] == "failed" and "non-finite" in summary["outcome"]["reason"]
    assert "run FAILED" in format_text(summary)
    results = json.loads((tmp_path / "ckpt" / "results.json").read_text())
    assert results["outcome"]["status"] == "failed" and results["config"]["mode"] == "deployment"
    assert "central_test_set" in results["not_available"]
    assert (tmp_path / "ckpt" / "report.md").exists()


def test_a_deployed_run_writes_its_federated_evaluation_as_its_results(tmp_path):
    def evaluating(site: str):  # noqa: ANN202
        def reply(msg: Message) -> RecordDict:
            if msg.metadata.message_type.startswith("train"):
                return honest(site)(msg)
            return RecordDict({"metrics": MetricRecord({"num-examples": 5, "val-loss": 0.5, "val-accuracy": 0.6}),
                               "site": ConfigRecord({"name": site, "status": "ok", "reason": ""})})
        return reply

    _app_run(FakeGrid({1: evaluating("a"), 2: evaluating("b")}),
             CFG.replace(num_server_rounds=1, fraction_evaluate=1.0, model="dnn", max_update_norm=1e4),
             tmp_path / "ckpt")
    results = json.loads((tmp_path / "ckpt" / "results.json").read_text())
    assert results["outcome"]["status"] == "completed"
    assert results["final"]["accuracy"] == pytest.approx(0.6) and results["final"]["examples"] == 10
    assert "validation splits" in results["final"]["source"]


def _state(rounds: list[dict], total: int) -> dict:
    return {"round": len(rounds), "history": rounds, "meta": {"config": {"num-server-rounds": total}}}


def test_status_counts_rounds_trained_of_the_runs_rounds_and_prints_the_last_error():
    # Prepare: hosp-a trained in rounds 1, 3, 4 of a 6-round run; round 2 was an error
    ok = {"status": "ok", "reason": "", "epsilon": 1.0}
    rounds = [{"round": r, "aggregate": {}, "sites": {"hosp-a": dict(ok) if r != 2 else
                                                      {"status": "error", "reason": "ledger unreadable"}}}
              for r in (1, 2, 3, 4)]
    # Execute
    summary = summarize(_state(rounds, 6))
    text = format_text(summary)
    # Assert
    assert summary["sites"]["hosp-a"]["rounds_trained"] == 3
    assert "trained=3/6 rounds" in text
    assert "last error (round 2, error): ledger unreadable" in text


def test_status_shows_epsilon_spent_on_a_rejected_update():
    rounds = [{"round": 1, "aggregate": {}, "sites": {"hosp-a": {"status": "rejected", "reason": "update norm 9",
                                                                 "epsilon": 2.5, "epsilon-run": 2.5}}}]
    summary = summarize(_state(rounds, 1))
    assert summary["sites"]["hosp-a"]["epsilon_on_rejected"] == 2.5
    assert "spent epsilon on an update the server rejected" in format_text(summary)
