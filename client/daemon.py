"""Site daemon commands: ``implantfl-client keys`` and ``implantfl-client start``.

``start`` validates the whole site configuration first (data folder, labels, privacy
policy, CA certificate, private key) and exits 2 with a clear message before any
connection is attempted; then it replaces itself with ``flower-supernode`` so that a
service manager (systemd) supervises the SuperNode directly.

Mounted in ``client.cli`` with :func:`add_parsers`; ``python -m client.daemon`` works too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.errors import ConfigError, ImplantFLError

logger = logging.getLogger(__name__)


def add_parsers(subparsers: Any) -> None:
    """Register ``keys`` and ``start`` on an argparse subparsers object (handler in ``func``)."""
    p = subparsers.add_parser("keys", help="create this site's authentication key pair")
    p.add_argument("--out", type=Path, required=True, help="folder for <name>.key (0600) and <name>.pub")
    p.add_argument("--name", default="site", help="file name stem (default: site)")
    p.add_argument("--force", action="store_true", help="replace an existing key pair")
    p.set_defaults(func=cmd_keys)

    p = subparsers.add_parser("start", help="validate site.toml, then run this site's SuperNode")
    p.add_argument("--config", type=Path, required=True, help="site.toml")
    p.add_argument("--insecure", action="store_true", help="no TLS, no node authentication (local trials only)")
    p.add_argument("--dry-run", action="store_true", help="validate and print the SuperNode command, do not start it")
    p.set_defaults(func=cmd_start)


def cmd_keys(args: argparse.Namespace) -> int:
    """``keys``: write the key pair and say what to do with each half."""
    from client.keys import create_site_keys

    try:
        keys = create_site_keys(args.out, name=args.name, overwrite=args.force, comment=args.name)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"private key: {keys.private_key}  (mode 0600; stays here: [auth] private-key in site.toml)")
    print(f"public key:  {keys.public_key}  (send to the consortium operator: implantfl-server register)")
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    """``start``: validate, then exec flower-supernode (or print it with --dry-run)."""
    try:
        cmd, env = prepare(args.config, insecure=args.insecure)
    except ConfigError as e:
        print(f"error: site configuration: {e}", file=sys.stderr)
        return 2
    except ImplantFLError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(json.dumps({"command": cmd, "flwr_home": env["FLWR_HOME"]}))
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(cmd[0], cmd, env)
    return 1  # not reached


def prepare(config: Path, *, insecure: bool = False) -> tuple[list[str], dict[str, str]]:
    """Validate the site configuration and build the SuperNode command and environment.

    Raises
    ------
    ConfigError
        The site config, its data, labels, privacy policy, certificate or key is unusable.
    """
    from client.site_connection import SiteConnection

    path = config.expanduser().resolve()
    conn = SiteConnection.load(path, insecure=insecure)
    site = _load_site(path)
    conn.check_files(insecure=insecure)
    if insecure:
        logger.warning("INSECURE: this SuperNode connects without TLS and without node authentication")
    state_dir = Path(getattr(site, "state_dir", path.parent / "state"))
    flwr_home = state_dir / "flwr"
    flwr_home.mkdir(parents=True, exist_ok=True)
    return supernode_command(conn, path, insecure=insecure, runtime_port=free_port()), _env(flwr_home)


def _load_site(path: Path) -> Any:
    """Load and check the site's own sections through :mod:`client.site_config`."""
    try:
        from client.site_config import load_site_runtime
    except ImportError as e:
        raise ImplantFLError("this installation lacks client.site_config.load_site_runtime") from e
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
    from client.layout import list_items, map_labels
    from client.site_config import read_label_map

    items = list_items(Path(site.data_dir))
    if not items:
        raise ConfigError("the site's data folder lists no labelled images")
    label_map = site.label_map if site.label_map is not None else read_label_map(Path(site.data_dir))
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


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point (``python -m client.daemon keys|start ...``)."""
    parser = argparse.ArgumentParser(prog="implantfl-client", description="ImplantFL site daemon")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
