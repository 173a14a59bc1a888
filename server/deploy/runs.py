"""Submitting a federated run: overrides, the Flower app folder, and waiting for the end.

``flwr run`` only accepts run-config keys that the app's ``pyproject.toml`` declares in
``[tool.flwr.app.config]`` (the SuperLink fuses overrides into those defaults and fails
the run on an unknown key), and it exits 0 even when the run then fails. So a run is
checked here before it is submitted, and ``--wait`` watches ``flwr ls`` until it ends.
"""

from __future__ import annotations

import json
import logging
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import tomli_w

from common.catalog import Catalog
from common.config import RunConfig
from common.errors import ConfigError, InvalidInputError
from server.deploy import flwr_cli
from server.deploy.flwr_cli import DeployError, RunStatus
from server.server_config import CONNECTION_NAME, SERVER_RUN_KEYS, ServerConfig

logger = logging.getLogger(__name__)


def parse_set(items: Iterable[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are TOML literals (``2``, ``false``, ``1e-5``) or bare strings."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set takes key=value, got {item!r}")
        raw = raw.strip()
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        if isinstance(value, dict | list):
            raise ConfigError(f"--set {key}: only plain values are allowed")
        out[key] = value
    return out


def default_project_dir() -> Path:
    """The source tree this package was installed from (editable install / checkout)."""
    return Path(__file__).resolve().parents[2]


def declared_keys(project_dir: Path) -> dict[str, Any]:
    """``[tool.flwr.app.config]`` of the Flower app in ``project_dir``."""
    pyproject = project_dir / "pyproject.toml"
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{project_dir} holds no pyproject.toml; set project-dir in the server config") from None
    app = data.get("tool", {}).get("flwr", {}).get("app", {})
    if "components" not in app:
        raise ConfigError(f"{pyproject} declares no Flower app ([tool.flwr.app.components])")
    return dict(app.get("config", {}))


def check_declared(overrides: Mapping[str, Any], declared: Mapping[str, Any]) -> None:
    """Fail before submitting if ``flwr run`` would reject an override key."""
    missing = [k for k in overrides if k not in declared]
    if missing:
        lines = "\n".join(f"  {k} = {_toml_value(_placeholder(k, overrides[k]))}" for k in missing)
        raise ConfigError(
            "the Flower app's pyproject.toml does not declare these run-config keys, so Flower would fail "
            f"the run; add them to [tool.flwr.app.config]:\n{lines}"
        )


def _placeholder(key: str, value: Any) -> Any:
    """What to declare: "" for server-only paths, the RunConfig default for run keys."""
    if key in SERVER_RUN_KEYS:
        return ""
    return RunConfig().to_flower().get(key, value)


def _toml_value(value: Any) -> str:
    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def prepare_overrides(cfg: ServerConfig, sets: Mapping[str, Any], *, declared: Mapping[str, Any]) -> dict[str, Any]:
    """The run-config overrides of a run: ``[run]`` + ``--set`` + absolute catalog and checkpoint-dir.

    Validates the run config exactly as the ServerApp will see it (pyproject defaults
    fused with the overrides) and that the catalog loads.
    """
    sets = dict(sets)
    catalog = Path(str(sets.pop("catalog"))).expanduser().resolve() if "catalog" in sets else cfg.catalog
    ckpt = (Path(str(sets.pop("checkpoint-dir"))).expanduser().resolve() if "checkpoint-dir" in sets
            else cfg.effective_checkpoint_dir)
    encoder = Path(str(sets.pop("encoder-file"))).expanduser().resolve() if "encoder-file" in sets else cfg.encoder
    run = {**cfg.run, **sets}
    run_cfg = effective_run_config(run, declared)  # fails now if the ServerApp would refuse it
    extra: dict[str, Any] = {}
    if run_cfg.uses_encoder:
        extra = _encoder_keys(encoder, run_cfg)
    if catalog is None:
        raise ConfigError("no catalog: set `catalog = \"catalog.json\"` in the server config (or --set catalog=PATH)")
    try:
        Catalog.load(catalog)
    except (InvalidInputError, OSError) as e:
        raise ConfigError(f"the catalog {catalog} cannot be used: {e}") from e
    for value in (str(catalog), str(ckpt)):
        if '"' in value or "\n" in value:
            raise ConfigError("catalog and checkpoint paths cannot contain quotes or newlines")
    return {**run, **extra, "catalog": str(catalog), "checkpoint-dir": str(ckpt)}


def _encoder_keys(encoder: Path | None, run_cfg: RunConfig) -> dict[str, Any]:
    """``encoder`` (its SHA-256, what the sites check) and ``encoder-file`` (what the ServerApp loads)."""
    from common.encoders import WEIGHTS, file_sha256

    if encoder is None:
        raise ConfigError(f"head = {run_cfg.head} needs the public encoder: set `encoder = \"encoder\"` in the server "
                          "config (implantfl-sim pretrain --out encoder), or head = \"none\" in [run]")
    weights = encoder / WEIGHTS if encoder.is_dir() else encoder
    if not weights.is_file():
        raise ConfigError(f"the encoder {weights} does not exist (implantfl-sim pretrain --out DIR writes one)")
    sha = file_sha256(weights)
    if run_cfg.encoder and run_cfg.encoder != sha:
        raise ConfigError(f"[run] encoder {run_cfg.encoder[:12]} is not the server's encoder file ({sha[:12]})")
    if '"' in str(weights) or "\n" in str(weights):
        raise ConfigError("the encoder path cannot contain quotes or newlines")
    return {"encoder": sha, "encoder-file": str(weights)}


def effective_run_config(overrides: Mapping[str, Any], declared: Mapping[str, Any]) -> RunConfig:
    """The RunConfig the ServerApp will parse: pyproject defaults fused with the overrides."""
    merged = {**declared, **overrides}
    return RunConfig.from_flower({k: v for k, v in merged.items() if k not in SERVER_RUN_KEYS})


def write_overrides(cfg: ServerConfig, overrides: Mapping[str, Any]) -> Path:
    """Write the overrides as the TOML file ``flwr run --run-config`` accepts."""
    folder = cfg.state_dir / "runs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"run-config-{datetime.now(UTC):%Y%m%dT%H%M%S%f}.toml"
    path.write_text(tomli_w.dumps(dict(overrides)), encoding="utf-8")
    return path


def record_submission(cfg: ServerConfig, run_id: int, overrides: Mapping[str, Any]) -> None:
    """Remember the last submitted run (for ``status``)."""
    entry = {"run_id": run_id, "checkpoint_dir": overrides["checkpoint-dir"], "submitted": time.time(),
             "config": dict(overrides)}
    (cfg.state_dir / "last-run.json").write_text(json.dumps(entry, indent=1) + "\n")


def last_submission(cfg: ServerConfig) -> dict[str, Any] | None:
    try:
        return dict(json.loads((cfg.state_dir / "last-run.json").read_text()))
    except (OSError, ValueError):
        return None


def checkpoint_round(checkpoint_dir: Path) -> int:
    """Last round checkpointed in ``checkpoint_dir`` (0 if none); cheap, no SuperLink call."""
    try:
        return int(json.loads((checkpoint_dir / "state.json").read_text())["round"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def wait_for(
    run_id: int,
    *,
    cfg: ServerConfig,
    checkpoint_dir: Path | None = None,
    total_rounds: int | None = None,
    timeout_s: float = 0.0,
    on_poll: Callable[[RunStatus], None] | None = None,
    first_check_s: float = 5.0,
    idle_check_s: float = 20.0,
    final_check_s: float = 3.0,
) -> RunStatus:
    """Wait until run ``run_id`` finishes (``timeout_s`` 0: no limit) and return its status.

    Each ``flwr ls`` costs a second of CPU, so the SuperLink is asked rarely
    (``first_check_s`` after submission, then every ``idle_check_s``) while the run's
    checkpoint, read for free, shows rounds still to go, and every ``final_check_s``
    once it holds the last round.
    """
    t0 = time.monotonic()
    deadline = t0 + timeout_s if timeout_s > 0 else None
    last_check, interval = t0, first_check_s
    failures = 0
    status = RunStatus(run_id, "unknown")
    while True:
        near_end = (checkpoint_dir is not None and total_rounds is not None
                    and checkpoint_round(checkpoint_dir) >= total_rounds)
        if near_end:
            interval = min(interval, final_check_s)
        if time.monotonic() - last_check >= interval:
            last_check = time.monotonic()
            try:
                status = flwr_cli.run_status(run_id, connection=CONNECTION_NAME, flwr_home=cfg.flwr_home)
                failures = 0
            except DeployError:
                failures += 1  # the SuperLink may be restarting; give up only if it stays away
                if failures >= 10:
                    raise
                status = RunStatus(run_id, "unknown")
            if on_poll is not None:
                on_poll(status)
            if status.finished:
                return status
            interval = final_check_s if near_end else idle_check_s
        if deadline is not None and time.monotonic() > deadline:
            raise DeployError(f"run {run_id} did not finish within {timeout_s:.0f} s (last status {status.status})")
        time.sleep(1.0)
