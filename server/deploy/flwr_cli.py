"""Calls to the ``flwr`` CLI (register, unregister, run, ls) and parsing of its JSON output.

Every call runs with ``FLWR_HOME`` set to the server's own folder and ``--format json``,
and fails with a :class:`DeployError` carrying flwr's own error text.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import ImplantFLError

logger = logging.getLogger(__name__)


class DeployError(ImplantFLError):
    """A SuperLink or flwr CLI operation failed."""


def tool(name: str) -> str:
    """Path of a Flower console script installed beside this Python (or the bare name)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def tool_env(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for Flower processes: our ``FLWR_HOME``, our venv's bin first on PATH.

    The SuperLink and SuperNode start ``flwr-serverapp`` / ``flwr-clientapp`` by name,
    so the folder holding them must be on PATH even when the venv is not activated.
    """
    env = dict(os.environ)
    env["FLWR_HOME"] = str(flwr_home)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "")])
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


def parse_json_output(text: str) -> dict[str, Any]:
    """The JSON object flwr printed (it may be preceded by other output)."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            obj, _ = decoder.raw_decode(text[start:])
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        if isinstance(obj, dict):
            return obj
        start = text.find("{", start + 1)
    raise DeployError(f"flwr printed no JSON: {text.strip()[-300:] or '(nothing)'}")


def call(args: Sequence[str], *, flwr_home: Path, timeout: float = 120.0) -> dict[str, Any]:
    """Run ``flwr <args> --format json``; return its JSON, raise DeployError on failure."""
    cmd = [tool("flwr"), *args, "--format", "json"]
    logger.debug("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, env=tool_env(flwr_home), capture_output=True, text=True,
                              timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise DeployError(f"`flwr {args[0]}` did not answer within {timeout:.0f} s") from e
    except FileNotFoundError as e:
        raise DeployError("the flwr command is not installed beside this Python") from e
    try:
        payload = parse_json_output(proc.stdout)
    except DeployError:
        detail = (proc.stderr or proc.stdout).strip()[-500:]
        raise DeployError(f"`flwr {args[0]}` failed (exit {proc.returncode}): {detail}") from None
    if proc.returncode != 0 or payload.get("success") is False:
        detail = payload.get("error-message") or payload.get("error") or proc.stderr.strip()[-500:]
        raise DeployError(f"`flwr {' '.join(args[:2])}` failed (exit {proc.returncode}): {detail}")
    return payload


# ---------------------------------------------------------------------- commands
def register(public_key: Path, *, connection: str, flwr_home: Path, name: str | None = None) -> int:
    """Register a site's public key with the SuperLink; return its node id."""
    args = ["supernode", "register", str(public_key), connection]
    if name:
        args += ["--name", name]
    payload = call(args, flwr_home=flwr_home)
    try:
        return int(payload["node-id"])
    except (KeyError, TypeError, ValueError) as e:
        raise DeployError(f"flwr did not report a node id: {payload}") from e


def unregister(node_id: int, *, connection: str, flwr_home: Path) -> None:
    """Unregister a node: the SuperLink refuses its key from now on."""
    call(["supernode", "unregister", str(int(node_id)), connection], flwr_home=flwr_home)


def list_nodes(*, connection: str, flwr_home: Path) -> list[dict[str, Any]]:
    """The SuperLink's registered nodes as flwr reports them."""
    payload = call(["supernode", "list", connection], flwr_home=flwr_home)
    nodes = payload.get("nodes", [])
    return list(nodes) if isinstance(nodes, list) else []


def submit(project_dir: Path, *, connection: str, flwr_home: Path, overrides_file: Path | None) -> int:
    """``flwr run``: build the app bundle from ``project_dir`` and start a run; return its id."""
    args = ["run", str(project_dir), connection]
    if overrides_file is not None:
        args += ["--run-config", str(overrides_file)]
    payload = call(args, flwr_home=flwr_home, timeout=300.0)
    try:
        return int(payload["run-id"])
    except (KeyError, TypeError, ValueError) as e:
        raise DeployError(f"flwr did not report a run id: {payload}") from e


@dataclass(frozen=True)
class RunStatus:
    """A run's state as the SuperLink reports it (``flwr ls --run-id N``)."""

    run_id: int
    status: str  # pending | starting | running | finished:completed | finished:failed | finished:stopped
    details: str = ""

    @property
    def finished(self) -> bool:
        return self.status.startswith("finished")

    @property
    def succeeded(self) -> bool:
        return self.status == "finished:completed"


def parse_run_status(payload: Mapping[str, Any], run_id: int) -> RunStatus:
    """Pick run ``run_id`` out of ``flwr ls --format json`` output."""
    for run in payload.get("runs", []):
        if str(run.get("run-id")) == str(run_id):
            details = str(run.get("status-details", ""))
            return RunStatus(run_id, str(run.get("status", "")).lower(), "" if details == "N/A" else details)
    raise DeployError(f"the SuperLink does not know run {run_id}")


def run_status(run_id: int, *, connection: str, flwr_home: Path) -> RunStatus:
    return parse_run_status(call(["ls", connection, "--run-id", str(int(run_id))], flwr_home=flwr_home), run_id)
