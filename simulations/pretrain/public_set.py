"""Render the public pretraining set: random stem designs in randomised scanner styles.

The set is written in the site layout (``labels.csv``, ``images/``, ``masks/``,
``catalog.json`` of the public designs, ``designs.csv`` of their parameters), so the site
pipeline (ingest, segmentation, QC, crop, resize) preprocesses it exactly as a site
preprocesses its own radiographs. Every image gets its own scanner style (profile,
contrast, gamma, exposure, blur, noise, size, pixel pitch, cups, cement, collimation,
markers) and a random difficulty, so the encoder cannot rely on one site's look. Every
image is a pure function of (seed, design index, image index): a seed writes identical
files, however many processes render them.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from common.parallel import available_cores, ordered_map
from simulations.pretrain.designs import PARAMETER_NAMES, design_vector
from simulations.synth.acquisition import PROFILES, random_style
from simulations.synth.catalog_spec import StemDesign, build_catalog
from simulations.synth.render import render
from simulations.synth.writers import write_mask, write_png

SIZE = (384, 320)  # nominal rows, cols; each image varies around it as a site would
DIFFICULTY = (0.6, 1.5)  # each image's nuisance strength is drawn from this range
_PROFILES = tuple(PROFILES)


def _render_one(job: tuple[StemDesign, int, int, int, str]) -> tuple[str, str]:
    design, seed, j, k, root = job
    rng = np.random.default_rng([seed, j, k])
    difficulty = float(rng.uniform(*DIFFICULTY))
    style = random_style(rng, profile=_PROFILES[int(rng.integers(len(_PROFILES)))], size=SIZE, difficulty=difficulty)
    out = render(design, style, rng, difficulty=difficulty, crop_fraction=0.05)
    stem = f"d{j:04d}_{k:03d}"
    write_png(Path(root) / "images" / f"{stem}.png", out.image, bits=16 if rng.random() < 0.5 else 8)
    write_mask(Path(root) / "masks" / f"{stem}.png", out.mask)
    return f"images/{stem}.png", f"masks/{stem}.png"


def write_public_set(out: Path, designs: Sequence[StemDesign], *, images_per_design: int, seed: int,
                     workers: int | None = None, advance: Callable[[], None] | None = None) -> Path:
    """Render ``images_per_design`` radiographs of every design into ``out`` (site layout).

    Parameters
    ----------
    out
        Folder to write (created).
    designs
        The public designs; their ids are the labels.
    images_per_design
        Radiographs per design.
    seed
        Rendering seed.
    workers
        Rendering processes (default: every core). The files do not depend on it.
    advance
        Called once per image written (a progress bar).
    """
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    build_catalog(tuple(designs)).save(out / "catalog.json")
    jobs = [(d, seed, j, k, str(out)) for j, d in enumerate(designs) for k in range(images_per_design)]
    n_workers = max(1, min(workers or available_cores(), len(jobs)))
    results = ordered_map(_render_one, jobs, n_workers, advance=advance)
    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, lineterminator="\n").writerows(
            [("file", "label"), *((img, job[0].id) for (img, _), job in zip(results, jobs, strict=True))])
    with open(out / "annotations.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, lineterminator="\n").writerows(
            [("file", "mask"), *results])
    with open(out / "designs.csv", "w", newline="", encoding="utf-8") as fh:
        rows = [(d.id, *(f"{v:.6f}" for v in design_vector(d))) for d in designs]
        csv.writer(fh, lineterminator="\n").writerows([("id", *PARAMETER_NAMES), *rows])
    (out / "public_set.json").write_text(json.dumps(
        {"designs": len(designs), "images_per_design": images_per_design, "seed": seed,
         "images": len(jobs)}, indent=2) + "\n", encoding="utf-8")
    return out


def read_design_parameters(folder: Path) -> dict[str, np.ndarray]:
    """Design id -> its parameter vector, from a public set's ``designs.csv``."""
    with open(Path(folder) / "designs.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    return {r[0]: np.asarray([float(v) for v in r[1:]], np.float32) for r in rows[1:]}
