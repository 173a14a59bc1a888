"""Synthetic-federation presets: each says why it exists."""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import ConfigError


@dataclass(frozen=True)
class SynthPreset:
    name: str
    description: str
    manufacturers: tuple[str, ...]  # one manufacturer site per name, holding only its own models
    hospitals: int  # hospital sites with mixed, skewed prevalence
    images_per_manufacturer: int
    images_per_hospital: int
    test_per_class: int  # balanced held-out global test set
    size: tuple[int, int]  # nominal (rows, cols); each site varies around it
    classes: tuple[str, ...] | None = None  # catalog subset; None = all 14 stems
    dirichlet_alpha: float = 0.7  # hospital label skew (smaller = more skewed)
    strength: float = 1.0  # nuisance strength: pose, exposure, noise, blur
    crop_fraction: float = 0.05  # fraction of images with the implant partly out of frame


PRESETS: dict[str, SynthPreset] = {
    p.name: p
    for p in (
        SynthPreset(
            name="hip-consortium",
            description="Default: 4 manufacturer sites (own models only) + 4 hospitals with skewed prevalence "
            "and their own scanners; 14 stem models, ~1,600 site images, 476 test images.",
            manufacturers=("Auralis", "Bexmed", "Corvant", "Dynaflex"),
            hospitals=4,
            images_per_manufacturer=150,
            images_per_hospital=250,
            test_per_class=34,
            size=(320, 256),
        ),
        SynthPreset(
            name="smoke",
            description="Tiny federation for tests and a first try: 1 manufacturer + 2 hospitals, 6 classes, "
            "~40 images per site; generates in a few seconds.",
            manufacturers=("Auralis",),
            hospitals=2,
            images_per_manufacturer=40,
            images_per_hospital=40,
            test_per_class=10,
            size=(224, 192),
            classes=("auralis-a1", "auralis-a1c", "auralis-a2", "auralis-a3", "bexmed-b1", "corvant-c2"),
            dirichlet_alpha=2.0,
        ),
    )
}


def get_preset(name: str) -> SynthPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown synthetic preset {name!r}; choose one of {', '.join(sorted(PRESETS))}") from None
