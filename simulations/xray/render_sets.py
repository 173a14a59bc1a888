"""Render a folder of implant meshes into a labelled radiograph set (the site layout).

Written like the generator's public set (``labels.csv``, ``images/``, ``masks/``,
``annotations.csv``, ``catalog.json``) so the site pipeline preprocesses it exactly as a
site's own radiographs. Images are 16-bit PNGs holding 12-bit values (as many PACS
exports write them) or 8-bit PNGs, half each. Every image is a pure function of (seed,
design index, image index); processes render in parallel, each with its own OpenGL context.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from common.catalog import Catalog, ImplantClass
from common.parallel import available_cores, ordered_map
from simulations.synth.writers import write_mask, write_png
from simulations.xray.mesh_folder import MeshDesign
from simulations.xray.scene import SIZE, random_exposure, render_radiograph

RENDER_VERSION = 2  # bump when the scene, the exposure model or how meshes are read changes the images
_meshes: dict[str, object] = {}  # per process: loaded meshes by file hash


def mesh_catalog(designs: Sequence[MeshDesign], name: str) -> Catalog:
    """The catalog of ``designs``, in their order."""
    return Catalog(name=name, version="1", classes=tuple(ImplantClass(d.id, d.manufacturer, d.model, d.component)
                                                          for d in designs))


def loaded(design: MeshDesign):
    """The design's mesh, read once per process."""
    if design.sha256 not in _meshes:
        _meshes[design.sha256] = design.load()
    return _meshes[design.sha256]


def _render_one(job: tuple[MeshDesign, int, int, int, str, tuple[int, int]]) -> tuple[str, str, tuple[int, ...]]:
    design, seed, j, k, root, size = job
    rng = np.random.default_rng([seed, j, k, 17])
    shot = render_radiograph(loaded(design), design.material, rng, random_exposure(rng, size))
    stem = f"m{j:03d}_{k:04d}"
    write_png(Path(root) / "images" / f"{stem}.png", shot.image, bits=12 if k % 2 == 0 else 8)
    write_mask(Path(root) / "masks" / f"{stem}.png", shot.mask)
    return f"images/{stem}.png", f"masks/{stem}.png", shot.box


def write_mesh_set(out: Path, designs: Sequence[MeshDesign], *, images_per_design: int, seed: int,
                   workers: int | None = None, size: tuple[int, int] = SIZE,
                   advance: Callable[[], None] | None = None) -> Path:
    """Render ``images_per_design`` radiographs of every mesh into ``out`` (site layout); returns ``out``."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    mesh_catalog(designs, "meshes").save(out / "catalog.json")
    jobs = [(d, seed, j, k, str(out), size) for j, d in enumerate(designs) for k in range(images_per_design)]
    n_workers = max(1, min(workers or available_cores(), len(jobs)))
    results = ordered_map(_render_one, jobs, n_workers, chunksize=4, advance=advance, context=spawn_context())
    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, lineterminator="\n").writerows(
            [("file", "label"), *((img, job[0].id) for (img, _, _), job in zip(results, jobs, strict=True))])
    with open(out / "annotations.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, lineterminator="\n").writerows(
            [("file", "x0", "y0", "x1", "y1", "mask"), *((img, *box, mask) for img, mask, box in results)])
    (out / "render_set.json").write_text(json.dumps(
        {"renderer": renderer_version(), "render_version": RENDER_VERSION, "designs": len(designs),
         "images_per_design": images_per_design, "seed": seed, "images": len(jobs),
         "meshes": [d.record() for d in designs]},
        indent=2) + "\n", encoding="utf-8")
    return out


def spawn_context():
    """Worker processes for rendering start fresh: a process forked after an OpenGL context was made hangs."""
    import multiprocessing

    return multiprocessing.get_context("spawn")


def renderer_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"gVirtualXray {version('gvxr')}"
    except PackageNotFoundError:
        return "gVirtualXray"
