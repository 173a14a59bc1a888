"""The flwr CLI's own configuration (``$FLWR_HOME/config.toml``), managed by ImplantFL.

``flwr run``, ``flwr ls`` and ``flwr supernode ...`` find the SuperLink through a named
connection table::

    [superlink]
    default = "implantfl"

    [superlink.implantfl]
    address = "127.0.0.1:9092"
    root-certificates = "/abs/path/certs/ca.crt"   # absolute: flwr resolves it from its cwd

``FLWR_HOME`` lives under the server's state folder, so the operator's ``~/.flwr`` is
never touched. Other tables already in the file are kept.
"""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from common.errors import ConfigError

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.toml"


def connection_table(address: str, *, root_certificates: Path | None, insecure: bool) -> dict[str, Any]:
    """One ``[superlink.<name>]`` table: TLS with an absolute CA path, or explicitly insecure."""
    if insecure:
        return {"address": address, "insecure": True}
    if root_certificates is None:
        raise ConfigError("a TLS connection needs the CA certificate (run `implantfl-server certs` first)")
    return {"address": address, "root-certificates": str(root_certificates.expanduser().resolve())}


def write_connection(
    flwr_home: Path,
    name: str,
    address: str,
    *,
    root_certificates: Path | None,
    insecure: bool = False,
    make_default: bool = True,
) -> Path:
    """Create or update connection ``name`` in ``flwr_home/config.toml``; return the file."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / CONFIG_FILE
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError:
            logger.warning("replacing an unreadable flwr config at %s", path)
            data = {}
    links = data.setdefault("superlink", {})
    links[name] = connection_table(address, root_certificates=root_certificates, insecure=insecure)
    if make_default:
        links["default"] = name
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(tomli_w.dumps(data), encoding="utf-8")
    tmp.replace(path)
    return path


def read_connection(flwr_home: Path, name: str) -> dict[str, Any] | None:
    """The connection table ``name``, or None if the file or the table is missing."""
    path = flwr_home / CONFIG_FILE
    if not path.exists():
        return None
    table = tomllib.loads(path.read_text(encoding="utf-8")).get("superlink", {}).get(name)
    return dict(table) if isinstance(table, dict) else None
