"""Fictional implant designs of the synthetic catalog and the catalog built from them.

Four fictional manufacturers, 14 femoral stems. Designs differ in length, taper, collar,
neck angle, head size, fenestrations and a porous-coated proximal band; some pairs differ
in one subtle feature only (collared vs collarless, neck angle 127 vs 135 degrees).
"""

from __future__ import annotations

from dataclasses import dataclass

from common.catalog import Catalog, ImplantClass

CATALOG_NAME = "synthetic-hip-stems"
CATALOG_VERSION = "1.0"


@dataclass(frozen=True)
class StemDesign:
    id: str  # catalog id
    manufacturer: str
    model: str
    length: float  # stem length, in units of the reference length (1.0 ~ 165 mm)
    prox_width: float  # proximal width / reference length
    dist_width: float  # distal width / reference length
    collar: bool  # a collar plate at the neck-stem junction
    neck_angle: float  # neck-shaft angle, degrees
    head: float  # head diameter / reference length
    holes: int  # fenestrations in the proximal third
    porous: float  # fraction of the length with a porous-coated texture (0 = smooth)
    shoulder: float  # lateral shoulder rise / reference length


# (id, manufacturer, model, length, prox, dist, collar, neck, head, holes, porous, shoulder)
_DESIGNS = [
    ("auralis-a1", "Auralis", "A1 Taper", 0.95, 0.105, 0.050, False, 135, 0.17, 0, 0.00, 0.03),
    ("auralis-a1c", "Auralis", "A1 Taper Collared", 0.95, 0.105, 0.050, True, 135, 0.17, 0, 0.00, 0.03),
    ("auralis-a2", "Auralis", "A2 Long", 1.20, 0.100, 0.045, False, 130, 0.17, 0, 0.00, 0.02),
    ("auralis-a3", "Auralis", "A3 Porous", 0.95, 0.110, 0.055, False, 135, 0.19, 0, 0.40, 0.03),
    ("bexmed-b1", "Bexmed", "B1 Classic 135", 1.00, 0.120, 0.040, False, 135, 0.20, 0, 0.00, 0.05),
    ("bexmed-b1v", "Bexmed", "B1 Classic 127", 1.00, 0.120, 0.040, False, 127, 0.20, 0, 0.00, 0.05),
    ("bexmed-b2", "Bexmed", "B2 Fenestrated", 1.00, 0.120, 0.045, False, 135, 0.20, 2, 0.00, 0.05),
    ("corvant-c1", "Corvant", "C1 Short", 0.70, 0.130, 0.075, True, 132, 0.18, 0, 0.50, 0.02),
    ("corvant-c2", "Corvant", "C2 Straight", 1.05, 0.085, 0.075, False, 135, 0.18, 0, 0.00, 0.00),
    ("corvant-c3", "Corvant", "C3 Straight Porous", 1.05, 0.085, 0.075, False, 135, 0.18, 0, 0.60, 0.00),
    ("dynaflex-d1", "Dynaflex", "D1 Wedge", 0.90, 0.140, 0.045, True, 130, 0.22, 0, 0.00, 0.06),
    ("dynaflex-d2", "Dynaflex", "D2 Wedge Fenestrated", 0.90, 0.140, 0.045, True, 130, 0.22, 3, 0.00, 0.06),
    ("dynaflex-d3", "Dynaflex", "D3 Slim", 1.10, 0.095, 0.035, False, 138, 0.16, 0, 0.25, 0.04),
    ("dynaflex-d4", "Dynaflex", "D4 Revision", 1.40, 0.110, 0.060, True, 135, 0.22, 0, 0.00, 0.04),
]

DESIGNS: tuple[StemDesign, ...] = tuple(StemDesign(*d) for d in _DESIGNS)


def build_catalog(designs: tuple[StemDesign, ...] = DESIGNS) -> Catalog:
    return Catalog(
        name=CATALOG_NAME,
        version=CATALOG_VERSION,
        classes=tuple(ImplantClass(d.id, d.manufacturer, d.model, "femoral-stem") for d in designs),
    )


def design(class_id: str) -> StemDesign:
    for d in DESIGNS:
        if d.id == class_id:
            return d
    raise KeyError(class_id)
