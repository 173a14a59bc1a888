"""``implantfl-client``: the site's command (check, preprocess, keys, start, ...)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from common.errors import ImplantFLError


def _site_inputs(args: argparse.Namespace):  # noqa: ANN202
    """(catalog, label map, preprocess params, cache dir) from --config / --catalog / defaults."""
    from client.site_config import SiteConfig
    from common.catalog import Catalog
    from common.errors import ConfigError
    from common.preprocess_params import PreprocessParams

    cfg = SiteConfig.load(args.config) if args.config else None
    catalog_path = args.catalog or (cfg.catalog if cfg and cfg.catalog else None)
    if catalog_path is None:
        guess = Path(args.data).resolve().parent.parent / "catalog.json"
        if not guess.exists():
            raise ConfigError("no catalog: pass --catalog catalog.json or set [site] catalog in --config")
        catalog_path = guess
    catalog = Catalog.load(catalog_path)
    labels = cfg.labels if cfg else None
    params = cfg.preprocess if cfg else PreprocessParams()
    cache = getattr(args, "cache", None) or (cfg.cache_dir if cfg else None)
    return catalog, labels, params, cache


def cmd_check(args: argparse.Namespace) -> int:
    from client.site_data import load_site

    catalog, labels, params, _ = _site_inputs(args)
    data = load_site(Path(args.data), catalog=catalog, params=params, label_map=labels, cache_dir=None,
                     progress=not args.json)
    report = data.report.to_dict()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="Accepted images per class")
    table.add_column("catalog id")
    table.add_column("implant")
    table.add_column("images", justify="right")
    names = {c.id: c.display for c in catalog}
    for cid, n in report["classes"].items():
        table.add_row(cid, names[cid], str(n))
    console.print(table)
    console.print(f"accepted: [bold]{report['accepted']}[/bold]")
    rejected = report["rejected"]
    console.print("rejected: " + (", ".join(f"{k} {v}" for k, v in rejected.items()) if rejected else "none"))
    phi = report["phi_findings"]
    console.print("PHI findings (files): " + (", ".join(f"{k} {v}" for k, v in phi.items()) if phi else "none")
                  + "  [dim](patient fields never leave ingest; burned-in text stays in pixels, review before export)[/dim]")
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    from client.site_data import load_site

    catalog, labels, params, _ = _site_inputs(args)
    data = load_site(Path(args.data), catalog=catalog, params=params, label_map=labels, cache_dir=Path(args.cache),
                     progress=True)
    print(f"cache ready: {data.report.accepted} images accepted, {sum(data.report.rejected.values())} rejected")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="implantfl-client", description="ImplantFL site client.")
    parser.add_argument("--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, help_ in (("check", cmd_check, "counts per class, QC rejects per reason, PHI findings"),
                              ("preprocess", cmd_preprocess, "build the site's cache")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--data", type=Path, required=True, help="the site's data folder")
        p.add_argument("--config", type=Path, help="site.toml (labels, preprocessing)")
        p.add_argument("--catalog", type=Path, help="consortium catalog.json")
        if name == "preprocess":
            p.add_argument("--cache", type=Path, required=True)
        else:
            p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)
    from client import daemon

    daemon.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except ImplantFLError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
