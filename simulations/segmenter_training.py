"""``implantfl-sim train-segmenter``: a U-Net implant segmenter trained on public renders and their exact masks.

No consortium image is read: the training images are the generator's public designs
(disjoint from the catalog, as for the encoder) and, with ``--meshes DIR``, simulated
radiographs of meshes, each with its exact metal mask. Training is not private and need
not be. A tenth of the images (whole designs) is held out; the card records their IoU.
"""

from __future__ import annotations

import argparse
import csv
import time
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from common.errors import ConfigError

BATCH = 8


def _pairs(folder: Path) -> list[tuple[Path, Path, str]]:
    with open(folder / "annotations.csv", newline="", encoding="utf-8") as fh:
        notes = {r["file"]: r["mask"] for r in csv.DictReader(fh)}
    with open(folder / "labels.csv", newline="", encoding="utf-8") as fh:
        return [(folder / r["file"], folder / notes[r["file"]], r["label"]) for r in csv.DictReader(fh)
                if r["file"] in notes]


def load_pairs(folders: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images (N, SIDE, SIDE), masks (N, SIDE, SIDE) in {0, 1}, design labels) through the site ingest."""
    from client.data.ingest import IngestError, read_image
    from client.data.learned_segmentation import network_input
    from client.data.stored_image import as_array
    from common.preprocess_params import PreprocessParams

    params = PreprocessParams()
    xs, ys, labels = [], [], []
    for folder in folders:
        for image_path, mask_path, label in _pairs(folder):
            try:
                image = as_array(read_image(image_path, params).image)
            except IngestError:
                continue
            mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
            if mask is None or mask.shape != image.shape:
                continue
            xs.append(network_input(image))
            ys.append((network_input(mask.astype(np.float32) / 255.0) > 0.5).astype(np.float32))
            labels.append(f"{folder.name}/{label}")
    if len(xs) < 20:
        raise ConfigError(f"only {len(xs)} usable training images for the segmenter")
    return np.stack(xs), np.stack(ys), np.asarray(labels)


def iou(prob: np.ndarray, truth: np.ndarray) -> float:
    a, b = prob > 0.5, truth > 0.5
    return float((a & b).sum() / max(1, (a | b).sum()))


def train(x: np.ndarray, y: np.ndarray, groups: np.ndarray, *, epochs: int, seed: int) -> tuple[object, dict]:
    """Train the U-Net; returns (model, what the card records)."""
    import torch
    from monai.losses import DiceCELoss

    from client.data.learned_segmentation import build_unet

    rng = np.random.default_rng(seed)
    names = np.unique(groups)
    held = set(rng.choice(names, size=max(1, len(names) // 10), replace=False).tolist())
    val = np.array([g in held for g in groups])
    torch.manual_seed(seed)
    model = build_unet()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    loss_fn = DiceCELoss(sigmoid=True)
    xt, yt = torch.from_numpy(x[~val, None]), torch.from_numpy(y[~val, None])
    losses = []
    for _ in range(epochs):
        model.train()
        order = torch.from_numpy(rng.permutation(len(xt)))
        total = 0.0
        for i in range(0, len(order), BATCH):
            idx = order[i:i + BATCH]
            xb, yb = xt[idx], yt[idx]
            if rng.random() < 0.5:  # a left hip is the mirror image
                xb, yb = xb.flip(-1), yb.flip(-1)
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(round(total / len(xt), 4))
    model.eval()
    with torch.no_grad():
        prob = torch.sigmoid(model(torch.from_numpy(x[val, None]))).numpy()[:, 0]
    val_iou = float(np.mean([iou(p, t) for p, t in zip(prob, y[val], strict=True)]))
    return model, {"epochs": epochs, "seed": seed, "train_images": int((~val).sum()), "val_images": int(val.sum()),
                   "val_iou_at_network_side": round(val_iou, 4), "loss_per_epoch": losses}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-segmenter", help="train the U-Net implant segmenter on public renders and their masks",
                       description="Train a MONAI U-Net on public renders only (the generator's public designs, "
                                   "optionally meshes simulated with gVirtualXray) with their exact masks.")
    p.add_argument("--out", type=Path, required=True, help="folder for segmenter.pt and segmenter.json")
    p.add_argument("--designs", type=int, default=100, help="public generated designs")
    p.add_argument("--images-per-design", type=int, default=6, help="renders per design")
    p.add_argument("--meshes", type=Path, metavar="DIR", help="also renders of these meshes (gVirtualXray)")
    p.add_argument("--mesh-images", type=int, default=20, help="renders per mesh with --meshes")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    card = train_segmenter(args.out, designs=args.designs, images_per_design=args.images_per_design,
                           meshes=args.meshes, mesh_images=args.mesh_images, epochs=args.epochs, seed=args.seed)
    print(f"wrote {args.out}/segmenter.pt (sha256 {card['sha256'][:12]}): held-out IoU "
          f"{card['training']['val_iou_at_network_side']:.3f} on {card['training']['val_images']} images, "
          f"{card['timing']['total_s']:.0f} s")
    return 0


def train_segmenter(out: Path, *, designs: int = 100, images_per_design: int = 6, meshes: Path | None = None,
                    mesh_images: int = 20, epochs: int = 6, seed: int = 0, cache_root: Path | None = None) -> dict:
    """Render (cached) or reuse the public sets, train, write the segmenter and its card."""
    import shutil

    from client.data.learned_segmentation import save_segmenter
    from simulations.federation import default_cache_root
    from simulations.pretrain.designs import random_designs
    from simulations.pretrain.public_set import write_public_set

    t0 = time.monotonic()
    root = (cache_root or default_cache_root()) / "public"
    folders = []
    folder = root / f"segmenter-generated-s{seed}-{designs}x{images_per_design}"
    if not (folder / "public_set.json").exists():
        shutil.rmtree(folder, ignore_errors=True)
        write_public_set(folder, random_designs(designs, seed=seed), images_per_design=images_per_design, seed=seed)
    folders.append(folder)
    source: dict = {"generated": {"designs": designs, "images_per_design": images_per_design, "seed": seed}}
    if meshes is not None:
        from simulations.xray.mesh_folder import folder_key, read_mesh_folder
        from simulations.xray.render_sets import RENDER_VERSION, write_mesh_set
        from simulations.xray.runtime import check_available

        mesh_designs = read_mesh_folder(meshes)
        folder = root / f"segmenter-meshes-v{RENDER_VERSION}-{folder_key(mesh_designs)}-s{seed}-{mesh_images}"
        if not (folder / "render_set.json").exists():
            check_available()
            shutil.rmtree(folder, ignore_errors=True)
            write_mesh_set(folder, mesh_designs, images_per_design=mesh_images, seed=seed + 1000)
        folders.append(folder)
        source["meshes"] = {"designs": len(mesh_designs), "images_per_design": mesh_images,
                            "sha256": {d.id: d.sha256 for d in mesh_designs}}
    render_s = time.monotonic() - t0
    x, y, groups = load_pairs(folders)
    model, training = train(x, y, groups, epochs=epochs, seed=seed)
    card = {"source": source, "training": training, "excludes": "every consortium image (public renders only)",
            "timing": {"render_s": round(render_s, 1), "total_s": round(time.monotonic() - t0, 1)},
            "created": datetime.now(UTC).isoformat(timespec="seconds")}
    return save_segmenter(model, out, card)


DEFAULT_VERSION = 1  # bump when the default recipe changes


def ensure_default_segmenter(cache_root: Path | None = None) -> Path:
    """The default U-Net (generated public designs, seed 0), trained once and cached."""
    from simulations.federation import default_cache_root

    root = (cache_root or default_cache_root()) / "segmenters" / f"unet-v{DEFAULT_VERSION}"
    if not (root / "segmenter.json").exists():
        partial = root.with_name(root.name + ".partial")
        train_segmenter(partial, cache_root=cache_root)
        partial.rename(root)
    return root
