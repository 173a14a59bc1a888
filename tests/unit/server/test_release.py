"""Releases: round trip, calibration, ONNX parity, model card, export from a checkpoint."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from common.calibration import Calibration
from common.catalog import Catalog, ImplantClass
from common.config import RunConfig
from common.errors import ConfigError
from common.metrics import classification_summary
from common.models import build_model
from common.preprocess_params import PreprocessParams
from server.export import export_release
from server.onnx_export import ONNX_TOLERANCE, run_onnx
from server.release import load_release, model_card, write_release

ROOT = Path(__file__).parents[3]
CATALOG = Catalog("hips", "3", (ImplantClass("auralis-a1", "Auralis", "A1"), ImplantClass("bexmed-b2", "Bexmed", "B2"),
                                ImplantClass("corin-c3", "Corin", "C3")))
SIZE = 32


def _arrays(model_name: str, seed: int = 0) -> ArrayRecord:
    torch.manual_seed(seed)
    return ArrayRecord(build_model(model_name, num_classes=len(CATALOG), image_size=SIZE).state_dict())


def _summary() -> dict:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 4)
    probs = rng.dirichlet(np.ones(3), size=12)
    rounds = [{"round": r, "aggregate": {"test-accuracy": 0.3 * r},
               "sites": {"hosp-a": {"status": "ok", "val-accuracy": 0.25 * r, "val-loss": 1.0 / r, "epsilon": 0.7 * r},
                         "maker-b": {"status": "ok", "val-accuracy": 0.2 * r, "val-loss": 1.2 / r, "epsilon": 0.9 * r}}}
              for r in (1, 2)]
    return {"final": classification_summary(labels, probs, CATALOG.ids), "rounds": rounds,
            "sites": {"hosp-a": {"kind": "hospital", "train": 40, "val": 10}, "maker-b": {"kind": "manufacturer", "train": 30, "val": 8}},
            "privacy": {"hosp-a": {"epsilon": 1.4, "delta": 1e-5, "noise_multiplier": 0.8, "steps": 20},
                        "maker-b": {"epsilon": 1.8, "delta": 1e-5, "noise_multiplier": 0.8, "steps": 16}}}


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rel") / "release"
    cfg = RunConfig(model="cnn", image_size=SIZE, num_server_rounds=2, strategy="fedprox")
    cal = Calibration(temperature=1.8, unknown_threshold=0.41, fitted_on=18, method="temperature-lbfgs+q0.05-correct")
    return write_release(out, arrays=_arrays("cnn"), config=cfg, catalog=CATALOG, preprocess=PreprocessParams(image_size=SIZE),
                         summary=_summary(), calibration=cal)


def test_release_round_trips_weights_and_calibration(release):
    # Prepare
    x = torch.rand(3, 1, SIZE, SIZE)
    reference = build_model("cnn", num_classes=3, image_size=SIZE)
    reference.load_state_dict(_arrays("cnn").to_torch_state_dict())
    # Execute
    rel = load_release(release)
    # Assert
    assert torch.allclose(rel.model(x), reference.eval()(x))
    assert rel.calibration.temperature == 1.8 and rel.calibration.unknown_threshold == 0.41
    assert rel.preprocess.image_size == SIZE and rel.catalog == CATALOG
    assert sorted(p.name for p in release.iterdir()) == ["calibration.json", "catalog.json", "model.json", "model.onnx",
                                                         "model.pt", "model_card.md", "preprocess.json"]


def test_onnx_matches_pytorch_within_tolerance(release):
    # Prepare
    rel = load_release(release)
    x = torch.rand(5, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(7))  # another batch size than the export
    # Execute
    got, engine = run_onnx(release / "model.onnx", x.numpy())
    # Assert
    with torch.no_grad():
        assert np.abs(got - rel.model(x).numpy()).max() <= ONNX_TOLERANCE
    info = json.loads((release / "model.json").read_text())["onnx"]
    assert info["exported"] and info["max_abs_diff"] <= ONNX_TOLERANCE and engine == "onnxruntime"
    assert info["opset"] == 20 and info["exporter"] in ("torchscript", "dynamo")


def test_onnx_parity_with_the_reference_evaluator(release):
    from onnx.reference import ReferenceEvaluator

    x = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    got = ReferenceEvaluator(str(release / "model.onnx")).run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - load_release(release).model(x).numpy()).max() <= ONNX_TOLERANCE


@pytest.mark.parametrize("model_name", ["dnn"])
def test_other_architectures_export_within_tolerance(tmp_path, model_name):
    cfg = RunConfig(model=model_name, image_size=SIZE)
    out = write_release(tmp_path, arrays=_arrays(model_name), config=cfg, catalog=CATALOG,
                        preprocess=PreprocessParams(image_size=SIZE))
    info = json.loads((out / "model.json").read_text())["onnx"]
    assert info["exported"], info
    assert info["max_abs_diff"] <= ONNX_TOLERANCE


@pytest.mark.parametrize(
    "needle",
    [
        "## Intended use", "## Limits", "catalog: hips v3 (3 classes", "2 of 2 rounds of `fedprox`",
        "| auralis-a1 | Auralis | A1 | femoral-stem |",  # catalog table
        "| hosp-a | hospital | 40 | 10 | 0.500 | 0.500 |",  # sites: counts + last validation metrics
        "| maker-b | 1.80 | 1e-05 | 0.800 | 16 |",  # privacy: epsilon and delta per site
        "macro one-vs-rest ROC AUC", "| corin-c3 |",  # global + per-class metrics
        "temperature 1.800", "`model.onnx` (opset 20", "ImplantFL 0.1.0",
    ],
)
def test_model_card_holds(release, needle):
    assert needle in (release / "model_card.md").read_text()


@pytest.mark.parametrize(("cal", "flag"), [
    (Calibration(fitted_on=30, method="m", feature_threshold=4.2, feature_metric="ray-distance"),
     "`unknown` when its encoder features' distance to the nearest catalog class (to the class's ray in the "
     "encoder's public whitened space) is above 4.200"),
    (Calibration(fitted_on=30, method="m", feature_threshold=0.76),  # a release calibrated on the cosine
     "`unknown` when its encoder features' similarity to the nearest catalog class is below 0.760"),
    (Calibration(unknown_threshold=0.41, fitted_on=18, method="m"), "`unknown` below top probability 0.410"),
])
def test_model_card_names_the_unknown_flag_its_calibration_fitted(cal, flag):
    info = {"config": RunConfig(dp=False).to_flower(), "model": "cnn", "image_size": 64, "catalog_fingerprint": "x",
            "created": "2025-01-01T00:00:00+00:00", "implantfl_version": "0.1.0"}
    assert flag in model_card(info, CATALOG, {}, calibration=cal)


def test_model_card_without_privacy_or_metrics_says_so():
    info = {"config": RunConfig(dp=False).to_flower(), "model": "cnn", "image_size": 64, "catalog_fingerprint": "x",
            "created": "2025-01-01T00:00:00+00:00", "implantfl_version": "0.1.0"}
    card = model_card(info, CATALOG, {})
    assert "Trained without differential privacy." in card and "no ONNX export" in card


def test_model_card_states_site_level_guarantees_when_the_run_had_them():
    from server.secure_agg import guarantee

    cfg = RunConfig(secure_aggregation=True)
    info = {"config": cfg.to_flower(), "model": "cnn", "image_size": 64, "catalog_fingerprint": "x",
            "created": "2025-01-01T00:00:00+00:00", "implantfl_version": "0.1.0"}
    client_dp = {"mechanism": "fixed-server", "clipping": "fixed", "clipped_at": "server", "noise_multiplier": 1.2,
                 "epsilon": 3.456, "delta": 1e-5, "rounds": 4}
    card = model_card(info, CATALOG, {"client_level_privacy": client_dp, "secure_aggregation": guarantee(cfg)})
    assert "Client-level DP (fixed-server" in card and "epsilon 3.46 at delta 1e-05 over 4 rounds" in card
    assert "Secure aggregation (SecAgg+" in card and "never any single site's update" in card
    assert "Client-level" not in model_card(info, CATALOG, {})


@pytest.mark.parametrize("site_level", [False, True])
def test_export_release_from_a_checkpoint(tmp_path, site_level):
    from server.checkpoint import Checkpoint, save_checkpoint
    from server.history import RoundRecord, RunHistory

    # Prepare: a plain run, and one with client-level DP clipped at the sites under SecAgg+
    extra = {"secure_aggregation": True, "client_dp": "fixed-client"} if site_level else {}
    cfg = RunConfig(model="cnn", num_server_rounds=3, image_size=SIZE, **extra)
    history = RunHistory([RoundRecord(round=1, sites={"hosp-a": {"status": "ok", "train-examples": 40, "val-examples": 9,
                                                                 "epsilon": 0.6, "noise-multiplier": 0.8, "dp-steps": 5,
                                                                 "val-accuracy": 0.5}})])
    meta = {"config": cfg.to_flower(), "catalog-fingerprint": CATALOG.fingerprint(), "strategy": "fedavg"}
    save_checkpoint(tmp_path / "ckpt", Checkpoint(1, _arrays("cnn"), history, meta))
    # Execute
    out = export_release(tmp_path / "ckpt", tmp_path / "rel", CATALOG, None, None, onnx=False)
    # Assert
    rel = load_release(out)
    card = (out / "model_card.md").read_text()
    assert rel.info["image_size"] == SIZE and not (out / "model.onnx").exists()
    assert "1 of 3 rounds" in card and "| hosp-a | 0.60 | 1e-05 |" in card and "| hosp-a |  | 40 | 9 | 0.500 |" in card
    assert ("Client-level DP (fixed-client" in card and "Secure aggregation (SecAgg+" in card) == site_level
    # the release names its run (folder name and round, no server path); the run lists the release
    assert rel.info["run"] == {"checkpoint": "ckpt", "round": 1} and str(tmp_path) not in json.dumps(rel.info["run"])
    index = json.loads((tmp_path / "ckpt" / "releases.json").read_text())
    assert [e["path"] for e in index] == [str(out.resolve())]
    from server.dashboard.runs_view import RunSource, model_card, run_view

    view = run_view(RunSource("ckpt", tmp_path / "ckpt", "deployment"))
    assert view["release"]["model_card"] == "/runs/ckpt/model-card"
    assert model_card(RunSource("ckpt", tmp_path / "ckpt", "deployment")) == card


def test_export_release_refuses_another_catalog_or_an_empty_folder(tmp_path):
    other = Catalog("hips", "4", (ImplantClass("z", "M", "Z"),))
    with pytest.raises(ConfigError, match="no checkpoint"):
        export_release(tmp_path, tmp_path / "rel", other)
    from server.checkpoint import Checkpoint, save_checkpoint
    from server.history import RunHistory

    meta = {"config": RunConfig(image_size=SIZE).to_flower(), "catalog-fingerprint": CATALOG.fingerprint()}
    save_checkpoint(tmp_path / "ckpt", Checkpoint(1, _arrays("cnn"), RunHistory(), meta))
    with pytest.raises(ConfigError, match="catalog"):
        export_release(tmp_path / "ckpt", tmp_path / "rel", other)


def test_server_release_code_loads_no_image_code():
    code = ("import sys, server.release, server.export, server.onnx_export; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'cv2', 'pydicom', 'PIL', 'client'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_onnx_that_disagrees_with_pytorch_is_not_kept(tmp_path, monkeypatch):
    import server.onnx_export as export

    monkeypatch.setattr(export, "run_onnx", lambda path, x: (np.zeros((len(x), 3), np.float32) + 1.0, "stub"))
    monkeypatch.setattr(export, "ATTEMPTS", (("torchscript", True), ("torchscript", False)))  # the fast exporter only
    model = build_model("dnn", num_classes=3, image_size=SIZE)
    info = export.export_onnx(model, tmp_path / "model.onnx", image_size=SIZE)
    assert not info["exported"] and "outputs differ" in info["reason"]
    assert not (tmp_path / "model.onnx").exists()


def test_release_without_the_onnx_package_says_so(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    out = write_release(tmp_path, arrays=_arrays("dnn"), config=RunConfig(model="dnn", image_size=SIZE), catalog=CATALOG,
                        preprocess=PreprocessParams(image_size=SIZE))
    assert not (out / "model.onnx").exists()
    assert "no ONNX export (onnx is not installed)" in (out / "model_card.md").read_text()


def _broken_copy(release: Path, tmp_path: Path, breakage: str) -> Path:
    import shutil

    copy = Path(shutil.copytree(release, tmp_path / "broken"))
    if breakage == "weights":
        (copy / "model.pt").write_bytes(b"not a state dict")
    elif breakage == "catalog":
        Catalog("hips", "4", CATALOG.classes).save(copy / "catalog.json")
    elif breakage == "preprocess":
        (copy / "preprocess.json").write_text(json.dumps(PreprocessParams(image_size=2 * SIZE).to_dict()))
    return copy


@pytest.mark.parametrize(
    ("breakage", "reason"),
    [("weights", "cannot be loaded"), ("catalog", "catalog does not match"),
     ("preprocess", "image size differs")],
)
def test_a_broken_release_is_refused_with_a_reason_that_names_no_path(release, tmp_path, breakage, reason):
    from common.errors import InvalidInputError

    # Prepare
    copy = _broken_copy(release, tmp_path, breakage)
    # Execute
    with pytest.raises(InvalidInputError, match=reason) as err:
        load_release(copy)
    # Assert: the reason travels without the folder's name
    assert str(tmp_path) not in str(err.value) and "broken" not in str(err.value)
