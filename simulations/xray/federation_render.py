"""``implantfl-sim synth --meshes DIR``: a synthetic federation whose catalog is the meshes' designs.

The sites, label skew, file formats and test set are planned as for the drawn generator
(:mod:`simulations.synth.planning`); manufacturer sites are the meshes' manufacturers. Each
image is simulated with gVirtualXray; a site's scanner style sets its tendencies (dose from
its noise level, detector blur, processing curve, how often a cup is in, image size), the
rest is drawn per image.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from simulations.synth.acquisition import SiteStyle
from simulations.synth.presets import SynthPreset
from simulations.synth.render import Rendered
from simulations.xray.mesh_folder import MeshDesign, folder_key, read_mesh_folder
from simulations.xray.render_sets import RENDER_VERSION, loaded, mesh_catalog, renderer_version
from simulations.xray.scene import Exposure, render_radiograph


def mesh_federation(spec: SynthPreset, folder: Path) -> tuple[SynthPreset, tuple[MeshDesign, ...], Any, dict]:
    """(the preset with the meshes' manufacturers, the designs, their catalog, what federation.json records)."""
    from simulations.xray.runtime import check_available

    designs = tuple(read_mesh_folder(folder))
    check_available()
    makers = tuple(dict.fromkeys(d.manufacturer for d in designs))
    if len(makers) == len(spec.manufacturers):
        counts = spec.manufacturer_images
    else:  # spread the preset's manufacturer images evenly over the meshes' makers
        total = sum(spec.manufacturer_images)
        counts = tuple(total // len(makers) + (1 if i < total % len(makers) else 0) for i in range(len(makers)))
    spec = replace(spec, name=f"{spec.name}+meshes", manufacturers=makers, manufacturer_images=counts, classes=None)
    key = folder_key(list(designs))
    extra = {"meshes": {"designs": len(designs), "key": key, "renderer": renderer_version(),
                        "render_version": RENDER_VERSION,
                        "files": [d.record() for d in designs]}}
    return spec, designs, mesh_catalog(designs, f"meshes-{key}"), extra


def site_exposure(style: SiteStyle, rng: np.random.Generator) -> Exposure:
    """One image's exposure around the site's tendencies."""
    photons = float(np.clip(4.0 / max(style.noise, 1e-3) ** 2, 400, 20000) * rng.uniform(0.6, 1.6))
    return Exposure(kvp=float(rng.uniform(60, 90)), filter_mm_al=float(rng.uniform(1.5, 4.0)), photons=photons,
                    blur_px=float(np.clip(style.blur * rng.uniform(0.8, 1.2), 0.3, 2.5)),
                    gamma=float(np.clip(style.gamma * rng.uniform(0.9, 1.1), 0.6, 1.6)),
                    rows=style.rows, cols=style.cols)


def render_mesh_image(design: MeshDesign, style: SiteStyle, rng: np.random.Generator) -> tuple[Rendered, SiteStyle]:
    """(the image as the generator's :class:`Rendered`, the style with this image's pixel pitch)."""
    shot = render_radiograph(loaded(design), design.material, rng, site_exposure(style, rng),
                             cup_probability=style.cups)
    out = Rendered(image=shot.image, mask=shot.mask, box=shot.box, cropped=False, marked=False)
    return out, replace(style, mm_per_px=round(shot.mm_per_px, 4))
