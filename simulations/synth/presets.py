"""Synthetic-federation presets: small named configurations, each saying why it exists.

``difficulty`` is the calibration knob: it scales every nuisance at once (pose and
out-of-plane twist, stem-size aspect changes, exposure/gamma jitter, detector noise and
blur). 0 gives clean, centred-looking images; 1 is the default; 1.5 is hard.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import ConfigError


@dataclass(frozen=True)
class SynthPreset:
    """A named synthetic federation."""

    name: str  # what generate(preset=...) and federation.json call it
    description: str  # one line: why this preset exists
    manufacturers: tuple[str, ...]  # one site "mfr-<name>" each, holding only that maker's models
    manufacturer_images: tuple[int, ...]  # images per manufacturer site, same order
    hospital_images: tuple[int, ...]  # one hospital site per entry (hosp-a, hosp-b, ...): its images
    test_per_class: int  # balanced held-out global test set: images per class
    size: tuple[int, int]  # nominal (rows, cols); each site varies around it within 256-448 px
    classes: tuple[str, ...] | None = None  # catalog subset (ids); None = the full catalog
    dirichlet_alpha: float = 0.5  # hospital label skew: Dirichlet concentration (smaller = more skewed)
    difficulty: float = 1.0  # nuisance strength, the calibration knob (see module docstring)
    crop_fraction: float = 0.05  # fraction of images whose implant is partly out of frame

    def __post_init__(self) -> None:
        if len(self.manufacturer_images) != len(self.manufacturers):
            raise ConfigError(f"preset {self.name}: one image count per manufacturer is needed")
        if min((*self.manufacturer_images, *self.hospital_images, self.test_per_class), default=1) < 1:
            raise ConfigError(f"preset {self.name}: every site needs at least one image")
        if not 0.0 <= self.difficulty <= 3.0:
            raise ConfigError(f"preset {self.name}: difficulty must be between 0 and 3")
        if not 0.0 <= self.crop_fraction <= 0.5:
            raise ConfigError(f"preset {self.name}: crop-fraction must be between 0 and 0.5")
        if self.dirichlet_alpha <= 0:
            raise ConfigError(f"preset {self.name}: dirichlet-alpha must be positive")

    @property
    def site_images(self) -> int:
        """Images over all sites (without the test set)."""
        return sum(self.manufacturer_images) + sum(self.hospital_images)


PRESETS: dict[str, SynthPreset] = {
    p.name: p
    for p in (
        # The default consortium of the design: every manufacturer holds only its own models
        # (extreme label skew), hospitals hold skewed mixes acquired on their own scanners.
        # 1,600 site images + 476 test images, generated in well under a minute on one core.
        SynthPreset(
            name="hip-consortium",
            description="4 manufacturer sites (own models only) + 4 hospitals with skewed prevalence and "
            "their own scanners; 14 stem models, 1,600 site images, balanced 476-image test set",
            manufacturers=("Auralis", "Bexmed", "Corvant", "Dynaflex"),
            manufacturer_images=(160, 130, 150, 180),
            hospital_images=(300, 240, 260, 180),
            test_per_class=34,
            size=(384, 320),
        ),
        # The smallest federation that still has a manufacturer site, two hospitals, DICOM
        # (both photometric interpretations, CR and DX) and PNG: for tests and a first try.
        SynthPreset(
            name="smoke",
            description="tiny federation for tests: 1 manufacturer + 2 hospitals, 6 classes, 40 images "
            "per site, 60 test images; generates in a few seconds",
            manufacturers=("Auralis",),
            manufacturer_images=(40,),
            hospital_images=(40, 40),
            test_per_class=10,
            size=(256, 256),
            # Six clearly different designs (the subtle pairs are the default preset's job).
            classes=("auralis-a1", "auralis-a2", "bexmed-b2", "corvant-c1", "dynaflex-d1", "dynaflex-d4"),
            dirichlet_alpha=2.0,
            # Tests must see a few DP rounds learn on 120 images: milder nuisances than the default.
            difficulty=0.3,
        ),
    )
}


def get_preset(name: str) -> SynthPreset:
    """The preset called ``name``.

    Raises
    ------
    ConfigError
        If there is no such preset; the message lists the valid names.
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown synthetic preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}") from None
