"""``implantfl-server``: the consortium operator's command.

Subcommands: ``certs`` (pilot PKI), ``start`` / ``stop`` (the SuperLink), ``register`` /
``unregister`` (site keys), ``run`` (submit a federated run), ``status`` (progress, sites,
privacy spent) and ``export`` (a model release from a checkpoint). See docs/deploy.md.

Exit codes: 0 success, 1 an operation failed (SuperLink, flwr, run failed), 2 invalid
configuration or arguments (nothing was started).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.errors import ConfigError, ImplantFLError, InvalidInputError

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = Path("server.toml")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="implantfl-server", description="ImplantFL consortium server (Flower SuperLink).")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("certs", help="create a pilot PKI: CA and SuperLink certificate")
    p.add_argument("--out", type=Path, required=True, help="folder for ca.crt, ca.key, server.pem, server.key")
    p.add_argument("--host", action="append", default=[], help="DNS name or IP address sites dial (repeatable)")
    p.add_argument("--no-loopback", action="store_true", help="do not add localhost and 127.0.0.1")
    p.add_argument("--days", type=int, default=825, help="certificate validity in days")
    p.add_argument("--force", action="store_true", help="replace an existing PKI (every site must get the new ca.crt)")

    p = sub.add_parser("start", help="start the SuperLink (TLS + node authentication)")
    _config_arg(p)
    p.add_argument("--insecure", action="store_true", help="no TLS, no node authentication (local trials only)")
    p.add_argument("--foreground", action="store_true", help="replace this process with the SuperLink (systemd)")
    p.add_argument("--wait-s", type=float, default=60.0, help="how long to wait for the SuperLink to listen")

    p = sub.add_parser("stop", help="stop the SuperLink started from this config")
    _config_arg(p)

    p = sub.add_parser("register", help="allow a site's public key to connect; prints its node id")
    p.add_argument("--public-key", type=Path, required=True, help="the site's OpenSSH public key (implantfl-client keys)")
    p.add_argument("--name", help="a label for the site in Flower's node list")
    _config_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("unregister", help="remove a site: its key is refused from now on")
    p.add_argument("node_id", type=int, help="node id printed by register")
    _config_arg(p)

    p = sub.add_parser("run", help="submit a federated run to the SuperLink")
    _config_arg(p)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a run-config key (also catalog=PATH, checkpoint-dir=PATH); repeatable")
    p.add_argument("--wait", action="store_true", help="wait for the run to end; exit 1 if it failed")
    p.add_argument("--timeout", type=float, default=0.0, help="with --wait: give up after this many seconds")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("status", help="rounds done, sites seen, per-site metrics and privacy spent")
    _config_arg(p)
    p.add_argument("--checkpoint-dir", type=Path, help="read this run's checkpoint (default: last submitted run)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("export", help="write a model release from a run's checkpoint")
    p.add_argument("--run", type=Path, required=True, metavar="CHECKPOINT_DIR", help="the run's checkpoint folder")
    p.add_argument("--out", type=Path, required=True, metavar="RELEASE", help="release folder to write")
    p.add_argument("--catalog", type=Path, help="catalog.json (default: the server config's catalog)")
    p.add_argument("--config", type=Path, help="server.toml (for its catalog and encoder)")
    p.add_argument("--encoder", type=Path, help="the run's public encoder folder (default: the server config's)")
    p.add_argument("--preprocess", type=Path, help="preprocessing parameters JSON the sites used (default: defaults)")
    p.add_argument("--no-onnx", action="store_true", help="do not write model.onnx")

    from server.dashboard.cli import add_parser as add_dashboard

    add_dashboard(sub)
    return parser


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="server.toml (default: ./server.toml)")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``implantfl-server``; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    handler = _COMMANDS[args.command]
    try:
        return handler(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ImplantFLError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


# ---------------------------------------------------------------------- commands
def _certs(args: argparse.Namespace) -> int:
    from server.deploy.pki import certificate_sans, create_pki

    if args.no_loopback and not args.host:
        raise ConfigError("--no-loopback needs at least one --host")
    paths = create_pki(args.out, args.host, loopback=not args.no_loopback, days=args.days, overwrite=args.force)
    print(f"CA certificate:     {paths.ca_cert}   (copy to every site: [tls] root-certificates)")
    print(f"CA key:             {paths.ca_key}   (keep offline)")
    print(f"server certificate: {paths.server_cert}  valid for {', '.join(certificate_sans(paths.server_cert))}")
    print(f"server key:         {paths.server_key}")
    return 0


def _load(args: argparse.Namespace) -> Any:
    from server.server_config import ServerConfig

    return ServerConfig.load(args.config)


def _start(args: argparse.Namespace) -> int:
    from server.deploy import superlink

    cfg = _load(args)
    if args.foreground:
        superlink.foreground_exec(cfg, insecure=args.insecure)
        return 1  # not reached: exec replaced this process
    runtime = superlink.start(cfg, insecure=args.insecure, wait_s=args.wait_s)
    print(f"SuperLink started: PID {runtime.pid}, {cfg.address}:{cfg.port}, "
          f"{'INSECURE (no TLS, no node authentication)' if args.insecure else 'TLS + node authentication'}")
    print(f"PID file {cfg.pid_file}, log {cfg.log_file}")
    return 0


def _stop(args: argparse.Namespace) -> int:
    from server.deploy import superlink

    cfg = _load(args)
    if superlink.stop(cfg):
        print("SuperLink stopped")
    else:
        print("no SuperLink from this config was running")
    return 0


def _register(args: argparse.Namespace) -> int:
    from server.deploy import flwr_cli, superlink
    from server.server_config import CONNECTION_NAME

    cfg = _load(args)
    if not args.public_key.is_file():
        raise ConfigError(f"public key {args.public_key} does not exist")
    superlink.configure_cli(cfg)
    node_id = flwr_cli.register(args.public_key.resolve(), connection=CONNECTION_NAME, flwr_home=cfg.flwr_home,
                                name=args.name)
    if args.json:
        print(json.dumps({"node-id": node_id, "name": args.name}))
    else:
        print(node_id)
    return 0


def _unregister(args: argparse.Namespace) -> int:
    from server.deploy import flwr_cli, superlink
    from server.server_config import CONNECTION_NAME

    cfg = _load(args)
    superlink.configure_cli(cfg)
    flwr_cli.unregister(args.node_id, connection=CONNECTION_NAME, flwr_home=cfg.flwr_home)
    print(f"node {args.node_id} unregistered")
    return 0


def _run(args: argparse.Namespace) -> int:
    from server.deploy import flwr_cli, runs, superlink
    from server.deploy.runs import default_project_dir
    from server.server_config import CONNECTION_NAME

    cfg = _load(args)
    project = cfg.project_dir or default_project_dir()
    declared = runs.declared_keys(project)
    overrides = runs.prepare_overrides(cfg, runs.parse_set(args.set), declared=declared)
    runs.check_declared(overrides, declared)
    total = runs.effective_run_config(overrides, declared).num_server_rounds
    done = runs.checkpoint_round(Path(overrides["checkpoint-dir"]))
    if done >= total:
        logger.warning("checkpoint-dir already holds all %d rounds: this run will end at once "
                       "(use a new checkpoint-dir for a new run)", total)
    elif done > 0:
        logger.info("checkpoint-dir holds %d of %d rounds: the run resumes at round %d", done, total, done + 1)
    if not superlink.port_open(cfg.connect_host, cfg.port):
        raise ImplantFLError(f"no SuperLink answers on {cfg.control_address}; run `implantfl-server start` first")
    superlink.configure_cli(cfg)
    run_id = flwr_cli.submit(project, connection=CONNECTION_NAME, flwr_home=cfg.flwr_home,
                             overrides_file=runs.write_overrides(cfg, overrides))
    runs.record_submission(cfg, run_id, overrides)
    if not args.json:
        print(f"run {run_id} submitted; checkpoint-dir {overrides['checkpoint-dir']}")
    if not args.wait:
        if args.json:
            print(json.dumps({"run-id": run_id, "checkpoint-dir": overrides["checkpoint-dir"]}))
        return 0

    seen: list[str] = []

    def show(status: Any) -> None:
        if not seen or seen[-1] != status.status:
            logger.info("run %d: %s", run_id, status.status)
            seen.append(status.status)

    status = runs.wait_for(run_id, cfg=cfg, checkpoint_dir=Path(overrides["checkpoint-dir"]), total_rounds=total,
                           timeout_s=args.timeout, on_poll=show)
    if args.json:
        print(json.dumps({"run-id": run_id, "status": status.status, "details": status.details,
                          "checkpoint-dir": overrides["checkpoint-dir"]}))
    else:
        print(f"run {run_id}: {status.status}" + (f" ({status.details})" if status.details else ""))
    return 0 if status.succeeded else 1


def _status(args: argparse.Namespace) -> int:
    from server import status
    from server.deploy import flwr_cli, runs, superlink
    from server.server_config import CONNECTION_NAME

    cfg = _load(args)
    last = runs.last_submission(cfg)
    if args.checkpoint_dir is not None:
        ckpt = args.checkpoint_dir.expanduser().resolve()
    elif last is not None:
        ckpt = Path(last["checkpoint_dir"])
    else:
        ckpt = cfg.effective_checkpoint_dir
    summary = status.summarize(status.read_state(ckpt))
    summary["checkpoint_dir"] = str(ckpt)
    link = superlink.running(cfg)
    summary["superlink"] = {"running": link is not None, "pid": link.pid if link else None,
                            "insecure": link.insecure if link else None}
    if last is not None and Path(last["checkpoint_dir"]) == ckpt:
        summary["run_id"] = int(last["run_id"])
        if link is not None:
            try:
                superlink.configure_cli(cfg)
                rs = flwr_cli.run_status(int(last["run_id"]), connection=CONNECTION_NAME, flwr_home=cfg.flwr_home)
                summary["run_status"], summary["run_details"] = rs.status, rs.details
            except flwr_cli.DeployError as e:
                logger.debug("run status unavailable: %s", e)
    if args.json:
        print(json.dumps(summary, indent=1, default=str))
    else:
        link_text = f"running (PID {link.pid})" if link else "not running"
        print(f"SuperLink: {link_text}")
        if "run_id" in summary:
            print(f"run {summary['run_id']}: {summary.get('run_status', 'unknown')}")
        print(f"checkpoint: {ckpt}")
        print(status.format_text(summary))
    return 0


def _export(args: argparse.Namespace) -> int:
    from common.catalog import Catalog
    from common.preprocess_params import PreprocessParams
    from server.export import export_release

    catalog_path, encoder = args.catalog, args.encoder
    if args.config is not None:
        server_cfg = _load(args)
        catalog_path = catalog_path or server_cfg.catalog
        encoder = encoder or server_cfg.encoder
    if catalog_path is None:
        raise ConfigError("give --catalog (or --config with a catalog)")
    preprocess = None
    if args.preprocess is not None:
        try:
            preprocess = PreprocessParams.from_dict(json.loads(args.preprocess.read_text()))
        except (OSError, ValueError) as e:
            raise InvalidInputError(f"{args.preprocess} cannot be read: {type(e).__name__}") from e
    out = export_release(args.run, args.out, Catalog.load(catalog_path), preprocess, onnx=not args.no_onnx,
                         encoder_dir=encoder)
    info = json.loads((out / "model.json").read_text())
    for artefact in sorted(p for p in out.iterdir() if p.is_file()):
        print(f"{artefact}  ({artefact.stat().st_size:,} bytes)")
    print(f"release written to {out} ({info['model']}, {info['num_classes']} classes"
          f"{'' if info.get('onnx', {}).get('exported') else '; no model.onnx: ' + str(info.get('onnx', {}).get('reason', ''))})")
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from server.dashboard.cli import cmd_dashboard

    return cmd_dashboard(args)


_COMMANDS = {
    "certs": _certs, "start": _start, "stop": _stop, "register": _register, "unregister": _unregister,
    "run": _run, "status": _status, "export": _export, "dashboard": _dashboard,
}

if __name__ == "__main__":
    sys.exit(main())
