"""A folder of implant meshes (a manufacturer's CAD): one file per design, optional ``designs.csv``.

Layout::

    DIR/<design>.stl | .obj | .ply    one solid per design, millimetres; the file stem is the design id
    DIR/designs.csv                   optional: file,material[,manufacturer,model,component]

``material`` is one of :data:`MATERIALS`; without a ``designs.csv`` every design is
titanium of an unnamed maker. A mesh that cannot be read, is empty or is not a closed
solid is skipped with the reason (a CAD export is public, so naming the file is fine); a
``designs.csv`` that names an unknown material or a missing file stops before any work.
Each design records the SHA-256 of its file, for the encoder's card.

CAD tools disagree on which axis is up. A mesh is turned upright on reading
(:func:`upright`): its longest extent becomes ``z``, the wider end (neck and head) up, the
head medial (``-x``), the thinnest extent anteroposterior (``y``). Only quarter and half turns
are applied, so a mesh already in that convention is read unchanged.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import ConfigError

logger = logging.getLogger(__name__)

EXTENSIONS = (".stl", ".obj", ".ply")
# Elemental mass fractions and density (g/cm3) of the usual implant alloys.
MATERIALS: dict[str, tuple[tuple[str, ...], tuple[float, ...], float]] = {
    "titanium": (("Ti", "Al", "V"), (0.90, 0.06, 0.04), 4.43),  # Ti-6Al-4V
    "cobalt-chrome": (("Co", "Cr", "Mo"), (0.64, 0.29, 0.07), 8.3),  # CoCrMo (ASTM F75)
    "stainless steel": (("Fe", "Cr", "Ni", "Mo"), (0.65, 0.18, 0.14, 0.03), 8.0),  # 316L
}
MIN_VOLUME_MM3 = 100.0
_ID = re.compile(r"[^a-z0-9._-]+")


@dataclass(frozen=True)
class MeshDesign:
    """One design given as a mesh."""

    id: str  # catalog id (the file stem, lower case)
    manufacturer: str
    model: str
    component: str
    material: str  # key of MATERIALS
    path: Path
    sha256: str

    def load(self):
        """The mesh (trimesh, mm), outward-wound and upright."""
        return _read(self.path)

    def record(self) -> dict[str, str]:
        """What a card or a federation records of the design."""
        return {"id": self.id, "file": self.path.name, "material": self.material, "manufacturer": self.manufacturer,
                "sha256": self.sha256}


def _read(path: Path):
    import trimesh

    mesh = trimesh.load(path, force="mesh", process=True)
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise ValueError("no triangles")
    if not mesh.is_watertight:
        trimesh.repair.fill_holes(mesh)
    if not mesh.is_watertight:
        raise ValueError("not a closed solid (open edges)")
    if mesh.volume < 0:
        mesh.invert()
    if mesh.volume < MIN_VOLUME_MM3:
        raise ValueError(f"volume {mesh.volume:.0f} mm3 (millimetres are expected)")
    return upright(mesh)


def upright(mesh):
    """The mesh in the scene's convention (see the module docstring), by axis permutation and sign flips only."""
    v = np.asarray(mesh.vertices, np.float64)
    extent = v.max(0) - v.min(0)
    order = np.argsort(extent)  # thinnest, middle, longest
    rotation = np.zeros((3, 3))
    rotation[0, order[1]] = rotation[1, order[0]] = rotation[2, order[2]] = 1.0  # rows: new x, y, z
    if np.linalg.det(rotation) < 0:
        rotation[1] *= -1.0
    p = v @ rotation.T
    lo, hi = p[:, 2].min(), p[:, 2].max()
    top, bottom = p[p[:, 2] > hi - 0.3 * (hi - lo)], p[p[:, 2] < lo + 0.3 * (hi - lo)]
    if np.ptp(bottom[:, 0]) > np.ptp(top[:, 0]):  # the tip is up: half a turn about y
        rotation = np.diag([-1.0, 1.0, -1.0]) @ rotation
        p = v @ rotation.T
    centre = (p[:, 0].max() + p[:, 0].min()) / 2
    if p[np.argmax(p[:, 2]), 0] > centre:  # the head is lateral: half a turn about z
        rotation = np.diag([-1.0, -1.0, 1.0]) @ rotation
    if np.allclose(rotation, np.eye(3)):
        return mesh
    transform = np.eye(4)
    transform[:3, :3] = rotation
    turned = mesh.copy()
    turned.apply_transform(transform)
    return turned


def _design_rows(folder: Path) -> dict[str, dict[str, str]]:
    path = folder / "designs.csv"
    if not path.exists():
        return {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"file", "material"} <= set(reader.fieldnames):
            raise ConfigError("designs.csv needs the columns file,material[,manufacturer,model,component]")
        rows = {}
        for n, row in enumerate(reader, start=2):
            material = (row.get("material") or "").strip().lower()
            if material not in MATERIALS:
                raise ConfigError(f"designs.csv line {n}: material {row.get('material')!r} is not one of "
                                  f"{', '.join(MATERIALS)}")
            if not (folder / row["file"]).is_file():
                raise ConfigError(f"designs.csv line {n}: {row['file']} is not in the folder")
            rows[row["file"]] = {**row, "material": material}
    return rows


def read_mesh_folder(folder: Path) -> list[MeshDesign]:
    """Every usable design in ``folder``, sorted by id.

    Raises
    ------
    ConfigError
        If the folder does not exist, ``designs.csv`` is malformed, or fewer than two
        meshes can be used.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"meshes: {folder} is not a folder")
    rows = _design_rows(folder)
    designs, skipped = [], []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS):
        try:
            _read(path)
        except Exception as e:  # noqa: BLE001 - any reader failure skips the file with its reason
            skipped.append(path.name)
            logger.warning("skipped mesh %s: %s", path.name, str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
            continue
        row = rows.get(path.name, {})
        design_id = _ID.sub("-", path.stem.lower()).strip("-") or "design"
        designs.append(MeshDesign(
            id=design_id, manufacturer=(row.get("manufacturer") or "").strip() or "unnamed",
            model=(row.get("model") or "").strip() or path.stem, component=(row.get("component") or "").strip()
            or "femoral-stem", material=row.get("material", "titanium"), path=path,
            sha256=hashlib.sha256(path.read_bytes()).hexdigest()))
    ids = [d.id for d in designs]
    if len(set(ids)) != len(ids):
        raise ConfigError("two mesh files name the same design (file stems must differ)")
    if len(designs) < 2:
        raise ConfigError(f"meshes: {folder} holds {len(designs)} usable mesh(es) ({len(skipped)} skipped); "
                          f"at least two designs are needed (files {', '.join(EXTENSIONS)})")
    return sorted(designs, key=lambda d: d.id)


def folder_key(designs: list[MeshDesign]) -> str:
    """A short digest of the designs (ids, materials, file hashes): the render cache's key."""
    text = "\n".join(f"{d.id} {d.material} {d.sha256}" for d in designs)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def mesh_arrays(mesh) -> tuple[np.ndarray, np.ndarray]:
    """(vertices float32 (V, 3), faces int32 (F, 3)) of a trimesh."""
    return np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.int32)
