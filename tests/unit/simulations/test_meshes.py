"""Catalog designs as meshes, and reading a folder of meshes (a manufacturer's CAD)."""

from __future__ import annotations

import csv
import logging

import numpy as np
import pytest

from common.errors import ConfigError
from simulations.synth.catalog_spec import design
from simulations.xray.mesh_folder import MATERIALS, folder_key, read_mesh_folder
from simulations.xray.stem_mesh import design_mesh, write_design_meshes

trimesh = pytest.importorskip("trimesh")


@pytest.fixture(scope="module")
def meshes(tmp_path_factory):
    out = tmp_path_factory.mktemp("meshes")
    return write_design_meshes(out, [design(i) for i in ("auralis-a1", "auralis-a1c", "dynaflex-d1", "dynaflex-d2",
                                                         "corvant-c2", "corvant-c3")])


def test_a_design_mesh_is_one_closed_outward_solid_of_its_size():
    d = design("auralis-a2")
    mesh = design_mesh(d)
    assert mesh.is_watertight and mesh.volume > 0
    assert mesh.body_count == 1
    height = mesh.bounds[1, 2] - mesh.bounds[0, 2]
    assert 0.9 * d.length * 150 < height < 1.6 * d.length * 150  # shoulder to tip plus neck and head


@pytest.mark.parametrize(("plain", "variant", "more"), [("auralis-a1", "auralis-a1c", True),  # a collar adds metal
                                                        ("dynaflex-d1", "dynaflex-d2", False),  # holes remove it
                                                        ("corvant-c2", "corvant-c3", True)])  # beads add it
def test_the_subtle_variants_differ_in_metal(plain, variant, more):
    a, b = design_mesh(design(plain)).volume, design_mesh(design(variant)).volume
    assert (b > a * 1.005) if more else (b < a * 0.995)


def test_written_meshes_read_back_with_their_materials_and_hashes(meshes):
    designs = read_mesh_folder(meshes)
    assert [d.id for d in designs] == sorted(["auralis-a1", "auralis-a1c", "dynaflex-d1", "dynaflex-d2", "corvant-c2",
                                              "corvant-c3"])
    by_id = {d.id: d for d in designs}
    assert by_id["dynaflex-d1"].material == "stainless steel" and by_id["auralis-a1"].material == "titanium"
    assert by_id["auralis-a1c"].model == "A1 Taper Collared" and by_id["auralis-a1c"].manufacturer == "Auralis"
    assert len({d.sha256 for d in designs}) == len(designs)
    loaded = by_id["corvant-c2"].load()
    assert loaded.is_watertight and loaded.volume > 0
    assert folder_key(designs) == folder_key(read_mesh_folder(meshes))


def test_a_folder_without_designs_csv_is_titanium_of_an_unnamed_maker_and_other_formats_load(tmp_path):
    box = trimesh.creation.box((20, 10, 120))
    box.export(tmp_path / "Stem One.obj")
    inward = trimesh.creation.cylinder(8, 100)
    inward.invert()  # wound inwards: read as the solid it is
    inward.export(tmp_path / "stem_two.ply")
    designs = read_mesh_folder(tmp_path)
    assert [d.id for d in designs] == ["stem-one", "stem_two"]
    assert all(d.material == "titanium" and d.manufacturer == "unnamed" for d in designs)
    assert designs[1].load().volume > 0


def test_a_corrupt_or_open_mesh_is_skipped_with_its_reason(tmp_path, caplog):
    for name in ("a", "b"):
        trimesh.creation.box((20, 10, 120)).export(tmp_path / f"{name}.stl")
    (tmp_path / "broken.stl").write_bytes(b"solid nonsense\n garbage \x00\x01")
    sheet = trimesh.Trimesh(vertices=np.array([[0, 0, 0], [50, 0, 0], [0, 50, 0]], float), faces=[[0, 1, 2]])
    sheet.export(tmp_path / "sheet.stl")
    tiny = trimesh.creation.box((0.2, 0.2, 0.2))  # metres, not millimetres
    tiny.export(tmp_path / "metres.stl")
    with caplog.at_level(logging.WARNING):
        designs = read_mesh_folder(tmp_path)
    assert [d.id for d in designs] == ["a", "b"]
    text = caplog.text
    assert "broken.stl" in text and "sheet.stl" in text and "metres.stl" in text and "millimetres" in text


def test_bad_designs_csv_or_too_few_meshes_stop_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="not a folder"):
        read_mesh_folder(tmp_path / "missing")
    trimesh.creation.box((20, 10, 120)).export(tmp_path / "a.stl")
    with pytest.raises(ConfigError, match="at least two"):
        read_mesh_folder(tmp_path)
    trimesh.creation.box((22, 10, 120)).export(tmp_path / "b.stl")
    rows = [("file", "material"), ("a.stl", "unobtainium")]
    with open(tmp_path / "designs.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    with pytest.raises(ConfigError, match=f"not one of {', '.join(MATERIALS)}"):
        read_mesh_folder(tmp_path)
    with open(tmp_path / "designs.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("file", "material"), ("c.stl", "titanium")])
    with pytest.raises(ConfigError, match="c.stl is not in the folder"):
        read_mesh_folder(tmp_path)


@pytest.mark.parametrize("turn", ["y-up", "upside-down", "head-lateral", "lying"])
def test_a_mesh_exported_in_another_cad_convention_is_read_upright(tmp_path, turn):
    from simulations.xray.mesh_folder import upright

    d = design("bexmed-b1")
    mesh = design_mesh(d)
    assert upright(mesh) is mesh  # the catalog's own meshes are already upright: read unchanged
    rot = trimesh.transformations.rotation_matrix
    turned = mesh.copy()
    turned.apply_transform({"y-up": rot(np.pi / 2, (1, 0, 0)), "upside-down": rot(np.pi, (0, 1, 0)),
                            "head-lateral": rot(np.pi, (0, 0, 1)),
                            "lying": rot(np.pi / 2, (0, 1, 0)) @ rot(np.pi / 2, (1, 0, 0))}[turn])
    turned.export(tmp_path / "b1.stl")
    design_mesh(design("auralis-a1")).export(tmp_path / "a1.stl")
    read = {m.id: m for m in read_mesh_folder(tmp_path)}["b1"].load()
    assert np.allclose(read.bounds, mesh.bounds, atol=1e-3)  # long axis up, head up and medial
