"""Generate a whole synthetic federation: sites, labels, annotations, test set, catalog."""

from __future__ import annotations

import csv
import json
import logging
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from simulations.synth.acquisition import SiteStyle, random_style
from simulations.synth.catalog_spec import DESIGNS, StemDesign, build_catalog
from simulations.synth.presets import SynthPreset, get_preset
from simulations.synth.render import render
from simulations.synth.writers import write_dicom, write_png

logger = logging.getLogger(__name__)
GENERATOR_VERSION = "1"


@dataclass(frozen=True)
class SitePlan:
    name: str
    kind: str  # manufacturer | hospital | test
    manufacturer: str | None
    labels: list[str]  # catalog id of each image, in order
    style: SiteStyle
    local_names: dict[str, str]  # catalog id -> the site's own label for it


def _local_name(d: StemDesign, site_kind: str, site_index: int) -> str:
    if site_kind == "manufacturer":
        return d.model
    if site_kind == "test":
        return d.id
    return f"{d.manufacturer} {d.model}" if site_index % 2 == 0 else d.id.upper()


def plan_sites(preset: SynthPreset, seed: int) -> list[SitePlan]:
    designs = [d for d in DESIGNS if preset.classes is None or d.id in preset.classes]
    rng = np.random.default_rng([seed, 7919])
    plans = []
    formats_cycle = [("png",), ("dicom-cr",), ("dicom-dx", "png"), ("dicom-cr", "dicom-dx")]
    for i, maker in enumerate(preset.manufacturers):
        own = [d.id for d in designs if d.manufacturer == maker]
        labels = [own[k % len(own)] for k in range(preset.images_per_manufacturer)]
        rng.shuffle(labels)
        style = random_style(rng, size=preset.size, formats=formats_cycle[i % 4], strength=preset.strength)
        plans.append(SitePlan(f"mfr-{maker.lower()}", "manufacturer", maker, labels, style,
                              {d.id: _local_name(d, "manufacturer", i) for d in designs if d.id in own}))
    ids = [d.id for d in designs]
    for j in range(preset.hospitals):
        prevalence = rng.dirichlet([preset.dirichlet_alpha] * len(ids))
        labels = list(rng.choice(ids, size=preset.images_per_hospital, p=prevalence))
        style = random_style(rng, size=preset.size, formats=formats_cycle[(j + 2) % 4], strength=preset.strength)
        plans.append(SitePlan(f"hosp-{chr(97 + j)}", "hospital", None, [str(x) for x in labels], style,
                              {d.id: _local_name(d, "hospital", j) for d in designs if d.id in set(labels)}))
    test_labels = [d.id for d in designs for _ in range(preset.test_per_class)]
    rng.shuffle(test_labels)
    style = random_style(rng, size=preset.size, formats=("dicom-cr", "dicom-dx", "png"), strength=preset.strength)
    plans.append(SitePlan("test", "test", None, test_labels, style, {i: i for i in ids}))
    return plans


def _write_site(root: Path, plan: SitePlan, preset: SynthPreset, seed: int, site_no: int, advance: Any) -> dict[str, int]:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    by_id = {d.id: d for d in DESIGNS}
    rows, notes, counts = [], [], {}
    for k, label in enumerate(plan.labels):
        rng = np.random.default_rng([seed, site_no, k])
        img, mask, box = render(by_id[label], plan.style, rng, strength=preset.strength, crop_fraction=preset.crop_fraction)
        kind = plan.style.formats[k % len(plan.style.formats)]
        stem = f"img_{k:05d}"
        if kind == "png":
            rel = f"images/{stem}.png"
            write_png(root / rel, img, bits=16 if plan.style.bits > 12 else 8)
        else:
            rel = f"images/{stem}.dcm"
            write_dicom(root / rel, img, modality="CR" if kind == "dicom-cr" else "DX", bits=plan.style.bits,
                        monochrome1=rng.random() < plan.style.monochrome1, mm_per_px=plan.style.mm_per_px,
                        uid_seed=[str(seed), plan.name, str(k)], patient_no=site_no * 10_000 + k, rle=k % 7 == 3)
        mask_rel = f"masks/{stem}.png"
        cv2.imwrite(str(root / mask_rel), mask)
        rows.append((rel, plan.local_names[label]))
        notes.append((rel, *box, mask_rel))
        counts[label] = counts.get(label, 0) + 1
        advance()
    with open(root / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("file", "label"), *rows])
    with open(root / "annotations.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("file", "x0", "y0", "x1", "y1", "mask"), *notes])
    toml = [f'[site]\nname = "{plan.name}"\n', "[labels]"]
    toml += [f'"{local}" = "{cid}"' for cid, local in sorted(plan.local_names.items())]
    (root / "site.toml").write_text("\n".join(toml) + "\n")
    return dict(sorted(counts.items()))


def generate(out_dir: Path, *, preset: str = "hip-consortium", seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """Write a synthetic federation to ``out_dir``; returns the content of federation.json."""
    spec = get_preset(preset)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    catalog = build_catalog(tuple(d for d in DESIGNS if spec.classes is None or d.id in spec.classes))
    catalog.save(out_dir / "catalog.json")
    plans = plan_sites(spec, seed)
    total = sum(len(p.labels) for p in plans)
    info: dict[str, Any] = {"preset": preset, "seed": seed, "generator_version": GENERATOR_VERSION,
                            "image_count": total, "sites": []}
    ctx = _progress(total) if progress else nullcontext(lambda: None)
    with ctx as advance:
        for n, plan in enumerate(plans):
            folder = out_dir / "test" if plan.kind == "test" else out_dir / "sites" / plan.name
            counts = _write_site(folder, plan, spec, seed, n, advance)
            entry = {"name": plan.name, "kind": plan.kind, "manufacturer": plan.manufacturer, "images": len(plan.labels),
                     "classes": counts}
            if plan.kind == "test":
                info["test"] = {"images": len(plan.labels), "classes": counts}
            else:
                info["sites"].append(entry)
    (out_dir / "federation.json").write_text(json.dumps(info, indent=2) + "\n")
    logger.info("generated %d images for %d sites", total, len(plans) - 1)
    return info


def _progress(total: int):  # noqa: ANN202
    from contextlib import contextmanager

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    @contextmanager
    def ctx():  # noqa: ANN202
        with Progress(TextColumn("[bold]generating images"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as p:
            task = p.add_task("gen", total=total)
            yield lambda: p.advance(task)

    return ctx()
