"""The operator's page: what it reads from run folders, its JSON API, the token and the read-only rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from common.errors import ConfigError
from server.dashboard.cli import is_loopback, read_token
from server.dashboard.runs_view import deployment_sources, run_view, simulation_source
from server.dashboard.web import COOKIE, build_app

TOKEN = "s3cret-token-0123456789"


def _round(rnd: int, eps: dict[str, float], *, refused: str | None = None) -> dict:
    sites = {name: {"status": "ok", "reason": "", "train-examples": 40 + k, "train-accuracy": 0.7,
                    "val-accuracy": 0.5 + 0.1 * k,
                    "epsilon": e, "max-epsilon": 10.0}
             for k, (name, e) in enumerate(eps.items())}
    if refused:
        sites[refused] = {"status": "refused", "reason": "budget would be exceeded", "epsilon": 9.5, "max-epsilon": 10.0}
    return {"round": rnd, "sites": sites, "aggregate": {"test-accuracy": 0.3 * rnd, "sites-used": len(eps)},
            "wall_s": 2.0}


def write_finished_run(run_dir: Path) -> Path:
    """A simulation's run directory as the runner writes it (results.json, release with its gate and card)."""
    rounds = [_round(1, {"hosp-a": 1.25, "hosp-b": 2.5}), _round(2, {"hosp-a": 2.5, "hosp-b": 4.125}, refused="hosp-c")]
    (run_dir / "release").mkdir(parents=True)
    (run_dir / "release" / "model_card.md").write_text("# model card\n")
    (run_dir / "release" / "model.json").write_text(json.dumps({"release": {
        "fit_for_use": False, "reason": "top-1 0.60 below the required 0.80", "accuracy": 0.6, "min_accuracy": 0.8,
        "evaluated_on": "the central held-out test set"}}))
    (run_dir / "results.json").write_text(json.dumps({
        "config": {"num-server-rounds": 2, "dp": True, "head": "dp-stats"}, "rounds": rounds,
        "outcome": {"status": "completed", "reason": ""}, "final": {"accuracy": 0.6, "macro_f1": 0.5}}))
    return run_dir


def write_running_run(run_dir: Path, rounds: int, planned: int = 3) -> Path:
    """A simulation still running: only its checkpoint's state.json, one round per call."""
    (run_dir / "checkpoint").mkdir(parents=True, exist_ok=True)
    history = [_round(r, {"hosp-a": 1.0 * r}) for r in range(1, rounds + 1)]
    state = {"round": rounds, "history": history, "meta": {"config": {"num-server-rounds": planned}}}
    tmp = run_dir / "checkpoint" / "state.json.tmp"
    tmp.write_text(json.dumps(state))
    tmp.replace(run_dir / "checkpoint" / "state.json")
    return run_dir


def test_a_finished_run_shows_every_site_with_its_epsilon_budget_refusals_and_gate(tmp_path):
    view = run_view(simulation_source(write_finished_run(tmp_path / "main-run"))[0])
    assert view["state"] == "completed" and view["rounds_done"] == 2 and view["rounds_planned"] == 2
    sites = {s["name"]: s for s in view["sites"]}
    assert set(sites) == {"hosp-a", "hosp-b", "hosp-c"}
    assert sites["hosp-b"]["epsilon"] == 4.125
    assert sites["hosp-a"]["budget"] == 10.0 and sites["hosp-a"]["examples"] == 40
    assert sites["hosp-a"]["local_accuracy"] == 0.7 and sites["hosp-b"]["federated_accuracy"] == 0.6
    assert [p["epsilon"] for p in sites["hosp-b"]["epsilon_by_round"]] == [2.5, 4.125]
    assert sites["hosp-c"]["status"] == "refused" and sites["hosp-c"]["refusals"][0]["reason"].startswith("budget")
    assert view["release"]["fit_for_use"] is False and view["release"]["model_card"] == "/runs/main-run/model-card"
    assert [a["test"] for a in view["accuracy"]] == [0.3, 0.6]


def test_a_run_that_has_not_finished_a_round_is_waiting(tmp_path):
    (tmp_path / "new-run").mkdir()
    view = run_view(simulation_source(tmp_path / "new-run")[0])
    assert view["state"] == "waiting" and view["rounds_done"] == 0 and view["sites"] == []


def test_a_running_simulation_is_read_from_its_checkpoint(tmp_path):
    view = run_view(simulation_source(write_running_run(tmp_path / "live", rounds=1))[0])
    assert view["state"] == "running" and view["rounds_done"] == 1 and view["rounds_planned"] == 3
    assert view["release"] is None


def test_a_deployments_runs_are_the_checkpoints_its_server_submitted_newest_first(tmp_path):
    import os
    import time

    runs = tmp_path / "state" / "runs"
    runs.mkdir(parents=True)
    for k, name in enumerate(["ckpt-a", "ckpt-b", "ckpt-a"]):
        f = runs / f"run-config-2026120{k}.toml"
        f.write_text(f'checkpoint-dir = "{tmp_path / name}"\n')
        os.utime(f, (time.time() + k, time.time() + k))
    (runs / "run-config-broken.toml").write_text("not toml [")
    assert [s.run_id for s in deployment_sources(tmp_path / "state")] == ["ckpt-a", "ckpt-b"]


@pytest.fixture
def client(tmp_path):
    write_finished_run(tmp_path / "main-run")
    return TestClient(build_app(lambda: simulation_source(tmp_path / "main-run")))


def test_the_api_lists_runs_gives_one_and_404s_an_unknown_one(client):
    runs = client.get("/api/runs").json()
    assert [r["id"] for r in runs] == ["main-run"] and runs[0]["state"] == "completed"
    assert client.get("/api/runs/main-run").json()["sites"][0]["name"] == "hosp-a"
    assert client.get("/api/runs/nope").status_code == 404
    assert client.get("/runs/main-run/model-card").text == "# model card\n"
    page = client.get("/")
    assert page.status_code == 200 and "<script>" in page.text and "http" not in page.text.split("<script>")[0].lower()


def test_nothing_changes_state(client):
    for method in ("post", "put", "delete", "patch"):
        assert getattr(client, method)("/api/runs").status_code == 405
        assert getattr(client, method)("/api/runs/main-run").status_code == 405


def test_with_a_token_every_request_needs_it_and_a_wrong_one_gets_401_not_a_traceback(tmp_path):
    write_finished_run(tmp_path / "main-run")
    app = build_app(lambda: simulation_source(tmp_path / "main-run"), token=TOKEN)
    c = TestClient(app)
    assert c.get("/api/runs").status_code == 401
    wrong = c.get("/api/runs", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "Traceback" not in wrong.text
    assert c.get("/api/runs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    first = c.get(f"/?token={TOKEN}", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/" and COOKIE in first.headers["set-cookie"]
    assert c.get("/api/runs").status_code == 200  # the cookie now carries it
    fresh = TestClient(app)
    assert fresh.get("/?token=nope").status_code == 401


def test_off_loopback_a_token_is_required_and_must_be_long(tmp_path):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and not is_loopback("0.0.0.0")
    assert read_token(None, "127.0.0.1") is None
    with pytest.raises(ConfigError, match="--token-file"):
        read_token(None, "0.0.0.0")
    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(ConfigError, match="16 characters"):
        read_token(short, "0.0.0.0")
    good = tmp_path / "token"
    good.write_text(TOKEN + "\n")
    assert read_token(good, "0.0.0.0") == TOKEN


def test_the_command_refuses_an_open_address_without_a_token_before_serving(tmp_path, capsys):
    from server.cli import main

    write_finished_run(tmp_path / "main-run")
    assert main(["dashboard", "--run-dir", str(tmp_path / "main-run"), "--host", "0.0.0.0"]) == 2
    assert "ssh -L" in capsys.readouterr().err
    assert main(["dashboard", "--run-dir", str(tmp_path / "nothing-here")]) == 2
