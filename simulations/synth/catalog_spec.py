"""Fictional implant designs of the synthetic catalog, and the catalog built from them.

Four fictional manufacturers, 14 femoral stems. Designs differ in length, taper, collar,
neck-shaft angle, neck length, head size, fenestrations, a porous-coated proximal band,
the tip and an anatomic bow. Some pairs differ in one subtle feature only, as real
product lines do:

- ``auralis-a1`` / ``auralis-a1c``: the same stem, collarless vs collared;
- ``bexmed-b1`` / ``bexmed-b1v``: the same stem, neck-shaft angle 135 vs 127 degrees;
- ``corvant-c2`` / ``corvant-c3``: the same stem, smooth vs porous-coated;
- ``dynaflex-d1`` / ``dynaflex-d2``: the same wedge, without vs with fenestrations.

Lengths are in *reference units*: 1.0 is 150 mm. Acetabular cups are not classes; they
are drawn as a paired component with some stems (see :data:`CUPS`).
"""

from __future__ import annotations

from dataclasses import dataclass

from common.catalog import Catalog, ImplantClass

CATALOG_NAME = "synthetic-hip-stems"
CATALOG_VERSION = "2.0"
MM_PER_UNIT = 150.0  # one reference unit in millimetres


@dataclass(frozen=True)
class StemDesign:
    """Geometry of one femoral stem model (lengths in reference units, angles in degrees)."""

    id: str  # catalog id
    manufacturer: str  # fictional manufacturer
    model: str  # product name, as the manufacturer's own library labels it
    length: float  # shoulder to tip
    prox_width: float  # medial-lateral width at the shoulder
    dist_width: float  # width at the tip
    flare: float  # medial (calcar) curve exponent: 1 = straight taper, larger = stronger flare
    collar: bool  # a collar plate resting on the calcar
    neck_angle: float  # neck-shaft (CCD) angle
    neck_length: float  # neck base to head centre
    head: float  # head diameter
    holes: int  # fenestrations in the proximal third
    porous: float  # fraction of the length, from the shoulder, with porous coating (0 = smooth)
    shoulder: float  # rise of the lateral shoulder above the neck base
    tip: str  # distal tip: "round", "bullet" (pointed) or "slot" (round with a distal coronal slot)
    bow: float  # lateral offset of the tip from a straight axis (anatomic bow; negative = medial)


# Families share a silhouette: Auralis straight double-taper wedges with a short neck and
# a round tip; Bexmed bowed anatomic stems with a strongly curved calcar, a high lateral
# shoulder, a long neck and a bullet tip; Corvant cylindrical fit-and-fill stems with a
# distal slot; Dynaflex broad wedges (and a slim and a revision stem).
# id, manufacturer, model, length, prox, dist, flare, collar, neck, neck_len, head, holes, porous, shoulder, tip, bow
_DESIGNS = (
    ("auralis-a1", "Auralis", "A1 Taper", 0.95, 0.20, 0.060, 1.3, False, 135, 0.22, 0.21, 0, 0.00, 0.03, "round", 0.0),
    ("auralis-a1c", "Auralis", "A1 Taper Collared", 0.95, 0.20, 0.060, 1.3, True, 135, 0.22, 0.21, 0, 0.00, 0.03, "round", 0.0),
    ("auralis-a2", "Auralis", "A2 Long", 1.30, 0.20, 0.065, 1.3, False, 131, 0.22, 0.21, 0, 0.00, 0.03, "round", 0.0),
    ("auralis-a3", "Auralis", "A3 Porous", 0.90, 0.24, 0.080, 1.3, False, 135, 0.22, 0.23, 0, 0.40, 0.03, "round", 0.0),
    ("bexmed-b1", "Bexmed", "B1 Classic 135", 1.00, 0.29, 0.065, 3.0, False, 135, 0.31, 0.22, 0, 0.00, 0.10, "bullet", -0.07),
    ("bexmed-b1v", "Bexmed", "B1 Classic 127", 1.00, 0.29, 0.065, 3.0, False, 127, 0.31, 0.22, 0, 0.00, 0.10, "bullet", -0.07),
    ("bexmed-b2", "Bexmed", "B2 Fenestrated", 1.00, 0.29, 0.065, 3.0, False, 135, 0.31, 0.22, 2, 0.00, 0.10, "bullet", -0.07),
    ("corvant-c1", "Corvant", "C1 Short", 0.65, 0.27, 0.130, 1.8, True, 130, 0.25, 0.21, 0, 0.50, 0.04, "round", 0.0),
    ("corvant-c2", "Corvant", "C2 Straight", 1.10, 0.16, 0.110, 1.0, False, 135, 0.26, 0.21, 0, 0.00, 0.00, "slot", 0.0),
    ("corvant-c3", "Corvant", "C3 Straight Porous", 1.10, 0.16, 0.110, 1.0, False, 135, 0.26, 0.21, 0, 0.60, 0.00, "slot", 0.0),
    ("dynaflex-d1", "Dynaflex", "D1 Wedge", 0.85, 0.31, 0.055, 2.0, True, 128, 0.28, 0.24, 0, 0.00, 0.12, "round", 0.0),
    ("dynaflex-d2", "Dynaflex", "D2 Wedge Fenestrated", 0.85, 0.31, 0.055, 2.0, True, 128, 0.28, 0.24, 3, 0.00, 0.12, "round", 0.0),
    ("dynaflex-d3", "Dynaflex", "D3 Slim", 1.05, 0.14, 0.040, 1.2, False, 140, 0.27, 0.19, 0, 0.35, 0.05, "bullet", 0.03),
    ("dynaflex-d4", "Dynaflex", "D4 Revision", 1.50, 0.23, 0.090, 1.3, True, 135, 0.30, 0.24, 0, 0.00, 0.05, "slot", 0.0),
)

DESIGNS: tuple[StemDesign, ...] = tuple(StemDesign(*row) for row in _DESIGNS)


@dataclass(frozen=True)
class CupDesign:
    """A hemispherical acetabular shell drawn around the head (not a catalog class)."""

    name: str  # descriptive only
    clearance: float  # liner thickness between head and shell (radiolucent), reference units
    shell: float  # metal shell thickness, reference units
    screws: int  # screw holes shown as gaps in the dome
    density: float  # metal density relative to the stem (titanium shells are lighter)


CUPS: tuple[CupDesign, ...] = (
    CupDesign("press-fit thin", 0.045, 0.025, 0, 0.85),
    CupDesign("press-fit screwed", 0.050, 0.030, 2, 0.85),
    CupDesign("cemented marker wire", 0.070, 0.008, 0, 1.0),
)


def build_catalog(designs: tuple[StemDesign, ...] = DESIGNS) -> Catalog:
    """The consortium catalog of ``designs``, in their order.

    Parameters
    ----------
    designs
        Stem designs to include; the default is the full synthetic catalog.

    Returns
    -------
    Catalog
        One femoral-stem class per design.
    """
    return Catalog(
        name=CATALOG_NAME,
        version=CATALOG_VERSION,
        classes=tuple(ImplantClass(d.id, d.manufacturer, d.model, "femoral-stem") for d in designs),
    )


def design(class_id: str) -> StemDesign:
    """The design with catalog id ``class_id``.

    Raises
    ------
    KeyError
        If no design has that id.
    """
    for d in DESIGNS:
        if d.id == class_id:
            return d
    raise KeyError(class_id)
