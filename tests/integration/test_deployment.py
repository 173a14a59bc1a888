"""A real deployment on 127.0.0.1: one SuperLink (TLS + node authentication), three SuperNodes.

Everything goes through the project's own commands (``implantfl-server certs / start /
register / run / status / export / stop``, ``implantfl-client keys / start``) on
generated smoke data. Every process is stopped by its own PID (process group) in the
fixture's teardown. The tests share one deployment and run in file order; the last one
kills a site.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
SITES = ("site-a", "site-b", "site-c")  # deployment names for the generated federation's sites
# Small and quick: the point is the deployment, not the model.
FAST = ["--set", "local-epochs=1", "--set", "batch-size=16", "--set", "image-size=32", "--set", "min-fit-sites=2",
        "--set", "min-available-sites=2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(tool: str, *args: str, timeout: float = 120.0, check: bool = True,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(BIN / tool), *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{tool} {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _stop_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=timeout)


@dataclass
class Deployment:
    root: Path
    server_toml: Path
    port: int
    site_tomls: dict[str, Path]
    node_ids: dict[str, int] = field(default_factory=dict)
    nodes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)  # printed at teardown (seconds)
    t_start: float = 0.0  # when `implantfl-server start` was called

    def server(self, *args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _cli("implantfl-server", *args, "--config", str(self.server_toml), timeout=timeout, check=check)

    def start_node(self, site: str) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{site}.log", "ab")  # noqa: SIM115 - closed with the process
        # Three sites share this machine's cores: one torch thread per ClientApp avoids oversubscription.
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        proc = subprocess.Popen([str(BIN / "implantfl-client"), "start", "--config", str(self.site_tomls[site])],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                env=env)
        log.close()
        self.nodes[site] = proc
        return proc

    def log(self, site: str) -> str:
        return (self.root / f"{site}.log").read_text(errors="replace")

    def superlink_pid(self) -> int | None:
        pid_file = self.root / "server" / "state" / "superlink.pid"
        return int(pid_file.read_text()) if pid_file.exists() else None

    def state(self, ckpt: str) -> dict | None:
        path = self.root / ckpt / "state.json"
        return json.loads(path.read_text()) if path.exists() else None

    def wait_round(self, ckpt: str, rnd: int, timeout: float) -> float:
        """Seconds until the checkpoint in ``ckpt`` holds round ``rnd``."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            state = self.state(ckpt)
            if state is not None and state["round"] >= rnd:
                return time.monotonic() - t0
            time.sleep(0.5)
        raise AssertionError(f"round {rnd} did not finish within {timeout:.0f} s\n{self.server_log()[-3000:]}")

    def server_log(self) -> str:
        path = self.root / "server" / "state" / "superlink.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _site_toml(fed: Path, site_dir: Path, name: str, home: Path, port: int) -> Path:
    """A deployed site's config: the generated site's labels/preprocessing + connection sections."""
    generated = tomllib.loads((site_dir / "site.toml").read_text()) if (site_dir / "site.toml").exists() else {}
    doc = {k: v for k, v in generated.items() if k in ("labels", "preprocess")}
    # This pilot site allows the non-DP runs the robustness tests use (faster) and a
    # budget that several test runs fit in.
    doc["privacy"] = {"require-dp": False, "max-epsilon": 50.0}
    doc["site"] = {"name": name, "data-dir": str(site_dir), "catalog": str(fed / "catalog.json"),
                   "cache-dir": str(home / "cache"), "state-dir": str(home / "state"),
                   "encoder": str(fed.parent / "encoder")}  # the consortium's public encoder, handed out like ca.crt
    doc["superlink"] = {"address": f"127.0.0.1:{port}"}
    doc["tls"] = {"root-certificates": "ca.crt"}
    doc["auth"] = {"private-key": "keys/site.key"}
    path = home / "site.toml"
    path.write_text(tomli_w.dumps(doc))
    return path


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    from simulations.synth import generate

    root = tmp_path_factory.mktemp("deploy")
    t0 = time.monotonic()
    generate(root / "fed", preset="smoke", seed=0)
    fed = root / "fed"
    # A tiny public encoder at the tests' 32-pixel crops (seconds to pretrain): the default route's head runs on it.
    _cli("implantfl-sim", "pretrain", "--out", str(root / "encoder"), "--designs", "24", "--images-per-design", "4",
         "--epochs", "2", "--image-size", "32", "--json", timeout=300, env={"IMPLANTFL_CACHE": str(root / "cache")})
    generated_sites = sorted(p for p in (fed / "sites").iterdir() if p.is_dir())
    assert len(generated_sites) == 3, "the smoke preset has three sites"
    port = _free_port()
    server_dir = root / "server"
    server_dir.mkdir()
    server_toml = server_dir / "server.toml"
    server_toml.write_text(tomli_w.dumps({
        "catalog": str(fed / "catalog.json"),
        "checkpoint-dir": str(root / "ckpt-default"),
        "encoder": str(root / "encoder"),
        "superlink": {"address": "127.0.0.1", "port": port, "state-dir": "state", "certs-dir": "certs"},
        # The robustness tests train the study CNN end to end for two rounds (head = none): what they check is the
        # deployment; the default dp-stats route has its own tests below.
        "run": {"num-server-rounds": 2, "round-timeout-s": 120.0, "head": "none"},
    }))
    _cli("implantfl-server", "certs", "--out", str(server_dir / "certs"), "--host", "fl.consortium.test")
    site_tomls = {}
    for name, site_dir in zip(SITES, generated_sites, strict=True):
        home = root / name
        home.mkdir()
        (home / "ca.crt").write_bytes((server_dir / "certs" / "ca.crt").read_bytes())  # what the operator hands out
        _cli("implantfl-client", "keys", "--out", str(home / "keys"))
        site_tomls[name] = _site_toml(fed, site_dir, name, home, port)
    dep = Deployment(root, server_toml, port, site_tomls)
    try:
        dep.t_start = time.monotonic()
        out = dep.server("start").stdout
        assert "TLS + node authentication" in out
        dep.timings["superlink_start_s"] = time.monotonic() - dep.t_start
        for name in SITES:
            dep.node_ids[name] = int(dep.server("register", "--public-key", str(root / name / "keys" / "site.pub"),
                                                "--name", name).stdout.strip())
        for name in SITES:
            dep.start_node(name)
        dep.timings["setup_s"] = time.monotonic() - t0
        yield dep
    finally:
        for proc in dep.nodes.values():
            _stop_group(proc)
        dep.server("stop", check=False, timeout=60)
        pid = dep.superlink_pid()
        if pid is not None:  # stop failed: do not leave the SuperLink behind
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        rounded = {k: round(v, 1) if isinstance(v, float) else v for k, v in dep.timings.items()}
        print(f"\ndeployment timings: {json.dumps(rounded)}")


# ---------------------------------------------------------------------- sites that must not get in
@pytest.mark.timeout(120)
def test_a_node_with_an_unregistered_key_is_refused(deployment: Deployment):
    # Prepare: a well-configured site whose key the operator never registered
    home = deployment.root / "intruder"
    home.mkdir()
    (home / "ca.crt").write_bytes((deployment.root / "site-a" / "ca.crt").read_bytes())
    _cli("implantfl-client", "keys", "--out", str(home / "keys"))
    a = tomllib.loads(deployment.site_tomls["site-a"].read_text())
    a["site"] = {**a["site"], "name": "intruder", "cache-dir": str(home / "cache"), "state-dir": str(home / "state")}
    (home / "site.toml").write_text(tomli_w.dumps(a))
    # Execute
    t0 = time.monotonic()
    with open(home / "start.log", "wb") as log:
        proc = subprocess.Popen([str(BIN / "implantfl-client"), "start", "--config", str(home / "site.toml")],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        code = proc.wait(timeout=90)
    finally:
        _stop_group(proc, sig=signal.SIGKILL)
    # Assert: it exits by itself, quickly, saying why
    output = (home / "start.log").read_text(errors="replace")
    assert code == 3, output
    assert time.monotonic() - t0 < 60
    assert "Failed to activate SuperNode" in output
    # ... and the site's own terminal says why, with the command the operator must run
    assert "does not know this site's key" in output and "implantfl-server register --public-key site.pub" in output


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda d: d["tls"].update({"root-certificates": "missing.crt"}), "[tls] root-certificates"),
        (lambda d: d.pop("auth"), "[auth] private-key is missing"),
        (lambda d: d["site"].update({"data-dir": "/nonexistent/xrays"}), "data-dir"),
        (lambda d: d.update({"labels": {"no-such-label": "auralis-a1"}}), "unknown label"),
        (lambda d: d.update({"privacy": {"max-epsilon": -1}}), "privacy"),
    ],
)
def test_a_bad_site_config_exits_2_before_connecting(deployment: Deployment, tmp_path: Path, change, fragment):
    # Prepare
    doc = tomllib.loads(deployment.site_tomls["site-a"].read_text())
    doc["tls"]["root-certificates"] = str(deployment.root / "site-a" / "ca.crt")
    doc["auth"]["private-key"] = str(deployment.root / "site-a" / "keys" / "site.key")
    change(doc)
    (tmp_path / "site.toml").write_text(tomli_w.dumps(doc))
    # Execute
    proc = _cli("implantfl-client", "start", "--config", str(tmp_path / "site.toml"), timeout=60, check=False)
    # Assert
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert fragment in proc.stderr
    assert "Starting Flower SuperNode" not in proc.stdout + proc.stderr


# ---------------------------------------------------------------------- a full run
@pytest.mark.timeout(240)
def test_two_rounds_on_three_sites_then_status_and_export(deployment: Deployment):
    from server.release import load_release

    # Execute: submit and wait (exit code reflects the run's real outcome)
    t0 = time.monotonic()
    submit = subprocess.Popen([str(BIN / "implantfl-server"), "run", "--config", str(deployment.server_toml),
                               "--set", "checkpoint-dir=" + str(deployment.root / "ckpt-main"), "--set", "noise-multiplier=1.5",
                               *FAST, "--wait",
                               "--timeout", "200", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deployment.timings["submit_to_first_round_s"] = deployment.wait_round("ckpt-main", 1, timeout=200)
        deployment.timings["start_to_first_round_s"] = time.monotonic() - deployment.t_start
        out, err = submit.communicate(timeout=200)
    finally:
        _stop_group(submit)  # type: ignore[arg-type]
    deployment.timings["two_rounds_s"] = time.monotonic() - t0
    # Assert: the run completed
    assert submit.returncode == 0, out + err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["status"] == "finished:completed"
    # status --json: rounds, sites, per-site metrics, cumulative epsilon growing per round
    status = json.loads(deployment.server("status", "--json").stdout)
    assert status["rounds_done"] == 2 and status["finished"] is True
    assert set(status["sites"]) == set(SITES)
    for name in SITES:
        site = status["sites"][name]
        assert site["status"] == "ok" and site["rounds_trained"] == 2
        assert site["train-examples"] > 0 and 0.0 <= site["val-accuracy"] <= 1.0
        assert status["epsilon"][name] > 0
    history = deployment.state("ckpt-main")["history"]
    for name in SITES:
        eps = [r["sites"][name]["epsilon"] for r in history]
        assert eps[1] > eps[0] > 0
    assert status["run_status"] == "finished:completed"
    # export: a release that loads into a plain model, with a model card listing the privacy spent
    release = deployment.root / "release"
    _cli("implantfl-server", "export", "--run", str(deployment.root / "ckpt-main"), "--out", str(release),
         "--config", str(deployment.server_toml), "--no-onnx")
    rel = load_release(release)
    assert rel.info["image_size"] == 32 and len(rel.catalog) == rel.info["num_classes"]
    card = (release / "model_card.md").read_text()
    assert all(f"| {name} |" in card for name in SITES)


@pytest.mark.timeout(240)
def test_a_securely_aggregated_round_across_real_processes(deployment: Deployment):
    # Execute: one SecAgg+ round (its four stages travel through the SuperLink like any message)
    ckpt = "ckpt-secagg"
    t0 = time.monotonic()
    proc = deployment.server("run", "--set", f"checkpoint-dir={deployment.root / ckpt}", "--set", "num-server-rounds=1",
                             "--set", "secure-aggregation=true", "--set", "dp=false", *FAST,
                             "--wait", "--timeout", "200", timeout=230)
    deployment.timings["secagg_round_s"] = time.monotonic() - t0
    # Assert: every site's masked update went into the round, and its metrics still reached the server
    assert "finished:completed" in proc.stdout
    [rnd] = deployment.state(ckpt)["history"]
    assert rnd["aggregate"]["sites-used"] == 3
    assert all(rnd["sites"][name]["status"] == "ok" and rnd["sites"][name]["train-examples"] > 0 for name in SITES)


# ---------------------------------------------------------------------- the default route, deployed
def _dp_stats_run(deployment: Deployment, ckpt: str, *sets: str) -> dict[str, Any]:
    """One deployed dp-stats round (the default head); returns the global head's weights."""
    from server.checkpoint import load_checkpoint

    proc = deployment.server("run", "--set", f"checkpoint-dir={deployment.root / ckpt}", "--set", "head=dp-stats",
                             "--set", "num-server-rounds=1", "--set", "fraction-evaluate=0.0", *sets, *FAST,
                             "--wait", "--timeout", "150", timeout=180)
    assert "finished:completed" in proc.stdout, proc.stdout + proc.stderr
    ckpt_state = load_checkpoint(deployment.root / ckpt)
    assert ckpt_state is not None and ckpt_state.history.rounds[0].aggregate["sites-used"] == 3
    return {k: v.numpy() for k, v in ckpt_state.arrays.items()}


@pytest.mark.timeout(420)
def test_deployed_dp_runs_of_one_config_differ_and_runs_without_dp_do_not(deployment: Deployment):
    # Execute: the same run config twice with DP (each site's noise from its own OS entropy), twice without
    t0 = time.monotonic()
    dp_a, dp_b = (_dp_stats_run(deployment, f"ckpt-dp-{k}", "--set", "dp=true") for k in "ab")
    plain_a, plain_b = (_dp_stats_run(deployment, f"ckpt-plain-{k}", "--set", "dp=false") for k in "ab")
    deployment.timings["four_dp_stats_runs_s"] = time.monotonic() - t0
    # Assert: the server could not have fixed the noise; without noise the sum is exact and reproducible
    assert set(dp_a) == {"weight", "bias"}
    assert not np.array_equal(dp_a["weight"], dp_b["weight"])
    assert all(np.array_equal(plain_a[k], plain_b[k]) for k in plain_a)
    # ... and the run exports as a release that carries the public encoder it was trained on
    from common.release_files import load_release

    _cli("implantfl-server", "export", "--run", str(deployment.root / "ckpt-dp-a"), "--out",
         str(deployment.root / "release-dp"), "--config", str(deployment.server_toml), "--no-onnx")
    rel = load_release(deployment.root / "release-dp")
    assert rel.info["model"] == "encoder+head" and rel.info["head"] == "dp-stats"
    np.testing.assert_array_equal(rel.model.head.weight.detach().numpy(), dp_a["weight"])


# ---------------------------------------------------------------------- robustness
@pytest.mark.timeout(300)
def test_a_restarted_server_resumes_at_the_next_round(deployment: Deployment):
    # Prepare: a run that is stopped, with its SuperLink, right after round 1
    ckpt = "ckpt-restart"
    sets = ["--set", f"checkpoint-dir={deployment.root / ckpt}", "--set", "fraction-evaluate=0.0", "--set", "dp=false",
            *FAST]
    deployment.server("run", *sets)
    deployment.wait_round(ckpt, 1, timeout=150)
    round1 = deployment.state(ckpt)["history"][0]
    deployment.server("stop")
    # Execute: start the SuperLink again and resubmit the same run (same checkpoint-dir)
    t0 = time.monotonic()
    deployment.server("start")
    proc = deployment.server("run", *sets, "--wait", "--timeout", "200", timeout=230)
    deployment.timings["restart_to_round2_s"] = time.monotonic() - t0
    # Assert: round 1 came from the checkpoint untouched, round 2 was trained after the restart
    assert "finished:completed" in proc.stdout
    history = deployment.state(ckpt)["history"]
    assert [r["round"] for r in history] == [1, 2]
    assert history[0] == round1
    assert history[1]["aggregate"]["sites-used"] >= 2
    deployment.timings["restart_round_walls_s"] = [round(r["wall_s"], 1) for r in history]


@pytest.mark.timeout(300)
def test_a_site_killed_mid_round_does_not_stop_the_run(deployment: Deployment):
    # Prepare: minimums 2 of 3 and a short round timeout; the victim dies while it trains
    ckpt, victim, timeout_s = "ckpt-kill", "site-c", 40
    before = deployment.log(victim).count("Receiving: train message")
    t0 = time.monotonic()
    submit = subprocess.Popen([str(BIN / "implantfl-server"), "run", "--config", str(deployment.server_toml),
                               "--set", f"checkpoint-dir={deployment.root / ckpt}", "--set", "fraction-evaluate=0.0",
                               "--set", "dp=false", "--set", f"round-timeout-s={timeout_s}", *FAST,
                               "--wait", "--timeout", "250"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        while deployment.log(victim).count("Receiving: train message") <= before:
            assert time.monotonic() - t0 < 120, "the victim never received its training task"
            assert submit.poll() is None, submit.communicate()
            time.sleep(0.2)
        # Execute: SIGKILL the SuperNode and its ClientApp (a crash: no goodbye to the SuperLink)
        _stop_group(deployment.nodes[victim], sig=signal.SIGKILL)
        t_kill = time.monotonic()
        out, err = submit.communicate(timeout=260)
    finally:
        _stop_group(submit)  # type: ignore[arg-type]
    deployment.timings["kill_to_end_s"] = time.monotonic() - t_kill
    # Assert: the run completed both rounds without the dead site, the global model moved each round
    assert submit.returncode == 0, out + err
    history = deployment.state(ckpt)["history"]
    assert [r["round"] for r in history] == [1, 2]
    for r in history:
        used = {s for s, v in r["sites"].items() if v["status"] == "ok"}
        assert used and used <= {"site-a", "site-b"}, r["sites"]
        assert r["aggregate"]["sites-used"] == len(used)
    deployment.timings["kill_round_walls_s"] = [round(r["wall_s"], 1) for r in history]
    assert history[0]["wall_s"] >= timeout_s - 1  # the round waited for the dead site, then went on


@pytest.mark.timeout(120)
def test_an_unregistered_site_is_refused_from_then_on(deployment: Deployment):
    # Prepare: the operator removes site-c (its SuperNode died in the previous test)
    victim = "site-c"
    _stop_group(deployment.nodes[victim], sig=signal.SIGKILL)
    deployment.server("unregister", str(deployment.node_ids[victim]))
    # Execute: the site tries to come back with its old key
    proc = deployment.start_node(victim)
    try:
        code = proc.wait(timeout=90)
    finally:
        _stop_group(proc, sig=signal.SIGKILL)
    # Assert
    assert code != 0
    assert deployment.log(victim).count("Failed to activate SuperNode") == 1

