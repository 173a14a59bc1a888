"""``implantfl-server dashboard``: serve the operator's page for a deployment or a simulation's run directory."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path
from typing import Any

from common.errors import ConfigError

DEFAULT_PORT = 8750


def add_parser(sub: Any) -> None:
    p = sub.add_parser("dashboard", help="a read-only web page of runs, sites and privacy spend",
                       description="Serve the operator's page: runs, sites (epsilon against each site's budget), "
                                   "accuracy and epsilon over rounds, the release gate. Read-only.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--config", type=Path, help="server.toml: the runs this server submitted (default ./server.toml)")
    src.add_argument("--run-dir", type=Path, help="a simulation's run directory (implantfl-sim run --out)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--token-file", type=Path, help="file holding the access token; required off 127.0.0.1")


def sources_from(args: argparse.Namespace) -> Any:
    """A callable listing the runs to show (read again on every request)."""
    from server.dashboard.runs_view import deployment_sources, simulation_source

    if args.run_dir is not None:
        run_dir = args.run_dir
        if not run_dir.is_dir():  # a run that has just started may not have written its first round yet
            raise ConfigError(f"--run-dir {run_dir} is not a folder (implantfl-sim run --out creates it)")
        return lambda: simulation_source(run_dir)
    from server.server_config import ServerConfig

    cfg = ServerConfig.load(args.config or Path("server.toml"))
    return lambda: deployment_sources(cfg.state_dir)


def read_token(path: Path | None, host: str) -> str | None:
    """The token to require; refuses a non-loopback address without one."""
    token = None
    if path is not None:
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"--token-file cannot be read ({type(e).__name__})") from None
        if len(token) < 16:
            raise ConfigError("--token-file must hold a token of at least 16 characters")
    if token is None and not is_loopback(host):
        raise ConfigError(f"--host {host} is reachable from other machines: give --token-file (or keep the default "
                          "127.0.0.1 and reach it through an SSH tunnel: ssh -L 8750:127.0.0.1:8750 THIS_HOST)")
    return token


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_dashboard(args: argparse.Namespace) -> int:
    import uvicorn

    from server.dashboard.web import build_app

    sources = sources_from(args)
    token = read_token(args.token_file, args.host)
    app = build_app(sources, token=token)
    where = f"http://{args.host}:{args.port}/"
    print(f"dashboard at {where}" + (" (token required: Authorization: Bearer, or once ?token=...)" if token else ""))
    if not is_loopback(args.host):
        print("reachable from other machines: put it behind TLS (a reverse proxy) or use an SSH tunnel", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0
