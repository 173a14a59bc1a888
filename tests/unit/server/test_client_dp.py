"""Client-level DP: config checks, Flower's wrappers in our round loop, the site-side clipping mod, the guarantee."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
)

from client.app import client_dp_mod
from common.config import RunConfig
from common.errors import ConfigError
from server.client_dp import client_dp_guarantee, user_level_epsilon
from server.loop import LoopState, run_rounds
from server.strategy import build_strategy
from tests.conftest import reply_message
from tests.unit.server.test_loop import FakeGrid

CFG = RunConfig(num_server_rounds=1, fraction_evaluate=0.0, min_fit_sites=2, min_available_sites=2,
                round_timeout_s=30.0, client_dp="fixed-server", client_dp_noise=0.0, client_dp_clip=100.0)
GLOBAL = {"w": np.zeros((40, 50), np.float32), "b": np.zeros(50, np.float32)}


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Flower's Message() reads the running task's identity, which a real ServerApp process sets."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1 if attr != "_node_id" else 0)


def _content(arrays: dict[str, np.ndarray] | None, *, site: str, examples: int = 10, status: str = "ok") -> RecordDict:
    content = RecordDict({
        "metrics": MetricRecord({"num-examples": examples, "train-loss": 0.5, "train-accuracy": 0.5}),
        "site": ConfigRecord({"name": site, "status": status, "reason": "" if status == "ok" else "budget spent"}),
    })
    if arrays is not None:
        content["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    return content


def _received(msg: Message) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in next(iter(msg.content.array_records.values())).items()}


def step(site: str, size: float, *, examples: int = 10):  # noqa: ANN201
    """A site that moves every weight by ``size``."""
    return lambda msg: _content({k: v + size for k, v in _received(msg).items()}, site=site, examples=examples)


def refuses(site: str):  # noqa: ANN201
    return lambda msg: _content(None, site=site, status="budget-exhausted")


def _run(grid: FakeGrid, cfg: RunConfig) -> LoopState:
    state = LoopState(arrays=ArrayRecord({k: Array(v.copy()) for k, v in GLOBAL.items()}))
    return run_rounds(grid, build_strategy(cfg), cfg, state, send_config=cfg.to_flower())


def _new(state: LoopState) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in state.arrays.items()}


N_WEIGHTS = sum(v.size for v in GLOBAL.values())


# ------------------------------------------------------------------ config and construction
@pytest.mark.parametrize(
    ("mode", "wrapper"),
    [
        ("fixed-server", DifferentialPrivacyServerSideFixedClipping),
        ("fixed-client", DifferentialPrivacyClientSideFixedClipping),
        ("adaptive-server", DifferentialPrivacyServerSideAdaptiveClipping),
        ("adaptive-client", DifferentialPrivacyClientSideAdaptiveClipping),
    ],
)
def test_each_mode_wraps_the_strategy_with_the_runs_noise_clip_and_sampled_sites(mode, wrapper):
    # Prepare
    cfg = RunConfig.from_flower({"client-dp": mode, "client-dp-noise": 0.7, "client-dp-clip": 2.5,
                                 "client-dp-sampled-sites": 4, "client-dp-count-stddev": 1.0, "strategy": "fedprox"})
    # Execute
    strategy = build_strategy(cfg)
    # Assert: server-side clipping sits inside a guard against unchanged models
    if mode.endswith("-server"):
        strategy = strategy.dp
    assert type(strategy) is wrapper
    assert strategy.clipping_norm == 2.5 and strategy.num_sampled_clients == 4
    if mode.startswith("fixed"):
        assert strategy.noise_multiplier == 0.7
    else:  # Flower splits the noise between the update and the clipped count (Andrew et al.)
        assert strategy.noise_multiplier == pytest.approx((0.7**-2 - 2.0**-2) ** -0.5)
        assert strategy.clipped_count_stddev == 1.0


def test_without_client_dp_the_strategy_is_not_wrapped():
    assert type(build_strategy(RunConfig())).__name__ == "FedAvg"


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"client-dp": "local"}, "choose one of"),
        ({"client-dp": "fixed-server", "strategy": "fedmedian"}, "averages updates"),
        ({"client-dp": "fixed-client", "update-compression": "int8"}, "update-compression = none"),
        ({"client-dp": "adaptive-server", "client-dp-noise": 1.0}, "client-dp-count-stddev"),
        ({"client-dp": "fixed-server", "client-dp-clip": 0.0}, "client-dp-clip"),
        ({"secure-aggregation": True, "strategy": "krum"}, "only averages updates"),
        ({"secure-aggregation": True, "update-compression": "fp16"}, "update-compression = none"),
        ({"secure-aggregation": True, "client-dp": "fixed-server"}, "hides from the server"),
        ({"secure-aggregation": True, "client-dp": "adaptive-client", "client-dp-noise": 0.01}, "fixed-client only"),
        ({"secure-aggregation": True, "min-fit-sites": 1}, "min-fit-sites >= 2"),
        ({"secure-aggregation": True, "secagg-quantization-range": 2**30}, "secagg-quantization-range"),
    ],
)
def test_client_dp_and_secure_aggregation_settings_are_checked_at_config_time(values, fragment):
    with pytest.raises(ConfigError, match=fragment):
        RunConfig.from_flower(values)


def test_client_dp_with_compression_is_fine_when_the_server_clips():
    assert RunConfig.from_flower({"client-dp": "fixed-server", "update-compression": "int8"}).client_dp_sites == 2


# ------------------------------------------------------------------ through the round loop
def test_server_side_clipping_averages_clipped_updates_with_equal_weights():
    # Prepare: a big site moving weights by 0.03 and a small one by 0.01; bound 0.5 per update
    clip = 0.5
    grid = FakeGrid({1: step("a", 0.01, examples=10), 2: step("big", 0.03, examples=990)})
    # Execute
    state = _run(grid, CFG.replace(client_dp_clip=clip))
    # Assert: each update scaled to norm <= clip, then a plain mean (not weighted by examples)
    clipped = [min(1.0, clip / (s * math.sqrt(N_WEIGHTS))) * s for s in (0.01, 0.03)]
    for arr in _new(state).values():
        np.testing.assert_allclose(arr, np.mean(clipped), rtol=1e-5)
    assert state.history.rounds[0].aggregate["sites-used"] == 2


def test_the_noise_on_the_aggregate_has_the_calibrated_spread():
    # Prepare: noise 2, clip 1, two sampled sites -> std 2 * 1 / 2 = 1 on every weight
    grid = FakeGrid({1: step("a", 0.0), 2: step("b", 0.0)})
    # Execute
    state = _run(grid, CFG.replace(client_dp_noise=2.0, client_dp_clip=1.0))
    # Assert
    values = np.concatenate([v.ravel() for v in _new(state).values()])
    assert values.std() == pytest.approx(1.0, rel=0.1) and abs(values.mean()) < 0.1


@pytest.mark.parametrize("mode", ["fixed-server", "adaptive-server", "fixed-client", "adaptive-client"])
def test_a_site_that_sends_the_model_back_unchanged_does_not_stop_the_run(mode):
    # Prepare: Flower's clipping divides by the update's norm
    grid = FakeGrid({1: step("lazy", 0.0), 2: step("b", 0.01)})
    cfg = CFG.replace(client_dp=mode, client_dp_count_stddev=1.0)
    if mode.endswith("-client"):  # the site-side mod, on both replies
        grid.behaviours = {n: _via_mod(b) for n, b in grid.behaviours.items()}
    # Execute
    state = _run(grid, cfg)
    # Assert: both counted, an equal-weight mean of 0 and 0.01
    assert state.history.rounds[0].aggregate["sites-used"] == 2
    np.testing.assert_allclose(_new(state)["b"], 0.005, rtol=1e-4)


def _via_mod(behaviour):  # noqa: ANN001, ANN202
    def node(msg: Message) -> RecordDict:
        return client_dp_mod(msg, None, lambda m, _c: reply_message(behaviour(m))).content  # type: ignore[arg-type]
    return node


def test_a_refusing_site_keeps_its_status_and_the_round_uses_the_others():
    # Prepare
    grid = FakeGrid({1: step("a", 0.01), 2: step("b", 0.01), 3: refuses("spent")})
    # Execute
    state = _run(grid, CFG.replace(min_fit_sites=3, min_available_sites=3))
    # Assert
    [record] = state.history.rounds
    assert record.sites["spent"]["status"] == "budget-exhausted" and record.aggregate["sites-used"] == 2
    np.testing.assert_allclose(_new(state)["b"], 0.01, rtol=1e-5)


# ------------------------------------------------------------------ the site-side clipping mod
def _train_message(cfg: RunConfig, clipping_norm: float | None) -> Message:
    config = ConfigRecord(cfg.to_flower())
    if clipping_norm is not None:
        config["clipping_norm"] = clipping_norm
    content = RecordDict({"arrays": ArrayRecord({k: Array(v.copy()) for k, v in GLOBAL.items()}), "config": config})
    return reply_message(content, src_node_id=0)


def _call_mod(msg: Message, content: RecordDict) -> tuple[Message, list[dict]]:
    seen = []

    def call_next(m: Message, _c: object) -> Message:
        seen.append(dict(next(iter(m.content.config_records.values()))))
        return reply_message(content)

    return client_dp_mod(msg, None, call_next), seen  # type: ignore[arg-type]


def _norm(msg: Message) -> float:
    return float(np.sqrt(sum(np.sum((v - GLOBAL[k]) ** 2) for k, v in _received(msg).items())))


@pytest.mark.parametrize("mode", ["fixed-client", "adaptive-client"])
def test_the_site_clips_its_update_to_the_bound_the_server_sent(mode):
    # Prepare: an update of norm 0.2 * sqrt(2050) ~ 9, bound 0.5
    cfg = CFG.replace(client_dp=mode, client_dp_count_stddev=1.0)
    update = {k: v + 0.2 for k, v in GLOBAL.items()}
    # Execute
    out, _ = _call_mod(_train_message(cfg, 0.5), _content(update, site="a"))
    # Assert
    assert not out.has_error()
    assert _norm(out) == pytest.approx(0.5, rel=1e-5)
    metrics = next(iter(out.content.metric_records.values()))
    assert ("norm_bit" in metrics) is (mode == "adaptive-client")
    assert out.content["site"]["status"] == "ok"


def test_a_refusal_passes_the_clipping_mod_with_its_status():
    # Prepare
    cfg = CFG.replace(client_dp="fixed-client")
    # Execute
    out, _ = _call_mod(_train_message(cfg, 0.5), _content(None, site="a", status="budget-exhausted"))
    # Assert: Flower's mod alone would have turned it into an error without the site's reason
    assert not out.has_error()
    assert out.content["site"]["status"] == "budget-exhausted"


def test_without_site_side_clipping_the_reply_is_untouched():
    # Prepare
    update = {k: v + 0.2 for k, v in GLOBAL.items()}
    # Execute
    out, seen = _call_mod(_train_message(CFG, None), _content(update, site="a"))
    # Assert
    assert _norm(out) == pytest.approx(0.2 * math.sqrt(N_WEIGHTS), rel=1e-5)
    assert seen and "clipping_norm" not in seen[0]


def test_a_missing_clipping_bound_fails_closed_before_training():
    # Prepare: the run asks for site-side clipping, but the server sent no bound
    cfg = CFG.replace(client_dp="fixed-client")
    # Execute
    out, seen = _call_mod(_train_message(cfg, None), _content({k: v + 1 for k, v in GLOBAL.items()}, site="a"))
    # Assert
    assert out.has_error() and not seen


# ------------------------------------------------------------------ the stated guarantee
def _rounds(used: list[int]) -> list[dict]:
    return [{"round": r + 1, "sites": {}, "aggregate": {"sites-used": k}} for r, k in enumerate(used)]


def test_the_guarantee_uses_opacus_rdp_with_the_site_sampling_rate():
    # Prepare: 10 sites, 3 sampled per round (fraction 0.3), noise calibrated for 3
    cfg = RunConfig(client_dp="fixed-client", client_dp_noise=1.1, client_dp_clip=0.5, fraction_fit=0.3,
                    min_fit_sites=2, num_server_rounds=4)
    # Execute
    out = client_dp_guarantee(cfg, _rounds([3, 3, 3, 3]), num_sites=10)
    # Assert
    assert out["sampled_sites_per_round"] == 3 and out["sample_rate"] == pytest.approx(0.3)
    assert out["calibrated_sites"] == 2 and out["effective_noise_multipliers"] == [1.1] * 4
    assert out["epsilon"] == pytest.approx(user_level_epsilon([1.1] * 4, sample_rate=0.3, delta=cfg.delta))
    assert 0 < out["epsilon"] < user_level_epsilon([1.1] * 4, sample_rate=1.0, delta=cfg.delta)


def test_a_round_with_fewer_updates_than_calibrated_counts_as_less_noise():
    # Prepare
    cfg = RunConfig(client_dp="fixed-server", client_dp_noise=2.0, client_dp_sampled_sites=4, min_fit_sites=2,
                    min_available_sites=4)
    # Execute
    out = client_dp_guarantee(cfg, _rounds([4, 2, 0]), num_sites=4)
    # Assert: round 2 averaged 2 of 4 -> effective noise 1.0; round 3 released nothing
    assert out["effective_noise_multipliers"] == [2.0, 1.0] and out["rounds_released"] == 2
    assert out["epsilon"] == pytest.approx(user_level_epsilon([2.0, 1.0], sample_rate=1.0, delta=cfg.delta))


def test_without_noise_no_epsilon_is_claimed():
    out = client_dp_guarantee(CFG, _rounds([2]), num_sites=2)
    assert out["epsilon"] is None and "no differential-privacy guarantee" in out["note"]


def test_the_adaptive_clipping_bound_survives_a_checkpoint_and_resume(tmp_path):
    from flwr.app import Array, ArrayRecord

    from server.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from server.history import RunHistory
    from server.strategy import restore_strategy_state, strategy_state

    # Prepare: an adaptive run whose bound moved away from its initial value during round 3
    cfg = RunConfig.from_flower({"client-dp": "adaptive-server", "client-dp-noise": 0.05, "client-dp-clip": 1.0})
    running = build_strategy(cfg)
    running.dp.clipping_norm = 0.37  # Flower's wrapper, inside our ServerClipGuard
    meta = {"strategy-state": strategy_state(running)}
    save_checkpoint(tmp_path, Checkpoint(3, ArrayRecord({"w": Array(np.zeros(2, np.float32))}), RunHistory(), meta))
    # Execute: the restarted server builds a fresh strategy and restores it from the checkpoint
    resumed = build_strategy(cfg)
    restore_strategy_state(resumed, dict(load_checkpoint(tmp_path).meta["strategy-state"]))
    # Assert: it continues from the learned bound, not the initial one; other strategies have nothing to keep
    assert resumed.dp.clipping_norm == pytest.approx(0.37)
    assert strategy_state(build_strategy(RunConfig())) == {}
    assert strategy_state(build_strategy(RunConfig.from_flower({"client-dp": "fixed-server"}))) == {}
