"""Synthetic hip-implant federation: radiograph-like images, catalog, sites, test set.

``generate(out_dir, preset=..., seed=...)`` writes the layout described in
``docs/data-layout.md`` (``catalog.json``, ``federation.json``, ``sites/<site>/`` and
``test/``); it is deterministic for a (preset, seed). Modules, one concept each:

- ``catalog_spec``: fictional implant designs and the catalog built from them;
- ``geometry``: implant pose, local <-> pixel coordinates;
- ``implant``: stem, neck, head and cup as metal density and mask;
- ``anatomy``: soft tissue, femur and pelvis as attenuation;
- ``acquisition``: per-site scanner styles, exposure, blur, noise;
- ``overlays``: collimation bands and burned-in markers;
- ``render``: one radiograph with its mask and box;
- ``writers``: DICOM and PNG files;
- ``planning``: which site holds which images;
- ``federation``: ``generate``;
- ``presets``: the named configurations.
"""

from simulations.synth.federation import generate
from simulations.synth.presets import PRESETS, SynthPreset, get_preset

__all__ = ["PRESETS", "SynthPreset", "generate", "get_preset"]
