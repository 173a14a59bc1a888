"""Site daemon commands: ``implantfl-client keys`` and ``implantfl-client start``.

``start`` validates the whole site configuration first (:func:`client.site.daemon.prepare`)
and exits 2 with a clear message before any connection is attempted; then it runs
``flower-supernode`` as its child, passes its output through and forwards SIGTERM/SIGINT
to it (a service manager supervises the pair as one), and reads the output for the one
failure a site cannot diagnose alone: a key the SuperLink does not know. Flower says only
"Failed to activate SuperNode" (the cause is in the server's log); ``start`` then says the
key is not registered and which command the operator must run, and exits 3. Command
handlers print to the terminal; the library code they call logs.

Mounted in ``client.cli`` with :func:`add_parsers`; ``python -m client.site.daemon_cli`` works too.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from client.site.daemon import prepare
from common.errors import ConfigError, ImplantFLError


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
    from client.site.keys import create_site_keys

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
    return run_supernode(cmd, env)


NOT_REGISTERED = "Failed to activate SuperNode"  # what flower-supernode prints when the SuperLink refuses its key
EXIT_NOT_REGISTERED = 3


def run_supernode(cmd: list[str], env: dict[str, str]) -> int:
    """Run the SuperNode as a child, pass its output through, explain an unregistered key; its exit code.

    When the SuperNode exits, whatever it left behind (its SuperExec, retrying) is stopped,
    so ``start`` returns instead of waiting on a pipe that never closes (see
    :mod:`client.site.process_tree`). Signals sent to this process are passed on.
    """
    import signal
    import subprocess
    import threading

    from client.site.process_tree import become_subreaper, children, stop_children

    sys.stdout.flush()
    become_subreaper()
    before = frozenset(children())
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            errors="replace")
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: proc.send_signal(signum))
    refused = threading.Event()

    def relay() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if NOT_REGISTERED in line:
                refused.set()

    reader = threading.Thread(target=relay, name="supernode-output", daemon=True)
    reader.start()
    code = proc.wait()
    stop_children(keep=before)
    reader.join(timeout=5)
    if refused.is_set():
        key = _public_key(cmd)
        print(f"error: the SuperLink does not know this site's key. Send {key} to the consortium operator, who "
              f"runs: implantfl-server register --public-key {key.name} --config server.toml "
              "(then start this site again)", file=sys.stderr)
        return EXIT_NOT_REGISTERED
    return code


def _public_key(cmd: list[str]) -> Path:
    flag = "--auth-supernode-private-key"
    private = Path(cmd[cmd.index(flag) + 1]) if flag in cmd else Path("site.key")
    return private.with_suffix(".pub")


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point (``python -m client.site.daemon_cli keys|start ...``)."""
    parser = argparse.ArgumentParser(prog="implantfl-client", description="ImplantFL site daemon")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
