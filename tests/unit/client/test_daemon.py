"""``implantfl-client start``: what it checks before connecting, and how it tells an unregistered site."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from client.site.daemon import prepare
from common.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def site_toml(tmp_path, small_site, catalog):
    shutil.move(small_site, tmp_path / "xrays")
    catalog.save(tmp_path / "catalog.json")

    def write(extra: str = "") -> object:
        path = tmp_path / "site.toml"
        path.write_text(f'[site]\nname = "hosp-a"\ndata-dir = "xrays"\ncatalog = "catalog.json"\n{extra}'
                        '[superlink]\naddress = "127.0.0.1:9092"\n')
        return path

    return write


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_device_the_machine_does_not_have_is_refused_before_connecting(site_toml):
    with pytest.raises(ConfigError, match=r"\[site\] device.*CUDA is not available"):
        prepare(site_toml('device = "cuda"\n'), insecure=True)


def test_a_site_without_an_encoder_still_starts_and_one_that_cannot_be_read_is_refused(site_toml, tmp_path):
    cmd, _ = prepare(site_toml(), insecure=True)
    assert cmd[0].endswith("flower-supernode")
    (tmp_path / "enc").mkdir()
    (tmp_path / "enc" / "encoder.pt").write_bytes(b"junk")
    with pytest.raises(ConfigError, match=r"\[site\] encoder"):
        prepare(site_toml('encoder = "enc"\n'), insecure=True)


def _start(fake_supernode: list[str], **popen) -> subprocess.Popen[str]:
    """``run_supernode`` in a process of its own, as ``implantfl-client start`` runs it (it adopts orphans)."""
    code = ("import json, sys; from client.site.daemon_cli import run_supernode; "
            "sys.exit(run_supernode(json.loads(sys.argv[1]), {'PATH': ''}))")
    return subprocess.Popen([sys.executable, "-c", code, json.dumps(fake_supernode)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, **popen)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    return False


def test_an_unregistered_key_is_explained_with_the_operators_command(tmp_path):
    # Prepare: a stand-in SuperNode that fails the way flower-supernode does for an unknown key
    from client.site.daemon_cli import EXIT_NOT_REGISTERED

    fake = [sys.executable, "-c", "print('ERROR: Failed to activate SuperNode.'); raise SystemExit(1)",
            "--auth-supernode-private-key", str(tmp_path / "keys" / "site.key")]
    # Execute
    daemon = _start(fake)
    out, err = daemon.communicate(timeout=60)
    # Assert: Flower's line passes through, then ours names the key file and the command to run
    assert daemon.returncode == EXIT_NOT_REGISTERED
    assert "Failed to activate SuperNode" in out
    assert "implantfl-server register --public-key site.pub --config server.toml" in err
    assert str(tmp_path / "keys" / "site.pub") in err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="adopting orphans needs Linux")
def test_a_superexec_left_behind_by_a_refused_supernode_neither_hangs_start_nor_survives(tmp_path):
    # Prepare: a stand-in SuperNode that starts a long-lived child sharing its output (as
    # flower-supernode starts its SuperExec), is refused, and exits
    from client.site.daemon_cli import EXIT_NOT_REGISTERED

    pid_file = tmp_path / "superexec.pid"
    script = (
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; print(\"retrying\", flush=True); time.sleep(300)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "print('ERROR: Failed to activate SuperNode.', flush=True)\n"
        "raise SystemExit(1)\n"
    )
    fake = [sys.executable, "-c", script, "--auth-supernode-private-key", str(tmp_path / "site.key")]
    # Execute
    t0 = time.monotonic()
    daemon = _start(fake)
    out, err = daemon.communicate(timeout=60)
    # Assert: it returns at once with the refusal, and the left-behind child is stopped
    assert daemon.returncode == EXIT_NOT_REGISTERED and time.monotonic() - t0 < 30
    assert "implantfl-server register" in err
    assert _gone_within(int(pid_file.read_text()), 10), "the SuperExec stand-in outlived its SuperNode"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups as on Linux")
def test_killing_the_daemons_process_group_stops_its_supernode(tmp_path):
    # Prepare: a daemon started as an operator's supervisor does (a process group of its own),
    # running a SuperNode stand-in that would run for minutes
    pid_file = tmp_path / "supernode.pid"
    script = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(300)"
    daemon = _start([sys.executable, "-c", script], start_new_session=True)
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    # Execute: the supervisor kills the group outright
    os.killpg(daemon.pid, signal.SIGKILL)
    daemon.communicate(timeout=30)
    # Assert: the SuperNode went with it (it shares the daemon's group)
    assert _gone_within(int(pid_file.read_text()), 10)
