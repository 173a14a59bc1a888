"""Privacy end to end on Flower's simulation engine: client-level DP, refusing sites, and no PHI on the wire.

One short run (smoke data, 2 rounds, 1 local epoch) with five simulated sites: two that
train, one whose budget is spent (``max-epsilon`` tiny), one whose policy refuses the
run's noise, and one whose export is broken (every file a truncated DICOM named after the
patient, in a folder named after the patient). The run asks for client-level DP clipped
at the sites (``client-dp = fixed-client``). The ServerApp's Grid is wrapped to keep every
message the sites send to the server, serialised as Flower sends it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tests.integration.recording import recording_server_app

pytestmark = pytest.mark.slow

CANARY = "CANARY^PATIENT"
CLIP, NOISE = 0.05, 0.5
OVERRIDES = {"head": "none", "num-server-rounds": 2, "local-epochs": 1, "client-dp": "fixed-client",
             "client-dp-noise": NOISE, "client-dp-clip": CLIP}


class RecordingGrid:
    """Flower's Grid, keeping a snapshot of every reply received (with the global arrays it answered)."""

    def __init__(self, grid) -> None:  # noqa: ANN001
        self._grid = grid
        self.replies: list[dict] = []

    def send_and_receive(self, messages, *, timeout=None):  # noqa: ANN001, ANN201
        from flwr.common.serde import message_to_proto

        messages = list(messages)
        sent = _arrays(messages[0]) if messages and messages[0].metadata.message_type == "train" else None
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        for r in replies:  # before validation or aggregation touch them
            site = None if r.has_error() else r.content.config_records.get("site")
            self.replies.append({
                "wire": message_to_proto(r).SerializeToString(),
                "type": r.metadata.message_type, "sent": sent,
                "site": dict(site) if site is not None else {}, "error": r.has_error(),
                "arrays": None if r.has_error() or not r.content.array_records else _arrays(r),
            })
        return replies

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._grid, name)


def _arrays(msg) -> dict[str, np.ndarray]:  # noqa: ANN001
    record = next(iter(msg.content.array_records.values()))
    return {k: v.numpy().copy() for k, v in record.items()}


def _broken_export(root: Path, healthy: Path) -> Path:
    """A site folder named after a patient: truncated DICOMs named after the patient, with the name inside."""
    import pydicom

    site = root / f"{CANARY}-export"
    (site / "images").mkdir(parents=True)
    with open(healthy / "labels.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["file"].endswith(".dcm")][:6]
    out = []
    for k, row in enumerate(rows):
        ds = pydicom.dcmread(healthy / row["file"])
        ds.PatientName = CANARY
        name = f"images/{CANARY}_{k}.dcm"
        ds.save_as(site / name)
        data = (site / name).read_bytes()
        (site / name).write_bytes(data[: len(data) // 3])
        out.append((name, row["label"]))
    with open(site / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("file", "label"), *out])
    return site


@pytest.fixture(scope="module")
def privacy_run(tmp_path_factory):
    import dataclasses

    import server.app as server_app
    import simulations.runner as runner

    base = tmp_path_factory.mktemp("privacy")
    grids: list[RecordingGrid] = []
    strategies: list = []
    make_sites, make_strategy = runner.simulated_sites, server_app.build_strategy

    def sites_with_refusals(fed, **kwargs):  # noqa: ANN001, ANN202
        healthy = make_sites(fed, **kwargs)
        model = healthy[0]
        extra = [
            dataclasses.replace(model, name="budget-site", state_dir=base / "state" / "budget-site",
                                policy={"max-epsilon": 0.01}),
            dataclasses.replace(model, name="policy-site", state_dir=base / "state" / "policy-site",
                                policy={"min-noise-multiplier": 50.0}),
            dataclasses.replace(model, name="broken-site", data_dir=_broken_export(base, model.data_dir),
                                cache_dir=base / "broken-cache", state_dir=base / "state" / "broken-site"),
        ]
        return healthy + extra

    def recording_strategy(cfg):  # noqa: ANN001, ANN202
        strategies.append(make_strategy(cfg))
        return strategies[-1]

    mp = pytest.MonkeyPatch()
    mp.setenv("IMPLANTFL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    mp.setattr(runner, "simulated_sites", sites_with_refusals)
    mp.setattr(server_app, "build_strategy", recording_strategy)
    mp.setattr(server_app, "build_server_app", recording_server_app(grids, RecordingGrid))
    try:
        results = runner.run(runner.SimOptions(preset="smoke", sites=2, overrides=OVERRIDES, out=base / "run",
                                               progress=False, baseline=False))
    finally:
        mp.undo()
    [grid] = grids
    [strategy] = strategies
    return base / "run", results, grid, strategy


def _statuses(results: dict, site: str) -> list[str]:
    return [r["sites"][site]["status"] for r in results["rounds"]]


def test_refusing_and_failing_sites_end_their_part_with_their_reason_while_the_run_completes(privacy_run):
    out, results, _, _ = privacy_run
    on_disk = json.loads((out / "results.json").read_text())
    # The run completed and released a model trained by the two healthy sites every round
    assert [r["round"] for r in on_disk["rounds"]] == [1, 2] and "accuracy" in on_disk["final"]
    assert [r["aggregate"]["sites-used"] for r in on_disk["rounds"]] == [2, 2]
    healthy = sorted(set(on_disk["rounds"][0]["sites"]) - {"budget-site", "policy-site", "broken-site"})
    assert len(healthy) == 2 and all(_statuses(on_disk, s) == ["ok", "ok"] for s in healthy)
    # Each refusing site said why, in every round, and the privacy section counts it
    assert _statuses(on_disk, "budget-site") == ["budget-exhausted"] * 2
    assert "budget" in on_disk["rounds"][0]["sites"]["budget-site"]["reason"]
    assert _statuses(on_disk, "policy-site") == ["policy-refused"] * 2
    assert "noise" in on_disk["rounds"][0]["sites"]["policy-site"]["reason"]
    assert _statuses(on_disk, "broken-site") == ["error"] * 2
    for site in ("budget-site", "policy-site"):
        assert on_disk["privacy"][site]["rounds_refused"] == 2 and on_disk["privacy"][site]["steps"] == 0
    assert all(on_disk["privacy"][s]["epsilon"] > 0 for s in healthy)


def test_client_level_dp_reaches_the_strategy_and_every_site_update_is_clipped(privacy_run):
    from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping

    _, results, grid, strategy = privacy_run
    # The run's noise and bound reach Flower's wrapper
    assert isinstance(strategy, DifferentialPrivacyClientSideFixedClipping)
    assert (strategy.noise_multiplier, strategy.clipping_norm, strategy.num_sampled_clients) == (NOISE, CLIP, 2)
    # Every update a site sent was clipped at the site to the bound (the server clips nothing in this mode)
    norms = []
    for reply in grid.replies:
        if reply["type"] == "train" and reply["arrays"] is not None:
            sent = reply["sent"]
            norms.append(np.sqrt(sum(np.sum((v.astype(np.float64) - sent[k]) ** 2) for k, v in reply["arrays"].items())))
    assert len(norms) == 4 and max(norms) <= CLIP * (1 + 1e-4) and max(norms) == pytest.approx(CLIP, rel=1e-3)
    # results.json states the site-level guarantee
    g = results["client_level_privacy"]
    assert (g["mechanism"], g["noise_multiplier"], g["clip_norm"], g["clipped_at"]) == ("fixed-client", NOISE, CLIP, "site")
    assert (g["sites"], g["sampled_sites_per_round"], g["sample_rate"], g["rounds"]) == (5, 5, 1.0, 2)
    assert g["sites_used_per_round"] == [2, 2] and 0 < g["epsilon"] < float("inf")


def test_no_message_from_a_site_carries_the_planted_patient_name(privacy_run):
    _, results, grid, _ = privacy_run
    healthy = next(s for s in results["rounds"][0]["sites"] if s not in ("budget-site", "policy-site", "broken-site"))
    site_dir = Path(results["config"]["data"]) / "sites" / healthy
    # Prepare check: the sites' files do carry patient names, the broken one in its folder, file names and tags
    assert any(b"CANARY" in p.read_bytes() for p in site_dir.rglob("*.dcm"))
    # Every reply of every kind reached the server: 5 sites x 2 rounds x (train + evaluate)
    assert len(grid.replies) == 20
    assert {r["site"].get("status") for r in grid.replies if r["type"] == "train"} == {
        "ok", "budget-exhausted", "policy-refused", "error"}
    errors = [r for r in grid.replies if r["site"].get("name") == "broken-site"]
    assert len(errors) == 4 and all(r["site"]["status"] == "error" and r["site"]["reason"] for r in errors)
    # Assert: no serialised message (records, metadata, error texts) holds the name or the folder
    for reply in grid.replies:
        assert b"CANARY" not in reply["wire"], (reply["site"], reply["type"])
