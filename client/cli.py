"""``implantfl-client``: the site's command (check, preprocess, keys, start, predict, ...).

Subcommands are registered in :data:`COMMANDS` (one ``add_<name>(subparsers)`` function
each, defined here) and :data:`MOUNTED_MODULES` (modules with an ``add_parsers(subparsers)``
of their own). Every command returns an exit code; ImplantFL errors (bad configuration,
unknown labels, ...) print one clear line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from common.errors import ImplantFLError

EXIT_CONFIG = 2
EXIT_NOTHING_ACCEPTED = 3  # check: the site has no image it could train on
MOUNTED_MODULES = ("client.site.daemon_cli", "client.bedside.predict_cli", "client.data.segment_cli")


# ---------------------------------------------------------------------------- shared inputs
def _add_site_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, help="the site's data folder (default: [site] data-dir of --config)")
    p.add_argument("--config", type=Path, help="site.toml (labels, preprocessing, cache)")
    p.add_argument("--catalog", type=Path, help="consortium catalog.json (default: <data>/../../catalog.json)")
    p.add_argument("--workers", type=int, default=None,
                   help="decoding processes (default: every available core when there are 32 or more files to decode)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _site_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of :func:`client.data.site_data.load_site` from the flags and --config."""
    from client.site.config import SiteConfig
    from common.catalog import Catalog
    from common.errors import ConfigError
    from common.preprocess_params import PreprocessParams

    cfg = SiteConfig.load(args.config) if args.config else None
    data = args.data or (cfg.data_dir if cfg else None)
    if data is None:
        raise ConfigError("pass --data DIR (or --config site.toml with [site] data-dir)")
    catalog_path = args.catalog or (cfg.catalog_path if cfg else None)
    if catalog_path is None:
        guess = Path(data).resolve().parent.parent / "catalog.json"
        if not guess.is_file():
            raise ConfigError("no catalog: pass --catalog catalog.json or set [site] catalog in --config")
        catalog_path = guess
    return {"site_dir": Path(data), "catalog": Catalog.load(catalog_path),
            "params": cfg.preprocess if cfg else PreprocessParams(),
            "label_map": cfg.label_map if cfg else None, "config_cache": cfg.cache_dir if cfg else None,
            "encoder_path": cfg.encoder_path if cfg else None}


# ---------------------------------------------------------------------------- check
def add_check(sub: Any) -> None:
    p = sub.add_parser("check", help="counts per class, QC rejects per reason, PHI findings (decodes every image)")
    _add_site_args(p)
    p.add_argument("--cache", type=Path, help="reuse / update this cache (default: no cache)")
    p.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    from client.data.site_data import load_site

    inputs = _site_inputs(args)
    inputs.pop("config_cache")
    inputs.pop("encoder_path")
    data = load_site(**inputs, cache_dir=args.cache, progress=not args.json, workers=args.workers)
    report = data.report.to_dict()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report, {c.id: c.display for c in inputs["catalog"]})
    if report["accepted"] == 0:
        reasons = ", ".join(f"{k} {v}" for k, v in report["rejected"].items()) or "no labelled image found"
        print(f"error: no image of this site was accepted ({reasons}): it cannot train", file=sys.stderr)
        return EXIT_NOTHING_ACCEPTED
    return 0


def _print_report(report: dict[str, Any], names: dict[str, str]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="Accepted images per class")
    table.add_column("catalog id")
    table.add_column("implant")
    table.add_column("images", justify="right")
    for cid, n in report["classes"].items():
        table.add_row(cid, names.get(cid, ""), str(n))
    console.print(table)
    console.print(f"accepted: [bold]{report['accepted']}[/bold]")
    rejected = report["rejected"]
    console.print("rejected: " + (", ".join(f"{k} {v}" for k, v in rejected.items()) if rejected else "none"))
    phi = report["phi_findings"]
    console.print("PHI findings (files): " + (", ".join(f"{k} {v}" for k, v in phi.items()) if phi else "none"))
    if phi:
        console.print("[dim]patient fields never leave ingest; burned-in text stays in the pixels: "
                      "review those images before any export[/dim]")


# ---------------------------------------------------------------------------- preprocess
def add_preprocess(sub: Any) -> None:
    p = sub.add_parser("preprocess", help="build the site's cache (a second run on unchanged data does no work)")
    _add_site_args(p)
    p.add_argument("--cache", type=Path, help="cache folder (default: [site] cache-dir of --config)")
    p.add_argument("--image-size", type=int, help="crop size of the cache (default: the app's run config image-size)")
    p.set_defaults(func=cmd_preprocess)


def cmd_preprocess(args: argparse.Namespace) -> int:
    import dataclasses

    from client.data.site_data import load_site
    from common.errors import ConfigError

    inputs = _site_inputs(args)
    config_cache = inputs.pop("config_cache")
    encoder_path = inputs.pop("encoder_path")
    cache = args.cache or config_cache
    if cache is None:
        raise ConfigError("pass --cache DIR (or --config site.toml)")
    # The run's crop size (the app's run config unless --image-size says otherwise): the cache a run will read.
    inputs["params"] = dataclasses.replace(inputs["params"], image_size=args.image_size or _run_image_size())
    data = load_site(**inputs, cache_dir=cache, progress=not args.json, workers=args.workers)
    encoded = _encode(data, encoder_path, inputs["params"], cache)
    if args.json:
        print(json.dumps({**data.report.to_dict(), "processed": data.decoded, "from_cache": data.cached,
                          "image_size": inputs["params"].image_size, "features_encoded": encoded}, indent=2))
    elif data.decoded == 0:
        print(f"cache up to date: nothing to do ({data.cached} files from the cache, "
              f"{data.report.accepted} accepted, {sum(data.report.rejected.values())} rejected)")
    else:
        print(f"cache ready: processed {data.decoded} files ({data.cached} from the cache); "
              f"{data.report.accepted} accepted, {sum(data.report.rejected.values())} rejected")
    if encoded is not None and not args.json:
        print(f"encoder features: {encoded} image(s) encoded, the rest from the feature cache")
    return 0


def _run_image_size() -> int:
    """The image size of the app's run config (``[tool.flwr.app.config]`` beside this code), else RunConfig's."""
    import tomllib

    from common.config import RunConfig

    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    if pyproject.is_file():
        app = tomllib.loads(pyproject.read_text()).get("tool", {}).get("flwr", {}).get("app", {})
        return int(app.get("config", {}).get("image-size", RunConfig().image_size))
    return RunConfig().image_size


def _encode(data: Any, encoder_path: Path | None, params: Any, cache: Path) -> int | None:
    """Fill the feature cache with the site's public encoder (None when the site has none)."""
    if encoder_path is None:
        return None
    from client.data.features import site_features
    from common.encoders import load_encoder

    encoder = load_encoder(encoder_path)
    if encoder.config.image_size != params.image_size:
        return None  # features only exist for the crop size the encoder takes
    return site_features(data, encoder, params=params, cache_dir=cache).encoded


# ---------------------------------------------------------------------------- parser
COMMANDS: tuple[Callable[[Any], None], ...] = (add_check, add_preprocess)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="implantfl-client", description="ImplantFL site client.")
    parser.add_argument("--verbose", action="store_true", help="log progress (files named by token only)")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    for name in MOUNTED_MODULES:
        if importlib.util.find_spec(name) is not None:  # optional parts of an installation
            importlib.import_module(name).add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except ImplantFLError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
