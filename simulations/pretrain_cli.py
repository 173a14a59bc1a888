"""``implantfl-sim pretrain``: build a public encoder (``encoder.pt`` + ``encoder.json``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    from common.encoders import ARCHS

    p = sub.add_parser("pretrain", help="train a public encoder on public data only (encoder.pt + encoder.json)",
                       description="Train (or fit) a frozen feature extractor on public data only. The default "
                                   "source renders random stem designs that are disjoint from the consortium "
                                   "catalog; meshes:DIR renders manufacturers' CAD (one STL/OBJ/PLY per design) "
                                   "with gVirtualXray; a consortium can point it at public sets as downloaded.")
    p.add_argument("--out", type=Path, required=True, help="folder for encoder.pt and encoder.json")
    p.add_argument("--source", default="generated",
                   help="generated (default) | meshes:DIR | folder:PATH | csv:PATH | kaggle-hip:PATH | mura:PATH")
    p.add_argument("--arch", default="implant-cnn", choices=ARCHS, help="backbone (implant-cnn is trained here)")
    p.add_argument("--weights", type=Path, help="resnet*/densenet*: a state dict the consortium already has")
    p.add_argument("--seed", type=int, default=0, help="rendering and training seed (a seed gives the same encoder)")
    p.add_argument("--designs", type=int, default=300,
                   help="generated public designs (with meshes: added beside them; 0 = the meshes alone)")
    p.add_argument("--images-per-design", type=int,
                   help="generated and meshes: radiographs per design (default 16 generated, 60 meshes)")
    p.add_argument("--epochs", type=int, default=15, help="implant-cnn: training passes")
    p.add_argument("--image-size", type=int, default=64, help="the run's image-size")
    p.add_argument("--projection-dim", type=int, default=16, help="feature dimension after the public projection")
    p.add_argument("--json", action="store_true", help="print encoder.json, no progress")
    p.set_defaults(func=cmd_pretrain)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from simulations.pretrain.pipeline import PretrainOptions, describe, pretrain

    opts = PretrainOptions(out=args.out, source=args.source, arch=args.arch, weights=args.weights, seed=args.seed,
                           designs=args.designs, images_per_design=args.images_per_design, epochs=args.epochs,
                           image_size=args.image_size, projection_dim=args.projection_dim, progress=not args.json)
    card = pretrain(opts)
    if args.json:
        print(json.dumps(card.to_dict(), indent=2))
    else:
        print(f"wrote {args.out}/encoder.pt and encoder.json: {describe(card)}")
        print(f"use it with: implantfl-sim run --encoder {args.out}   (sha256 {card.sha256})")
    return 0
