"""Plan a synthetic federation: which site holds which images, and how it acquires them.

Manufacturer sites hold only their own models (mildly unbalanced), hospitals draw their
model prevalence from a Dirichlet distribution, and the test set is balanced, with every
image acquired in the style of one of the sites (a mixture of all scanners).
Manufacturer sites label with product names, hospitals with "<maker> <model>" or with
a stock code, the test set with catalog ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulations.synth.acquisition import PROFILES, SiteStyle, random_style
from simulations.synth.catalog_spec import DESIGNS, StemDesign
from simulations.synth.presets import SynthPreset
from simulations.synth.writers import Export

# Export habits, assigned to sites in order: a manufacturer's product library is often
# exported as PNG; hospitals export from PACS as DICOM (some also as PNG).
MANUFACTURER_EXPORTS = (
    Export(("png",), png_bits=16),
    Export(("dicom-dx",), monochrome1=0.0, bits=14, rle=0.3),
    Export(("dicom-cr", "png"), monochrome1=1.0, bits=12, png_bits=8),
    Export(("png",), png_bits=8),
)
HOSPITAL_EXPORTS = (
    Export(("dicom-cr", "dicom-dx"), monochrome1=0.5, bits=12, rle=0.15),
    Export(("dicom-dx", "png"), monochrome1=0.0, bits=16, png_bits=16, slope=0.5),
    Export(("dicom-cr",), monochrome1=1.0, bits=15, intercept=-1024.0),
    Export(("png",), png_bits=8),
)
TEST_EXPORT = Export(("dicom-cr", "dicom-dx", "png"), monochrome1=0.5, bits=12, png_bits=16, rle=0.1)


@dataclass(frozen=True)
class SitePlan:
    """What one site (or the test set) will hold."""

    name: str  # folder name under sites/ ("test" for the test set)
    kind: str  # "manufacturer" | "hospital" | "test"
    manufacturer: str | None  # the maker of a manufacturer site
    labels: tuple[str, ...]  # catalog id of each image, in file order
    styles: tuple[SiteStyle, ...]  # image k is acquired in styles[k % len(styles)]
    export: Export  # file formats and DICOM settings
    local_names: dict[str, str]  # catalog id -> the site's own label for it


def local_name(d: StemDesign, kind: str, index: int) -> str:
    """The label a site of ``kind`` (the ``index``-th of its kind) uses for design ``d``."""
    if kind == "manufacturer":
        return d.model
    if kind == "test":
        return d.id
    if index % 2 == 0:
        return f"{d.manufacturer} {d.model}"
    return f"{d.manufacturer[:3].upper()}-{d.id.split('-', 1)[-1].upper()}"  # stock code, e.g. AUR-A1C


def preset_designs(preset: SynthPreset) -> tuple[StemDesign, ...]:
    """The catalog designs a preset uses, in catalog order."""
    return tuple(d for d in DESIGNS if preset.classes is None or d.id in preset.classes)


def plan_sites(preset: SynthPreset, seed: int, designs: tuple | None = None) -> list[SitePlan]:
    """Plan every site of ``preset`` and, last, the test set; deterministic for ``seed``.

    Parameters
    ----------
    preset
        The federation to plan.
    seed
        Generation seed.
    designs
        The catalog's designs (anything with ``id``, ``manufacturer`` and ``model``, e.g.
        meshes); default: the preset's designs of the synthetic catalog.

    Returns
    -------
    list[SitePlan]
        Manufacturer sites, hospital sites, then the test set.
    """
    designs = preset_designs(preset) if designs is None else designs
    ids = [d.id for d in designs]
    rng = np.random.default_rng([seed, 7919])
    profiles = [str(p) for p in rng.permutation(list(PROFILES))]
    plans: list[SitePlan] = []

    def style(n: int) -> SiteStyle:
        return random_style(rng, profile=profiles[n % len(profiles)], size=preset.size,
                            difficulty=preset.difficulty)

    for i, (maker, count) in enumerate(zip(preset.manufacturers, preset.manufacturer_images, strict=True)):
        own = [d for d in designs if d.manufacturer == maker]
        if not own:
            continue
        share = rng.dirichlet([4.0] * len(own))
        labels = tuple(str(x) for x in rng.choice([d.id for d in own], size=count, p=share))
        plans.append(SitePlan(f"mfr-{maker.lower()}", "manufacturer", maker, labels, (style(len(plans)),),
                              MANUFACTURER_EXPORTS[i % len(MANUFACTURER_EXPORTS)],
                              {d.id: local_name(d, "manufacturer", i) for d in own}))
    for j, count in enumerate(preset.hospital_images):
        prevalence = rng.dirichlet([preset.dirichlet_alpha] * len(ids))
        labels = tuple(str(x) for x in rng.choice(ids, size=count, p=prevalence))
        present = set(labels)
        plans.append(SitePlan(f"hosp-{chr(ord('a') + j)}", "hospital", None, labels, (style(len(plans)),),
                              HOSPITAL_EXPORTS[j % len(HOSPITAL_EXPORTS)],
                              {d.id: local_name(d, "hospital", j) for d in designs if d.id in present}))
    test_labels = [i for i in ids for _ in range(preset.test_per_class)]
    rng.shuffle(test_labels)
    mixture = tuple(s for p in plans for s in p.styles)
    plans.append(SitePlan("test", "test", None, tuple(test_labels), mixture, TEST_EXPORT, {i: i for i in ids}))
    return plans
