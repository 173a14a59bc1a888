"""The consortium server's TOML configuration (``server.toml``), validated before anything starts.

Example::

    catalog = "catalog.json"            # consortium catalog (label space)
    encoder = "encoder"                 # the public encoder (implantfl-sim pretrain --out encoder)
    checkpoint-dir = "runs/2025-pilot"  # per-round checkpoints; a run resumes from here

    [superlink]
    address = "127.0.0.1"   # where the SuperLink listens (0.0.0.0: every interface)
    port = 9092
    state-dir = "state"     # SuperLink database, logs, PID file, flwr CLI home
    certs-dir = "certs"     # ca.crt, server.pem, server.key (``implantfl-server certs``)

    [run]                   # run-config keys (common.config.RunConfig), kebab-case
    num-server-rounds = 20
    min-available-sites = 3
    min-fit-sites = 2
    round-timeout-s = 900

Relative paths are relative to the folder holding ``server.toml``. Unknown sections and
keys, bad values and impossible run configurations are a :class:`ConfigError`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import RunConfig
from common.errors import ConfigError
from common.toml_file import read_toml

TOP_KEYS = ("catalog", "checkpoint-dir", "encoder", "project-dir", "superlink", "run")
SUPERLINK_KEYS = ("address", "port", "state-dir", "certs-dir")
SERVER_RUN_KEYS = ("catalog", "checkpoint-dir", "encoder-file")  # run-config keys only the ServerApp reads
DEFAULT_PORT = 9092
CONNECTION_NAME = "implantfl"  # the [superlink.<name>] table the CLI writes for flwr


@dataclass(frozen=True)
class ServerConfig:
    """A validated ``server.toml``; every path is absolute."""

    path: Path | None  # the TOML file (None: built in code)
    state_dir: Path  # SuperLink database, log, PID file, flwr CLI home
    certs_dir: Path  # pilot PKI folder (ca.crt, server.pem, server.key)
    address: str = "127.0.0.1"  # SuperLink listen host
    port: int = DEFAULT_PORT  # SuperLink HTTPS port (Fleet, Control and Runtime APIs)
    catalog: Path | None = None  # consortium catalog.json
    checkpoint_dir: Path | None = None  # the run's checkpoint folder (None: <state-dir>/checkpoint)
    encoder: Path | None = None  # the public encoder folder (or encoder.pt) runs with a head use
    project_dir: Path | None = None  # the Flower app folder (pyproject.toml); None: this source tree
    run: Mapping[str, Any] = field(default_factory=dict)  # [run] overrides, kebab-case, validated

    # ------------------------------------------------------------------ derived paths
    @property
    def flwr_home(self) -> Path:
        """``FLWR_HOME`` for the SuperLink and the flwr CLI (holds config.toml)."""
        return self.state_dir / "flwr"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "superlink.pid"

    @property
    def runtime_file(self) -> Path:
        """How the running SuperLink was started (TLS or not), written by ``start``."""
        return self.state_dir / "superlink.json"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "superlink.log"

    @property
    def database(self) -> Path:
        return self.state_dir / "superlink.db"

    @property
    def effective_checkpoint_dir(self) -> Path:
        return self.checkpoint_dir or self.state_dir / "checkpoint"

    @property
    def connect_host(self) -> str:
        """Host the operator's CLI dials: loopback when the SuperLink listens everywhere."""
        if self.address in ("0.0.0.0", "::", ""):
            return "127.0.0.1"
        return self.address

    @property
    def control_address(self) -> str:
        host = self.connect_host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def run_config(self, overrides: Mapping[str, Any] | None = None) -> RunConfig:
        """The RunConfig of ``[run]`` plus ``overrides`` (what a run will use on top of pyproject)."""
        merged = {**self.run, **(overrides or {})}
        return RunConfig.from_flower(merged, ignore=SERVER_RUN_KEYS)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: Path) -> ServerConfig:
        """Read and validate ``path``; raise ConfigError naming the first problem."""
        path = path.expanduser().resolve()
        raw = read_toml(path, what="server config", show_path=True)
        return cls.from_dict(raw, base=path.parent, path=path)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, base: Path, path: Path | None = None) -> ServerConfig:
        """Validate a parsed ``server.toml``; relative paths are taken from ``base``."""
        _reject_unknown(raw, TOP_KEYS, "server config")
        link = raw.get("superlink", {})
        if not isinstance(link, Mapping):
            raise ConfigError("[superlink] must be a table")
        _reject_unknown(link, SUPERLINK_KEYS, "[superlink]")
        run = raw.get("run", {})
        if not isinstance(run, Mapping):
            raise ConfigError("[run] must be a table")
        for key in (*SERVER_RUN_KEYS, "encoder"):
            if key in run:
                raise ConfigError(f"[run] {key}: set it at the top level of the server config, not in [run]")
        for key, value in run.items():
            if isinstance(value, Mapping | list):
                raise ConfigError(f"[run] {key} must be a plain value")
        RunConfig.from_flower(run)  # unknown keys, bad types and ranges fail here

        address = _address(link.get("address", "127.0.0.1"))
        port = link.get("port", DEFAULT_PORT)
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConfigError(f"[superlink] port must be an integer in 1..65535, got {port!r}")
        return cls(
            path=path,
            address=address,
            port=port,
            state_dir=_path(link.get("state-dir", "state"), base, "[superlink] state-dir"),
            certs_dir=_path(link.get("certs-dir", "certs"), base, "[superlink] certs-dir"),
            catalog=_opt_path(raw.get("catalog"), base, "catalog"),
            checkpoint_dir=_opt_path(raw.get("checkpoint-dir"), base, "checkpoint-dir"),
            encoder=_opt_path(raw.get("encoder"), base, "encoder"),
            project_dir=_opt_path(raw.get("project-dir"), base, "project-dir"),
            run=dict(run),
        )


def _reject_unknown(table: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(allowed)}")


def _address(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError("[superlink] address must be a host name or IP address")
    host = value.strip().strip("[]")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError("[superlink] address takes a host only; put the port in [superlink] port") from None
    if any(c.isspace() for c in host) or "/" in host:
        raise ConfigError(f"[superlink] address {value!r} is not a host name or IP address")
    return host


def _path(value: Any, base: Path, what: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{what} must be a non-empty path")
    p = Path(value).expanduser()
    return (p if p.is_absolute() else base / p).resolve()


def _opt_path(value: Any, base: Path, what: str) -> Path | None:
    return None if value is None else _path(value, base, what)
