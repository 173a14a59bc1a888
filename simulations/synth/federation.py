"""Generate a whole synthetic federation: catalog, sites, labels, annotations, test set.

Output layout (a contract read by the client pipeline, see docs/data-layout.md)::

    OUT/catalog.json  OUT/federation.json
    OUT/sites/<site>/{site.toml, labels.csv, annotations.csv, images/, masks/}
    OUT/test/         same layout; labels are catalog ids

Every image is a pure function of (preset, seed, site, index), so a (preset, seed) gives
byte-identical files. With ``meshes`` (a folder of implant meshes, see
:mod:`simulations.xray.mesh_folder`) the catalog is the meshes' designs and every image is
simulated with gVirtualXray (:mod:`simulations.xray.scene`) instead of drawn: the same sites,
label skew, file formats and test set, a second, more realistic generator.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from common.parallel import default_workers, ordered_map
from simulations.synth.catalog_spec import StemDesign, build_catalog
from simulations.synth.planning import SitePlan, plan_sites, preset_designs
from simulations.synth.presets import SynthPreset, get_preset
from simulations.synth.render import render
from simulations.synth.writers import DicomIdentity, write_dicom, write_mask, write_png

logger = logging.getLogger(__name__)
GENERATOR_VERSION = "2"
_GOLDEN = 0.6180339887  # low-discrepancy sequence: fractions of files get a setting evenly


def _evenly(k: int, fraction: float) -> bool:
    """Whether file ``k`` is among an evenly spread ``fraction`` of files."""
    return (k * _GOLDEN) % 1.0 < fraction


def _write_image(root: Path, plan: SitePlan, design: StemDesign, *, preset: SynthPreset, seed: int,
                 site_no: int, k: int) -> tuple[str, tuple[Any, ...]]:
    """Render and write image ``k`` of a site and its mask; returns (file, annotation row)."""
    rng = np.random.default_rng([seed, site_no, k])
    style = plan.styles[k % len(plan.styles)]
    if isinstance(design, StemDesign):
        out = render(design, style, rng, difficulty=preset.difficulty, crop_fraction=preset.crop_fraction)
    else:  # a mesh: simulated with gVirtualXray at the site's image size
        from simulations.xray.federation_render import render_mesh_image

        out, style = render_mesh_image(design, style, rng)
    kind = plan.export.formats[k % len(plan.export.formats)]
    stem = f"img_{k:05d}"
    if kind == "png":
        rel = f"images/{stem}.png"
        write_png(root / rel, out.image, bits=plan.export.png_bits)
    else:
        rel = f"images/{stem}.dcm"
        extra = np.random.default_rng([seed, site_no, k, 1])
        who = DicomIdentity(
            uid_seed=(str(seed), preset.name, plan.name, str(k)),
            patient_no=site_no * 100_000 + k,
            study_date=f"20{int(extra.integers(15, 25))}{int(extra.integers(1, 13)):02d}{int(extra.integers(1, 29)):02d}",
            institution=plan.name,
            burned_in=out.marked,
        )
        write_dicom(root / rel, out.image, modality="CR" if kind == "dicom-cr" else "DX", export=plan.export,
                    monochrome1=_evenly(k, plan.export.monochrome1), mm_per_px=style.mm_per_px, who=who,
                    rle=_evenly(k + 7, plan.export.rle))
    mask_rel = f"masks/{stem}.png"
    write_mask(root / mask_rel, out.mask)
    return rel, (rel, *out.box, mask_rel)


def _write_job(job: tuple[Path, SitePlan, StemDesign, SynthPreset, int, int, int]) -> tuple[str, tuple[Any, ...]]:
    root, plan, design, preset, seed, site_no, k = job
    return _write_image(root, plan, design, preset=preset, seed=seed, site_no=site_no, k=k)


def _write_images(jobs: list[tuple[Path, SitePlan, StemDesign, SynthPreset, int, int, int]], workers: int,
                  advance: Callable[[], None]) -> list[tuple[str, tuple[Any, ...]]]:
    """Every image of every site, in job order; each image depends only on its own job (seeded per image)."""
    context = None
    if workers > 1 and not all(isinstance(job[2], StemDesign) for job in jobs):  # meshes: fresh processes
        from simulations.xray.render_sets import spawn_context

        context = spawn_context()
    return ordered_map(_write_job, jobs, workers, advance=advance, context=context)


def _finish_site(root: Path, plan: SitePlan, written: list[tuple[str, tuple[Any, ...]]]) -> dict[str, int]:
    """Write a site's labels, annotations and site.toml; returns its class counts."""
    rows = [(rel, plan.local_names[label]) for (rel, _), label in zip(written, plan.labels, strict=True)]
    notes = [note for _, note in written]
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, lineterminator="\n").writerows([("file", "label"), *rows])
    with open(root / "annotations.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, lineterminator="\n").writerows([("file", "x0", "y0", "x1", "y1", "mask"), *notes])
    toml = [f"[site]\nname = {json.dumps(plan.name)}\n", "[labels]"]
    toml += [f"{json.dumps(local)} = {json.dumps(cid)}" for cid, local in sorted(plan.local_names.items())]
    (root / "site.toml").write_text("\n".join(toml) + "\n", encoding="utf-8")
    counts: dict[str, int] = {}
    for label in plan.labels:
        counts[label] = counts.get(label, 0) + 1
    return dict(sorted(counts.items()))


@contextmanager
def _progress(total: int, enabled: bool) -> Iterator[Callable[[], None]]:
    """A ``rich`` progress bar's advance callback (a no-op when disabled)."""
    if not enabled:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]synthesising radiographs"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn()) as bar:
        task = bar.add_task("synth", total=total)
        yield lambda: bar.advance(task)


def generate(out_dir: Path, *, preset: str | SynthPreset = "hip-consortium", seed: int = 0,
             progress: bool = False, workers: int | None = None, meshes: Path | None = None) -> dict[str, Any]:
    """Write a synthetic federation to ``out_dir``.

    Parameters
    ----------
    out_dir
        Output folder (created; existing files of the same names are overwritten).
    preset
        A preset name from :data:`simulations.synth.presets.PRESETS`, or a
        :class:`~simulations.synth.presets.SynthPreset` (e.g. a calibrated variant made
        with ``dataclasses.replace``).
    seed
        Generation seed: the same (preset, seed) writes byte-identical files.
    progress
        Show a ``rich`` progress bar.
    workers
        Processes rendering in parallel; None: every available core for 32 or more
        images. The files are byte-identical whatever the number.
    meshes
        A folder of implant meshes: the catalog is their designs, each image a gVirtualXray
        simulation (manufacturer sites are the meshes' manufacturers).

    Returns
    -------
    dict
        The content of ``federation.json``.

    Raises
    ------
    ConfigError
        If the preset name is unknown, or the meshes cannot be used.
    """
    spec = get_preset(preset) if isinstance(preset, str) else preset
    out_dir = Path(out_dir)
    chosen: tuple[Any, ...] = preset_designs(spec)
    extra: dict[str, Any] = {}
    if meshes is not None:
        from simulations.xray.federation_render import mesh_federation

        spec, chosen, catalog, extra = mesh_federation(spec, Path(meshes))
    else:
        catalog = build_catalog(chosen)
    out_dir.mkdir(parents=True, exist_ok=True)
    catalog.save(out_dir / "catalog.json")
    plans = plan_sites(spec, seed, chosen)
    total = sum(len(p.labels) for p in plans)
    info: dict[str, Any] = {"preset": spec.name, "seed": seed, "generator_version": GENERATOR_VERSION,
                            "image_count": total, **extra, "sites": []}
    logger.info("generating %d images for %d sites (preset %s, seed %d)", total, len(plans) - 1, spec.name, seed)
    folders = [out_dir / "test" if plan.kind == "test" else out_dir / "sites" / plan.name for plan in plans]
    designs = {d.id: d for d in chosen}
    jobs = []
    for n, (plan, folder) in enumerate(zip(plans, folders, strict=True)):
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "masks").mkdir(exist_ok=True)
        jobs += [(folder, plan, designs[label], spec, seed, n, k) for k, label in enumerate(plan.labels)]
    with _progress(total, progress) as advance:
        written = _write_images(jobs, workers if workers is not None else default_workers(len(jobs)), advance)
    start = 0
    for plan, folder in zip(plans, folders, strict=True):
        counts = _finish_site(folder, plan, written[start:start + len(plan.labels)])
        start += len(plan.labels)
        if plan.kind == "test":
            info["test"] = {"images": len(plan.labels), "classes": counts}
        else:
            info["sites"].append({"name": plan.name, "kind": plan.kind, "manufacturer": plan.manufacturer,
                                  "images": len(plan.labels), "classes": counts})
    (out_dir / "federation.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info
