"""One hip radiograph of an implant mesh, simulated with gVirtualXray.

The scene, in millimetres (``x`` lateral, ``y`` anterior, ``z`` superior): soft tissue of
the thigh and hip (water), the femur as a cortical tube with a flared metaphysis and a
greater trochanter, the acetabular bone, the implant in its alloy, and sometimes a metal
acetabular shell around the head. An X-ray tube (tungsten-like Kramers spectrum at a
random kVp, aluminium filtration) shines through it onto a flat detector (point source,
1 m source-object distance). Randomised per image: implant size, leg rotation, in-plane
tilt, patient build, kVp, filtration, dose (Poisson noise on the photon counts), detector
blur, field of view (so the pixel pitch), position in the field, processing curve and
side (a left hip is the mirror image). The mask is exact: where the ray crossed implant
metal (stem, neck, head and shell).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from simulations.xray.mesh_folder import MATERIALS, mesh_arrays
from simulations.xray.runtime import gvxr, quiet

SOURCE_OBJECT_MM = 1000.0
OBJECT_DETECTOR_MM = 150.0
BONE = ("Ca5P3O13H", 1.9)  # hydroxyapatite, cortical density
CANCELLOUS = 1.15
SIZE = (352, 288)  # detector rows, cols: the model sees 64 px crops, so this is plenty


@dataclass(frozen=True)
class Exposure:
    """How one image is taken."""

    kvp: float
    filter_mm_al: float
    photons: float  # dose: mean photons a pixel counts behind the patient (median of the image)
    blur_px: float  # detector blur
    gamma: float  # display processing curve
    rows: int = SIZE[0]
    cols: int = SIZE[1]


def random_exposure(rng: np.random.Generator, size: tuple[int, int] = SIZE) -> Exposure:
    return Exposure(kvp=float(rng.uniform(60, 90)), filter_mm_al=float(rng.uniform(1.5, 4.0)),
                    photons=float(np.exp(rng.uniform(np.log(400), np.log(8000)))),
                    blur_px=float(rng.uniform(0.4, 1.3)), gamma=float(rng.uniform(0.75, 1.35)),
                    rows=size[0], cols=size[1])


@dataclass(frozen=True)
class Radiograph:
    image: np.ndarray  # float32 (rows, cols) in [0, 1], bright = dense
    mask: np.ndarray  # uint8, 255 = implant metal
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) of the mask, exclusive
    mm_per_px: float  # pixel pitch at the patient


def _spectrum(g, kvp: float, filter_mm: float) -> None:
    g.resetBeamSpectrum()
    for kev in np.arange(20.0, kvp, 7.0):  # Kramers' law for the bremsstrahlung, 7 keV bins
        g.addEnergyBinToSpectrum(float(kev + 3.5), "keV", float(max(kvp - kev - 3.5, 0.5) * 1000.0))
    g.addFilter(13, float(filter_mm), "mm")  # aluminium


def _add(g, label: str, mesh, *, outer: bool = False) -> None:
    v, f = mesh_arrays(mesh)
    g.makeTriangularMesh(label, v.ravel().tolist(), f.ravel().tolist(), "mm")
    (g.addPolygonMeshAsOuterSurface if outer else g.addPolygonMeshAsInnerSurface)(label)


def _tube(r_outer: np.ndarray, r_inner: np.ndarray, z: np.ndarray):
    """A solid of revolution about z between an outer and inner radius profile (a long bone)."""
    import trimesh

    profile = np.concatenate([np.stack([r_outer, z], 1), np.stack([r_inner, z], 1)[::-1]])
    mesh = trimesh.creation.revolve(np.vstack([profile, profile[:1]]), sections=40)
    if mesh.volume < 0:
        mesh.invert()
    return mesh


def _anatomy(implant_bounds: np.ndarray, head: np.ndarray, rng: np.random.Generator) -> list[tuple]:
    """(label, mesh, material, density, outer) of the patient around the implant."""
    import trimesh

    top, bottom = implant_bounds[1, 2], implant_bounds[0, 2]
    shaft = rng.uniform(12.0, 16.0)
    cortex = rng.uniform(3.5, 6.5)
    z = np.linspace(bottom - rng.uniform(40, 90), top - 15.0, 24)
    t = np.clip((z - (top - 90.0)) / 75.0, 0.0, 1.0)  # 0 along the shaft, 1 at the metaphysis
    r_out = shaft + t ** 1.5 * rng.uniform(12, 20)
    r_in = np.maximum(r_out - cortex * (1 - 0.6 * t), 2.0)
    femur = _tube(r_out, r_in, z)
    femur.apply_translation((rng.uniform(-2, 2), 0.0, 0.0))
    trochanter = trimesh.creation.icosphere(2, rng.uniform(15, 22))
    trochanter.apply_scale((1.0, 0.9, 1.4))
    trochanter.apply_translation((rng.uniform(22, 32), 0.0, top - rng.uniform(25, 45)))
    pelvis = trimesh.creation.icosphere(2, 1.0)
    pelvis.apply_scale((rng.uniform(40, 55), rng.uniform(15, 25), rng.uniform(45, 60)))
    pelvis.apply_translation(head + np.array([-rng.uniform(15, 30), 0.0, rng.uniform(15, 30)]))
    extent = implant_bounds[1] - implant_bounds[0]
    tissue = trimesh.creation.cylinder(1.0, height=1.0, sections=48)
    tissue.apply_scale((rng.uniform(150, 200), rng.uniform(90, 130), extent[2] + 500.0))
    tissue.apply_translation((rng.uniform(-60, -30), 0.0, (top + bottom) / 2))
    return [("tissue", tissue, "H2O", rng.uniform(0.98, 1.05), True),
            ("femur", femur, BONE[0], BONE[1] * rng.uniform(0.85, 1.05), False),
            ("trochanter", trochanter, BONE[0], CANCELLOUS * rng.uniform(0.5, 0.8), False),
            ("pelvis", pelvis, BONE[0], CANCELLOUS * rng.uniform(0.5, 0.9), False)]


def _cup(head: np.ndarray, head_radius: float, rng: np.random.Generator):
    import trimesh

    inner = head_radius + rng.uniform(4.0, 8.0)
    outer = inner + rng.uniform(2.5, 5.0)
    a = np.linspace(0, np.pi / 2, 12)
    profile = np.concatenate([np.stack([outer * np.sin(a), outer * np.cos(a)], 1),
                              np.stack([inner * np.sin(a), inner * np.cos(a)], 1)[::-1]])
    cup = trimesh.creation.revolve(np.vstack([profile, profile[:1]]), sections=40)
    if cup.volume < 0:
        cup.invert()
    tilt = np.deg2rad(rng.uniform(35, 55))  # opening faces inferolateral
    cup.apply_transform(trimesh.transformations.rotation_matrix(np.pi - tilt, (0, 1, 0)))
    cup.apply_translation(head)
    return cup


def _head(mesh) -> tuple[np.ndarray, float]:
    """Centre and radius of the femoral head: the top of the implant, medial."""
    v = mesh.vertices
    top = v[v[:, 2] > v[:, 2].max() - 1.0].mean(0)
    near = v[np.linalg.norm(v - top, axis=1) < 40.0]
    radius = float(np.clip((near[:, 2].max() - near[:, 2].min()) / 2, 8.0, 22.0))
    return np.array([near[:, 0].mean(), 0.0, v[:, 2].max() - radius]), radius


def render_radiograph(implant, material: str, rng: np.random.Generator, exposure: Exposure | None = None,
                      *, cup_probability: float = 0.4) -> Radiograph:
    """One radiograph of ``implant`` (a trimesh in mm, the catalog's pose convention) in ``material``."""
    import trimesh

    g = gvxr()
    exp = exposure or random_exposure(rng)
    mesh = implant.copy()
    mesh.apply_scale(rng.uniform(0.9, 1.1))
    mesh.apply_transform(trimesh.transformations.rotation_matrix(np.deg2rad(rng.uniform(-15, 15)), (0, 0, 1)))
    mesh.apply_transform(trimesh.transformations.rotation_matrix(np.deg2rad(rng.uniform(-6, 6)), (0, 1, 0)))
    bounds = mesh.bounds
    head, head_radius = _head(mesh)
    parts = _anatomy(bounds, head, rng)
    elements, weights, density = MATERIALS[material]
    metal = [("implant", mesh, elements, weights, density)]
    if rng.random() < cup_probability:
        shell = str(rng.choice(["titanium", "cobalt-chrome"]))
        metal.append(("cup", _cup(head, head_radius, rng), *MATERIALS[shell]))
    # Field of view: the implant fills 55-80% of the height, anywhere in the field.
    extent = np.maximum(bounds[1] - bounds[0], 1.0)
    mag = (SOURCE_OBJECT_MM + OBJECT_DETECTOR_MM) / SOURCE_OBJECT_MM
    fov = max(extent[2] / rng.uniform(0.55, 0.8), extent[0] * exp.rows / exp.cols / 0.85)
    pitch = fov * mag / exp.rows
    centre = (bounds[0] + bounds[1]) / 2
    slack = np.array([exp.cols * pitch / mag - extent[0], fov - extent[2]]) / 2 * 0.9
    view = centre[[0, 2]] + rng.uniform(-1, 1, 2) * np.maximum(slack, 0.0)
    with quiet():
        g.removePolygonMeshesFromSceneGraph()
        g.setSourcePosition(view[0], -SOURCE_OBJECT_MM, view[1], "mm")
        g.usePointSource()
        _spectrum(g, exp.kvp, exp.filter_mm_al)
        g.setDetectorPosition(view[0], OBJECT_DETECTOR_MM, view[1], "mm")
        g.setDetectorUpVector(0, 0, -1)
        g.setDetectorNumberOfPixels(exp.cols, exp.rows)
        g.setDetectorPixelSize(pitch, pitch, "mm")
        for label, m, compound, dens, outer in parts:
            _add(g, label, m, outer=outer)
            g.setCompound(label, compound)
            g.setDensity(label, float(dens), "g/cm3")
        for label, m, els, ws, dens in metal:
            _add(g, label, m)
            g.setMixture(label, list(els), list(ws))
            g.setDensity(label, float(dens), "g/cm3")
        white = np.asarray(g.getWhiteImage(), np.float64)
        fluence = np.asarray(g.computeXRayImage(), np.float64)
        metal_path = sum(np.asarray(g.computeLBuffer(label), np.float64) for label, *_ in metal)
    transmission = np.clip(fluence / np.maximum(white, 1e-12), 1e-9, 1.0)
    transmission = cv2.GaussianBlur(transmission.astype(np.float32), (0, 0), exp.blur_px)
    open_field = exp.photons / float(np.median(transmission))  # photons per pixel without the patient
    counts = rng.poisson(transmission.astype(np.float64) * open_field)
    attenuation = -np.log(np.maximum(counts, 0.5) / open_field)
    lo, hi = np.percentile(attenuation, [0.5, 99.8])
    image = np.clip((attenuation - lo) / max(hi - lo, 1e-6), 0.0, 1.0) ** exp.gamma
    mask = (metal_path > 0).astype(np.uint8) * 255
    if rng.random() < 0.5:  # a left hip
        image, mask = np.fliplr(image), np.fliplr(mask)
    ys, xs = np.nonzero(mask)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) if len(xs) else (0, 0, 0, 0)
    return Radiograph(np.ascontiguousarray(image, np.float32), np.ascontiguousarray(mask), box, pitch / mag)
