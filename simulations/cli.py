"""``implantfl-sim``: the researcher's command (synth, run, centralized, compare, privacy-plan)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from common.errors import ConfigError, ImplantFLError
from simulations import pretrain_cli, privacy_plan_cli, segmenter_training


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="hip-consortium", help="experiment preset (simulations/presets)")
    p.add_argument("--data", type=Path, help="federation folder (catalog.json, sites/, test/); default: generate the preset's data")
    p.add_argument("--dataset", metavar="KIND:PATH", help="public data as downloaded: folder:, csv:, kaggle-hip:, mura:")
    p.add_argument("--partition", metavar="SPEC", help="with --dataset: iid:sites=4, dirichlet:sites=4,alpha=0.5, "
                   "quantity:sites=4,beta=0.5, manufacturer, site")
    p.add_argument("--body-part", help="with --dataset mura:...: keep one body part (e.g. XR_WRIST)")
    p.add_argument("--sites", type=int, help="use only the first N sites")
    p.add_argument("--model", help="model registry name (cnn, dnn, ...)")
    p.add_argument("--strategy", help="fedavg, fedprox, fedadam, fedmedian, fedtrimmedavg, krum")
    p.add_argument("--rounds", type=int, help="federated rounds")
    p.add_argument("--local-epochs", type=int)
    p.add_argument("--dp", action=argparse.BooleanOptionalAction, default=None, help="DP-SGD at every site")
    p.add_argument("--noise-multiplier", type=float)
    p.add_argument("--target-epsilon", type=float, help="plan the noise multiplier to reach this epsilon")
    p.add_argument("--encoder", type=Path, help="public encoder folder (implantfl-sim pretrain --out DIR); "
                   "default: the generated-design encoder, pretrained once and cached")
    p.add_argument("--head", help="private part on the encoder: dp-stats (default), linear, mlp, dp-stats+linear, "
                   "finetune, or none (train --model end to end)")
    p.add_argument("--reproducible-noise", action="store_true", default=None,
                   help="seed the DP noise from the run config (bit-reproducible runs; the noise then protects "
                        "nothing against whoever knows the seed)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any run-config key")
    p.add_argument("--seed", type=int, default=0, help="data-generation seed")
    p.add_argument("--state-dir", type=Path, help="per-site privacy ledgers (default <out>/state)")
    p.add_argument("--out", type=Path, help="run directory (default runs/<preset>-<time>)")
    p.add_argument("--json", action="store_true", help="print results.json to stdout, no progress")
    p.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for flag, key in (("model", "model"), ("strategy", "strategy"), ("rounds", "num-server-rounds"),
                      ("local_epochs", "local-epochs"), ("dp", "dp"), ("noise_multiplier", "noise-multiplier"),
                      ("target_epsilon", "target-epsilon"),
                      ("reproducible_noise", "reproducible-noise"), ("head", "head")):
        value = getattr(args, flag, None)
        if value is not None:
            out[key] = value
    for item in args.set:
        if "=" not in item:
            raise ImplantFLError(f"--set takes KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _options(args: argparse.Namespace, *, baseline: bool):  # noqa: ANN202
    from simulations.ray_cluster import cluster_address
    from simulations.runner import SimOptions

    return SimOptions(preset=args.preset, data=args.data, dataset=args.dataset, partition=args.partition,
                      body_part=args.body_part, sites=args.sites, overrides=_overrides(args), seed=args.seed,
                      state_dir=args.state_dir, out=args.out, baseline=baseline, progress=not args.json, verbose=args.verbose,
                      encoder=args.encoder, ray_address=cluster_address(getattr(args, "ray_address", None)),
                      site_cpus=getattr(args, "site_cpus", 1.0), site_gpus=getattr(args, "site_gpus", None),
                      shared_dir=getattr(args, "shared_dir", None))


def cmd_synth(args: argparse.Namespace) -> int:
    from simulations.synth import generate

    if args.write_meshes is not None:
        from simulations.synth.catalog_spec import DESIGNS
        from simulations.synth.planning import preset_designs
        from simulations.synth.presets import get_preset
        from simulations.xray.runtime import check_mesh_tools
        from simulations.xray.stem_mesh import write_design_meshes

        check_mesh_tools()
        designs = DESIGNS if args.preset == "hip-consortium" else preset_designs(get_preset(args.preset))
        write_design_meshes(args.write_meshes, designs)
        print(f"wrote {len(designs)} design meshes (STL, mm) and designs.csv to {args.write_meshes}")
        if args.out is None:
            return 0
    if args.out is None:
        raise ConfigError("synth needs --out (or --write-meshes DIR alone)")
    info = generate(args.out, preset=args.preset, seed=args.seed, progress=not args.json, meshes=args.meshes)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"wrote {info.get('image_count', '?')} images for {len(info.get('sites', []))} sites to {args.out}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from simulations import runner
    from simulations.summary import print_summary

    opts = _options(args, baseline=not args.no_baseline)
    results = runner.run(opts)
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    elif "final" in results:  # a crashed engine leaves only its outcome
        print_summary(results)
    outcome = results.get("outcome", {})
    if outcome.get("status") == "failed":
        print(f"error: the run failed: {outcome.get('reason')}", file=sys.stderr)
        return 1
    return 0


def cmd_centralized(args: argparse.Namespace) -> int:
    from server.report import write_results
    from simulations import runner
    from simulations.centralized import train_centralized

    opts = _options(args, baseline=True)
    opts.overrides.setdefault("head", "none")  # the end-to-end model pooled; a run's results hold the head baselines
    prep = runner.prepare(opts)
    data, test = runner.load_all(prep, progress=not args.json)
    from common.device import pick_device

    dp = bool(args.dp)  # the pooled baseline is non-private unless --dp asks (a preset's dp is for its sites)
    res = train_centralized([d.train() for d in data.values()], (test.x, test.y), prep.cfg, prep.fed.catalog.ids,
                            device=pick_device(), dp=dp)
    results = {"config": {**prep.cfg.to_flower(), "dp": dp, "preset": args.preset, "mode": "centralized"},
               "final": res.final, "accuracy_per_epoch": res.accuracy_per_epoch, "timing": {"wall_s": res.wall_s}}
    if res.privacy is not None:
        results["privacy"] = {"pooled": res.privacy}
    write_results(prep.out, results)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        private = f", DP-SGD epsilon {res.privacy['epsilon']:.2f}" if res.privacy else ", no DP"
        print(f"centralised accuracy {res.final['accuracy']:.4f} (macro F1 {res.final['macro_f1']:.4f}) "
              f"on {res.final['examples']} test images{private}; results in {prep.out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from simulations.summary import compare_runs

    rows = compare_runs(args.runs)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif args.markdown:
        from simulations.summary import markdown_compare

        print(markdown_compare(rows))
    else:
        from simulations.summary import print_compare

        print_compare(rows)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="implantfl-sim", description="Simulate an ImplantFL federation.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a synthetic federation (drawn, or simulated from meshes)")
    p.add_argument("--out", type=Path, help="the federation's folder")
    p.add_argument("--preset", default="hip-consortium")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--meshes", type=Path, metavar="DIR",
                   help="the catalog is these meshes' designs (one STL/OBJ/PLY each, optional designs.csv); every "
                        "image is simulated with gVirtualXray")
    p.add_argument("--write-meshes", type=Path, metavar="DIR",
                   help="write the preset's catalog designs as meshes (STL, mm) with a designs.csv")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("run", help="run a simulated federation (Flower simulation engine)")
    _add_run_flags(p)
    p.add_argument("--no-baseline", action="store_true", help="skip the pooled baseline")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="join this running Ray cluster (default: RAY_ADDRESS if set, else a local Ray instance of "
                        "the run's own, never one found on the machine)")
    p.add_argument("--site-cpus", type=_positive, default=1.0, help="CPUs per simulated site on Ray (default 1)")
    p.add_argument("--site-gpus", type=_non_negative, help="GPUs per simulated site (default 0.5 with CUDA, else 0)")
    p.add_argument("--shared-dir", type=Path, help="data, caches and privacy ledgers here: a path every node of the "
                   "cluster mounts (default: ~/.cache/implantfl and <out>/state)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("centralized", help="the end-to-end model (--model) pooled on the same split "
                       "(every run's results.json also holds its head baselines)")
    _add_run_flags(p)
    p.set_defaults(func=cmd_centralized)

    p = sub.add_parser("compare", help="side-by-side table of runs")
    p.add_argument("runs", nargs="+", type=Path)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true")
    out.add_argument("--markdown", action="store_true", help="a Markdown table (for reports and READMEs)")
    p.set_defaults(func=cmd_compare)

    pretrain_cli.add_parser(sub)
    segmenter_training.add_parser(sub)
    privacy_plan_cli.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except ImplantFLError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
