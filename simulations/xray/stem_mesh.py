"""A catalog design as a solid triangle mesh in millimetres, as a manufacturer's CAD would give it.

The mesh is built from the same :class:`~simulations.synth.catalog_spec.StemDesign`
parameters the 2-D generator draws: the body is the design's outline (with its
fenestrations and distal slot cut through) extruded in the anteroposterior direction and
tapered towards the tip, the neck a cylinder at the neck-shaft angle, the head a sphere,
the collar a plate, a porous coating a band of beads along the body's edges. The parts are
united into one closed, outward-wound solid (``manifold3d``). Axes: ``x`` lateral, ``y``
anterior, ``z`` superior; the origin is the stem's shoulder centre; a right hip.

:func:`write_design_meshes` writes one STL per design and a ``designs.csv`` (file,
material, manufacturer, model, component), the layout ``pretrain --source meshes:DIR`` and
``synth --meshes DIR`` read.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from simulations.synth.catalog_spec import MM_PER_UNIT, StemDesign
from simulations.synth.implant import (
    NECK_BASE_WIDTH,
    TRUNNION_WIDTH,
    _collar,
    axis_offset,
    head_centre,
    neck_axis,
    stem_outline,
)

# A material per fictional manufacturer: what its stems would be made of (cementless titanium, cemented
# cobalt-chrome or stainless steel). Only the attenuation differs.
MATERIAL_BY_MAKER = {"Auralis": "titanium", "Bexmed": "cobalt-chrome", "Corvant": "titanium",
                     "Dynaflex": "stainless steel"}
BEAD_RADIUS_MM = 1.4
TIP_TAPER = 0.6  # anteroposterior thickness at the tip relative to the shoulder


def _to_3d(points_2d: np.ndarray) -> np.ndarray:
    """Local (lateral, down) reference units -> (x, z) millimetres."""
    p = np.asarray(points_2d, np.float64) * MM_PER_UNIT
    return np.stack([p[:, 0], -p[:, 1]], 1)


def _extrude(polygon, thickness: float):
    """A shapely polygon in the (x, z) plane extruded symmetrically along y."""
    import trimesh

    mesh = trimesh.creation.extrude_polygon(polygon, thickness)
    v = mesh.vertices.copy()
    mesh = trimesh.Trimesh(np.stack([v[:, 0], v[:, 2] - thickness / 2, v[:, 1]], 1), mesh.faces, process=True)
    if mesh.volume < 0:  # swapping two axes mirrored the winding
        mesh.invert()
    return mesh


def body_thickness(d: StemDesign) -> float:
    """Anteroposterior thickness at the shoulder, mm."""
    return float(np.clip(0.5 * d.prox_width * MM_PER_UNIT, 9.0, 18.0))


def _body(d: StemDesign):
    from shapely.geometry import Point, Polygon

    shape = Polygon(_to_3d(stem_outline(d, 48))).buffer(0)
    if d.tip == "slot":
        x = d.bow * 0.75
        slot = np.array([[x - 0.011, d.length * 0.72], [x + 0.011, d.length * 0.72],
                         [x + 0.011, d.length + 0.2], [x - 0.011, d.length + 0.2]])
        shape = shape.difference(Polygon(_to_3d(slot)))
    for k in range(d.holes):
        y = 0.13 + 0.1 * k
        half = (d.prox_width - d.dist_width) / 2 * (1 - y / d.length) + d.dist_width / 2
        r = min(half * 0.32, 0.022) * MM_PER_UNIT
        cx, cz = _to_3d(np.array([[float(axis_offset(d, y)), y]]))[0]
        hole = Point(0, 0).buffer(1.0, 24)
        from shapely import affinity

        shape = shape.difference(affinity.translate(affinity.scale(hole, r, r * 1.9), cx, cz))
    if shape.geom_type != "Polygon":  # keep the largest piece (a cut never separates the body in the catalog)
        shape = max(shape.geoms, key=lambda g: g.area)
    mesh = _extrude(shape, body_thickness(d))
    length = d.length * MM_PER_UNIT
    v = mesh.vertices
    taper = 1.0 - (1.0 - TIP_TAPER) * np.clip(-v[:, 2] / length, 0.0, 1.0)
    mesh.vertices = np.stack([v[:, 0], v[:, 1] * taper, v[:, 2]], 1)
    return mesh


def _beads(d: StemDesign):
    """Beads along both edges of the porous-coated band (deterministic per design)."""
    import trimesh

    rng = np.random.default_rng(int(hashlib.sha256(d.id.encode()).hexdigest()[:8], 16))
    outline = stem_outline(d, 60)
    band = outline[(outline[:, 1] >= 0) & (outline[:, 1] <= d.length * d.porous)]
    half = body_thickness(d) / 2
    parts = []
    for x, z in _to_3d(band):
        for y in (-half * 0.5, 0.0, half * 0.5):
            s = trimesh.creation.icosphere(1, BEAD_RADIUS_MM * rng.uniform(0.8, 1.2))
            s.apply_translation((x + rng.normal(0, 0.4), y, z + rng.normal(0, 0.4)))
            parts.append(s)
    return parts


def design_mesh(d: StemDesign):
    """The design as one closed trimesh solid (mm): body, neck, head, collar and coating united."""
    import trimesh

    parts = [_body(d)]
    base, u = neck_axis(d)
    start, end = _to_3d(np.array([base - u * 0.05, base + u * d.neck_length]))
    radius = (NECK_BASE_WIDTH + TRUNNION_WIDTH) / 4 * MM_PER_UNIT
    parts.append(trimesh.creation.cylinder(radius, segment=[(start[0], 0, start[1]), (end[0], 0, end[1])],
                                           sections=32))
    hx, hz = _to_3d(head_centre(d)[None])[0]
    head = trimesh.creation.icosphere(3, d.head / 2 * MM_PER_UNIT)
    head.apply_translation((hx, 0.0, hz))
    parts.append(head)
    if d.collar:
        from shapely.geometry import Polygon

        parts.append(_extrude(Polygon(_to_3d(_collar(d))), body_thickness(d) * 1.15))
    if d.porous > 0:
        parts += _beads(d)
    solid = trimesh.boolean.union(parts, engine="manifold")
    solid.fix_normals()
    return solid


def write_design_meshes(out: Path, designs: Sequence[StemDesign], *, fmt: str = "stl") -> Path:
    """One ``<design id>.<fmt>`` per design and a ``designs.csv`` into ``out``; returns ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for d in designs:
        name = f"{d.id}.{fmt}"
        design_mesh(d).export(out / name)
        rows.append((name, MATERIAL_BY_MAKER.get(d.manufacturer, "titanium"), d.manufacturer, d.model,
                     "femoral-stem"))
    with open(out / "designs.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, lineterminator="\n").writerows([("file", "material", "manufacturer", "model", "component"),
                                                       *rows])
    return out
