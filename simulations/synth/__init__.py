"""Synthetic hip-implant federation: radiograph-like images, catalog, sites, test set.

``generate(out_dir, preset=..., seed=...)`` writes the layout described in
docs/data-layout.md. Deterministic for a (preset, seed).
"""

from simulations.synth.federation import generate
from simulations.synth.presets import PRESETS, get_preset

__all__ = ["generate", "PRESETS", "get_preset"]
