"""Bedside trust end to end: a release trained on shuffled labels is judged unfit, and predict refuses it."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from client.cli import main as client_main
from simulations.runner import SimOptions, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shuffled_run(tmp_path_factory, public_encoder):
    """The smoke federation with every training image given a random catalog class (labels carry no signal)."""
    from common.catalog import Catalog
    from simulations.synth import generate

    root = tmp_path_factory.mktemp("shuffled")
    generate(root / "fed", preset="smoke", seed=0)
    ids = Catalog.load(root / "fed" / "catalog.json").ids
    rng = np.random.default_rng(0)
    for site in (root / "fed" / "sites").iterdir():
        rows = list(csv.reader((site / "labels.csv").open()))
        with (site / "labels.csv").open("w", newline="") as fh:
            csv.writer(fh).writerows([rows[0], *([r[0], str(rng.choice(ids))] for r in rows[1:])])
        (site / "site.toml").unlink(missing_ok=True)  # its label map named the site's own products only
    mp = pytest.MonkeyPatch()
    mp.setenv("IMPLANTFL_CACHE", str(root / "cache"))
    try:
        results = run(SimOptions(preset="smoke", data=root / "fed", encoder=public_encoder, out=root / "run",
                                 progress=False, baseline=False))
    finally:
        mp.undo()
    return root, results


def test_a_release_trained_on_shuffled_labels_is_not_fit_for_use(shuffled_run):
    root, results = shuffled_run
    gate = results["release"]
    assert gate["fit_for_use"] is False and "not better than chance" in gate["reason"]
    assert json.loads((root / "run" / "release" / "model.json").read_text())["release"]["fit_for_use"] is False
    card = (root / "run" / "release" / "model_card.md").read_text()
    assert card.startswith("**NOT FIT FOR CLINICAL USE")


def test_predict_refuses_an_unfit_release_unless_allowed_and_then_warns(shuffled_run, capsys):
    root, _ = shuffled_run
    image = sorted((root / "fed" / "test" / "images").iterdir())[0]
    release = root / "run" / "release"
    # refused
    assert client_main(["predict", str(image), "--model", str(release)]) != 0
    assert "not fit for clinical use" in capsys.readouterr().err
    # allowed: every answer says so, in JSON and text
    assert client_main(["predict", str(image), "--model", str(release), "--allow-unfit", "--set", "0.9", "--json"]) == 0
    [answer] = json.loads(capsys.readouterr().out)
    assert answer["warning"].startswith("NOT FIT FOR CLINICAL USE") and answer["candidates"]["level"] == 0.9
    assert client_main(["predict", str(image), "--model", str(release), "--allow-unfit"]) == 0
    assert "WARNING: NOT FIT FOR CLINICAL USE" in capsys.readouterr().out
    shutil.rmtree(root / "cache", ignore_errors=True)
