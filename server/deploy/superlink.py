"""Start, watch and stop the consortium's SuperLink (``flower-superlink``).

Secure by default: HTTPS with the pilot PKI and SuperNode authentication (only keys
registered with ``implantfl-server register`` may connect). ``insecure=True`` turns both
off and is logged as a warning. Always offline-safe: no per-run ``uv sync``
(``--disable-runtime-dependency-installation``); the app's dependencies are the venv's.
State (registered nodes, runs) persists in ``<state-dir>/superlink.db`` so a restarted
SuperLink still knows its sites.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import ConfigError
from server.deploy.flwr_cli import DeployError, tool, tool_env
from server.deploy.flwr_config import write_connection
from server.deploy.pki import PkiPaths
from server.server_config import CONNECTION_NAME, ServerConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SuperLinkRuntime:
    """What ``start`` recorded about the SuperLink it started (``superlink.json``)."""

    pid: int
    host: str
    port: int
    insecure: bool
    started: float

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "host": self.host, "port": self.port, "insecure": self.insecure, "started": self.started}


def command(cfg: ServerConfig, *, insecure: bool) -> list[str]:
    """The ``flower-superlink`` command line for ``cfg``."""
    cmd = [
        tool("flower-superlink"),
        "--host", cfg.address,
        "--port", str(cfg.port),
        "--database", str(cfg.database),
        "--disable-runtime-dependency-installation",
    ]
    if insecure:
        return [*cmd, "--insecure"]
    pki = PkiPaths.in_dir(cfg.certs_dir)
    missing = pki.missing()
    if missing:
        raise ConfigError(
            f"certificate folder {cfg.certs_dir} lacks {', '.join(missing)}; "
            "run `implantfl-server certs --out DIR --host NAME` (or pass --insecure for a local trial)"
        )
    return [
        *cmd,
        "--ssl-ca-certfile", str(pki.ca_cert),
        "--ssl-certfile", str(pki.server_cert),
        "--ssl-keyfile", str(pki.server_key),
        "--enable-supernode-auth",
    ]


def configure_cli(cfg: ServerConfig, *, insecure: bool | None = None) -> Path:
    """Write the flwr CLI connection for ``cfg``; ``insecure=None``: as the SuperLink was started."""
    if insecure is None:
        runtime = read_runtime(cfg)
        insecure = bool(runtime and runtime.insecure)
    ca = None if insecure else PkiPaths.in_dir(cfg.certs_dir).ca_cert
    return write_connection(cfg.flwr_home, CONNECTION_NAME, cfg.control_address, root_certificates=ca, insecure=insecure)


def read_runtime(cfg: ServerConfig) -> SuperLinkRuntime | None:
    """The running SuperLink's record, or None if none was started (or it is gone)."""
    try:
        d = json.loads(cfg.runtime_file.read_text())
        runtime = SuperLinkRuntime(int(d["pid"]), str(d["host"]), int(d["port"]), bool(d["insecure"]), float(d["started"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return runtime


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def running(cfg: ServerConfig) -> SuperLinkRuntime | None:
    """The SuperLink this config started, if its process is still alive."""
    runtime = read_runtime(cfg)
    if runtime is not None and pid_alive(runtime.pid):
        return runtime
    return None


def start(cfg: ServerConfig, *, insecure: bool = False, wait_s: float = 60.0) -> SuperLinkRuntime:
    """Start the SuperLink in the background, wait until it accepts connections.

    The process leads its own session (stop it with :func:`stop`); its output goes to
    ``<state-dir>/superlink.log``. Raises DeployError if it exits or stays silent.
    """
    if running(cfg) is not None:
        raise DeployError(f"a SuperLink from this config is already running (PID file {cfg.pid_file})")
    if port_open(cfg.connect_host, cfg.port):
        raise DeployError(f"port {cfg.port} on {cfg.connect_host} is already in use")
    cmd = command(cfg, insecure=insecure)
    if insecure:
        logger.warning("INSECURE: the SuperLink runs without TLS and without node authentication; "
                       "any process that can reach port %d can join. Use only for a local trial.", cfg.port)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    cfg.flwr_home.mkdir(parents=True, exist_ok=True)
    with open(cfg.log_file, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=tool_env(cfg.flwr_home), cwd=cfg.state_dir, start_new_session=True)
    runtime = SuperLinkRuntime(proc.pid, cfg.connect_host, cfg.port, insecure, time.time())
    cfg.pid_file.write_text(f"{proc.pid}\n")
    cfg.runtime_file.write_text(json.dumps(runtime.to_dict()) + "\n")
    configure_cli(cfg, insecure=insecure)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            raise DeployError(f"the SuperLink exited with code {code} at start; see {cfg.log_file}:\n{tail(cfg.log_file)}")
        if port_open(cfg.connect_host, cfg.port):
            logger.info("SuperLink PID %d listening on %s:%d (%s)", proc.pid, cfg.address, cfg.port,
                        "INSECURE" if insecure else "TLS + node authentication")
            return runtime
        time.sleep(0.2)
    stop(cfg)
    raise DeployError(f"the SuperLink did not open port {cfg.port} within {wait_s:.0f} s; see {cfg.log_file}")


def foreground_exec(cfg: ServerConfig, *, insecure: bool = False) -> None:
    """Replace this process with the SuperLink (for systemd); records the PID first."""
    cmd = command(cfg, insecure=insecure)
    if insecure:
        logger.warning("INSECURE: the SuperLink runs without TLS and without node authentication")
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    cfg.flwr_home.mkdir(parents=True, exist_ok=True)
    cfg.pid_file.write_text(f"{os.getpid()}\n")
    cfg.runtime_file.write_text(json.dumps(SuperLinkRuntime(os.getpid(), cfg.connect_host, cfg.port, insecure,
                                                             time.time()).to_dict()) + "\n")
    configure_cli(cfg, insecure=insecure)
    os.chdir(cfg.state_dir)
    os.execve(cmd[0] if os.path.isabs(cmd[0]) else _which(cmd[0]), cmd, tool_env(cfg.flwr_home))


def _which(name: str) -> str:
    import shutil

    found = shutil.which(name)
    if found is None:
        raise DeployError(f"{name} is not installed")
    return found


def stop(cfg: ServerConfig, *, timeout: float = 20.0) -> bool:
    """Stop the SuperLink (and its ServerApp processes) started from ``cfg``; True if one ran."""
    runtime = read_runtime(cfg)
    if runtime is None or not pid_alive(runtime.pid):
        cfg.pid_file.unlink(missing_ok=True)
        return False
    _signal_group(runtime.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(runtime.pid):
        time.sleep(0.2)
    if pid_alive(runtime.pid):
        logger.warning("SuperLink PID %d ignored SIGTERM; killing it", runtime.pid)
        _signal_group(runtime.pid, signal.SIGKILL)
    cfg.pid_file.unlink(missing_ok=True)
    return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)  # the SuperLink leads its own process group (start_new_session)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
