"""Meshes through gVirtualXray, for real: radiographs, a pretraining set, a federation, a missing install."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from simulations.synth.catalog_spec import design
from simulations.synth.presets import SynthPreset
from simulations.xray.mesh_folder import read_mesh_folder
from simulations.xray.stem_mesh import write_design_meshes

pytestmark = pytest.mark.slow
SMALL = (128, 104)


def _have_gvxr() -> bool:
    try:
        from simulations.xray.runtime import check_available

        check_available()
        return True
    except Exception:  # noqa: BLE001
        return False


needs_gvxr = pytest.mark.skipif(not _have_gvxr(), reason="gVirtualXray is not installed (scripts/setup_env.sh)")


@pytest.fixture(scope="module")
def meshes(tmp_path_factory):
    ids = ("auralis-a1", "bexmed-b2", "corvant-c1")
    return write_design_meshes(tmp_path_factory.mktemp("meshes"), [design(i) for i in ids])


@needs_gvxr
def test_a_radiograph_shows_the_implant_brighter_than_the_patient_with_an_exact_mask(meshes):
    from simulations.xray.scene import random_exposure, render_radiograph

    d = read_mesh_folder(meshes)[0]
    shots = [render_radiograph(d.load(), d.material, np.random.default_rng(s), random_exposure(
        np.random.default_rng(s), SMALL)) for s in (3, 3, 4)]
    a, again, other = shots
    assert a.image.shape == SMALL and a.image.dtype == np.float32 and 0.0 <= a.image.min() < a.image.max() <= 1.0
    metal = a.mask > 0
    assert 0.02 < metal.mean() < 0.5
    assert a.image[metal].mean() > np.median(a.image) + 0.2
    x0, y0, x1, y1 = a.box
    assert metal[y0:y1, x0:x1].sum() == metal.sum()
    assert np.array_equal(a.image, again.image) and np.array_equal(a.mask, again.mask)  # a seed is an image
    assert not np.array_equal(a.image, other.image)
    assert 0.2 < a.mm_per_px < 5.0


@needs_gvxr
def test_a_mesh_set_is_the_same_files_in_one_or_two_processes(meshes, tmp_path):
    from simulations.xray.render_sets import write_mesh_set

    designs = read_mesh_folder(meshes)[:2]
    one = write_mesh_set(tmp_path / "one", designs, images_per_design=2, seed=5, workers=1, size=SMALL)
    two = write_mesh_set(tmp_path / "two", designs, images_per_design=2, seed=5, workers=2, size=SMALL)
    files = sorted(p.relative_to(one) for p in one.rglob("*.png"))
    assert len(files) == 8
    assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files)
    assert (one / "labels.csv").read_text() == (two / "labels.csv").read_text()


@needs_gvxr
def test_pretraining_on_meshes_records_every_mesh_and_reuses_its_renders(meshes, tmp_path):
    from simulations.pretrain.pipeline import PretrainOptions, pretrain

    opts = PretrainOptions(out=tmp_path / "enc", source=f"meshes:{meshes}", images_per_design=4, epochs=1, designs=0,
                           progress=False, cache_root=tmp_path / "cache")
    card = pretrain(opts)  # the meshes alone
    assert card.source["kind"] == "meshes" and card.source["renderer"].startswith("gVirtualXray")
    assert {m["id"]: m["sha256"] for m in card.source["meshes"]} == {d.id: d.sha256 for d in read_mesh_folder(meshes)}
    assert card.source["images"] + card.source["rejected_by_qc"] == 12
    assert card.source["images"] >= 10  # the site pipeline finds the implant in (nearly) every render
    assert card.projection["kind"] == "discriminant" and card.projection["dim"] == 2  # 3 designs: 2 directions
    again = pretrain(PretrainOptions(**{**opts.__dict__, "out": tmp_path / "enc2"}))
    assert again.timing["render_s"] < 1.0 and again.sha256 == card.sha256
    both = pretrain(PretrainOptions(**{**opts.__dict__, "out": tmp_path / "enc3", "designs": 20}))  # + generated
    assert both.source["generated"]["designs"] == 20 and both.source["images"] == card.source["images"]
    assert both.projection["public_classes"] == 23 and both.training["designs"] == 23


@needs_gvxr
def test_a_federation_from_meshes_has_their_catalog_and_passes_the_site_pipeline(meshes, tmp_path):
    from client.data.site_data import load_site
    from common.catalog import Catalog
    from simulations.synth.federation import generate

    preset = SynthPreset(name="tiny", description="test", manufacturers=("X",), manufacturer_images=(6,),
                         hospital_images=(6,), test_per_class=2, size=(256, 224), difficulty=0.5)
    info = generate(tmp_path / "fed", preset=preset, seed=1, meshes=meshes, workers=1)
    assert info["meshes"]["designs"] == 3 and len(info["meshes"]["files"]) == 3
    catalog = Catalog.load(tmp_path / "fed" / "catalog.json")
    assert catalog.ids == [d.id for d in read_mesh_folder(meshes)]
    assert {s["name"] for s in info["sites"]} == {"mfr-auralis", "mfr-bexmed", "mfr-corvant", "hosp-a"}
    from common.preprocess_params import PreprocessParams

    test = load_site(tmp_path / "fed" / "test", catalog=catalog, params=PreprocessParams(image_size=64), val_fraction=0.0)
    assert test.report.accepted >= 5 and set(test.y.tolist()) <= {0, 1, 2}


def test_without_gvxr_the_user_gets_what_to_install_not_a_traceback(meshes, tmp_path, monkeypatch, capsys):
    from simulations import cli
    from simulations.xray import runtime

    monkeypatch.setattr(runtime, "_state", {})
    monkeypatch.setitem(sys.modules, "gvxrPython3", None)  # import fails as on a machine without it
    code = cli.main(["pretrain", "--source", f"meshes:{meshes}", "--out", str(tmp_path / "enc"), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "apt-get install libxcb-res0" in err and "pip install gvxr" in err and "Traceback" not in err
