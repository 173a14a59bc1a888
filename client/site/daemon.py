"""The site daemon: validate a site's whole configuration, then build its SuperNode command.

:func:`prepare` checks the data folder, labels, privacy policy, CA certificate and
private key, and raises a clear error before any connection is attempted; it returns the
``flower-supernode`` command and environment. The commands that use it
(``implantfl-client keys`` / ``start``) are in :mod:`client.site.daemon_cli`.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from common.errors import ConfigError, ImplantFLError

logger = logging.getLogger(__name__)


def prepare(config: Path, *, insecure: bool = False) -> tuple[list[str], dict[str, str]]:
    """Validate the site configuration and build the SuperNode command and environment.

    Raises
    ------
    ConfigError
        The site config, its data, labels, privacy policy, certificate or key is unusable.
    """
    from client.site.connection import SiteConnection

    path = config.expanduser().resolve()
    conn = SiteConnection.load(path, insecure=insecure)
    site = _load_site(path)
    conn.check_files(insecure=insecure)
    _check_device(site.device)
    _check_encoder(site)
    if insecure:
        logger.warning("INSECURE: this SuperNode connects without TLS and without node authentication")
    state_dir = Path(getattr(site, "state_dir", path.parent / "state"))
    flwr_home = state_dir / "flwr"
    flwr_home.mkdir(parents=True, exist_ok=True)
    return supernode_command(conn, path, insecure=insecure, runtime_port=free_port()), _env(flwr_home)


def _check_device(device: str) -> None:
    """``[site] device`` names a device this machine has (checked before any connection)."""
    from common.device import pick_device

    try:
        pick_device(device)
    except ConfigError as e:
        raise ConfigError(f"[site] device: {e}") from None


def _check_encoder(site: Any) -> None:
    """``[site] encoder``, when set, is a readable public encoder (its hash is checked per run)."""
    if site.encoder_path is None:
        logger.warning("[site] encoder is not set: runs with a head on the public encoder (the default) will be refused")
        return
    from common.encoders import load_encoder

    try:
        load_encoder(site.encoder_path)
    except ImplantFLError as e:
        raise ConfigError(f"[site] encoder: {e}") from None


def _load_site(path: Path) -> Any:
    """Load and check the site's own sections through :mod:`client.site.config`."""
    try:
        from client.site.config import load_site_runtime
    except ImportError as e:
        raise ImplantFLError("this installation lacks client.site.config.load_site_runtime") from e
    try:
        site = load_site_runtime(path)
    except ConfigError:
        raise
    except ImplantFLError as e:
        raise ConfigError(str(e)) from e
    except OSError as e:
        raise ConfigError(f"a file or folder the site config names cannot be read ({type(e).__name__})") from e
    data_dir = Path(site.data_dir)
    if not data_dir.is_dir() or not os.access(data_dir, os.R_OK | os.X_OK):
        raise ConfigError("[site] data-dir is not a readable folder")
    _check_labels(site)
    return site


def _check_labels(site: Any) -> None:
    """Every local label maps to a catalog id (reads labels.csv / folder names, decodes no image)."""
    from client.data.layout import list_items, map_labels
    from client.site.config import label_map_of

    items = list_items(Path(site.data_dir))
    if not items:
        raise ConfigError("the site's data folder lists no labelled images")
    label_map = label_map_of(Path(site.data_dir), site.label_map)
    map_labels(items, site.catalog(), label_map)


def supernode_command(conn: Any, site_toml: Path, *, insecure: bool, runtime_port: int) -> list[str]:
    """The ``flower-supernode`` command line for this site."""
    text = str(site_toml)
    if '"' in text or "\\" in text:
        raise ConfigError("the site config's path cannot contain quotes or backslashes")
    cmd = [
        _tool("flower-supernode"),
        "--superlink", conn.address,
        "--node-config", f'site-config="{text}"',
        "--host", "127.0.0.1",
        "--port", str(runtime_port),
    ]
    if insecure:
        return [*cmd, "--insecure"]
    return [*cmd, "--root-certificates", str(conn.root_certificates),
            "--auth-supernode-private-key", str(conn.private_key)]


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for the SuperNode's local Runtime API."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tool(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    import shutil

    found = shutil.which(name)
    if found is None:
        raise ImplantFLError(f"{name} is not installed (install ImplantFL with its Flower dependency)")
    return found


def _env(flwr_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["FLWR_HOME"] = str(flwr_home)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
