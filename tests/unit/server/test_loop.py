"""The round loop against a fake Grid: bad replies are dropped, the global model stays finite."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from common.config import RunConfig
from server.loop import LoopState, run_rounds
from server.strategy import build_strategy
from tests.conftest import reply_message

GLOBAL = {"w": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float32)}
STEP = 0.01  # an honest site moves every weight by this much: update norm 0.01 * sqrt(15) ~ 0.039

Behaviour = Callable[[Message], RecordDict | None]  # None: the node never answers


def _content(arrays: dict[str, np.ndarray] | None, *, site: str, examples: int = 10) -> RecordDict:
    content = RecordDict({
        "metrics": MetricRecord({"num-examples": examples, "train-loss": 0.5, "train-accuracy": 0.5}),
        "site": ConfigRecord({"name": site, "status": "ok", "reason": ""}),
    })
    if arrays is not None:
        content["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    return content


def _received(msg: Message) -> dict[str, np.ndarray]:
    record = next(iter(msg.content.array_records.values()))
    return {k: v.numpy() for k, v in record.items()}


def honest(site: str) -> Behaviour:
    return lambda msg: _content({k: v + STEP for k, v in _received(msg).items()}, site=site)


def nan_weights(site: str) -> Behaviour:
    return lambda msg: _content({k: np.full_like(v, np.nan) for k, v in _received(msg).items()}, site=site)


def huge_update(site: str) -> Behaviour:
    """An update 1000x the honest one's norm (a scaled / poisoned model)."""
    return lambda msg: _content({k: v + 1000 * STEP for k, v in _received(msg).items()}, site=site)


def silent(_site: str) -> Behaviour:
    return lambda msg: None


UNAVAILABLE = RecordDict()  # a behaviour's answer when the node has gone away


def dies_after_round_1(site: str) -> Behaviour:
    answer = honest(site)
    return lambda msg: answer(msg) if msg.content.config_records["config"]["server-round"] == 1 else UNAVAILABLE


class FakeGrid:
    """The two Grid methods the loop and Flower's strategies use, with scripted nodes."""

    def __init__(self, behaviours: dict[int, Behaviour]) -> None:
        self.behaviours = behaviours
        self.timeouts: list[float | None] = []
        self.sent: list[tuple[int, str]] = []  # (node id, message type)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.behaviours)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        self.timeouts.append(timeout)
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = f"m{len(self.sent)}"  # as Flower's grids do when pushing
            node = msg.metadata.dst_node_id
            self.sent.append((node, msg.metadata.message_type))
            content = self.behaviours[node](msg)
            if content is UNAVAILABLE:  # the SuperLink answers for a node that went away
                from flwr.server.superlink.linkstate.utils import (
                    create_message_error_unavailable_res_message,
                )

                replies.append(create_message_error_unavailable_res_message(msg.metadata, "node_unavail"))
            elif content is not None:
                replies.append(reply_message(content, src_node_id=node, message_type=msg.metadata.message_type))
        return replies


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Flower's Message() reads the running task's identity, which a real ServerApp process sets."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1 if attr != "_node_id" else 0)


def _run(grid: FakeGrid, cfg: RunConfig, *, start_round: int = 1) -> LoopState:
    arrays = ArrayRecord({k: Array(v.copy()) for k, v in GLOBAL.items()})
    state = LoopState(arrays=arrays, start_round=start_round)
    return run_rounds(grid, build_strategy(cfg), cfg, state, send_config=cfg.to_flower())


CFG = RunConfig(num_server_rounds=1, fraction_evaluate=0.0, min_fit_sites=1, min_available_sites=1,
                max_update_norm=1.0, round_timeout_s=30.0)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [(nan_weights, "non-finite"), (huge_update, "update norm")],
)
def test_a_poisoned_reply_is_rejected_and_the_global_model_stays_finite(bad, reason):
    # Prepare: two honest sites and one bad one
    grid = FakeGrid({1: honest("a"), 2: honest("b"), 3: bad("evil")})
    # Execute
    state = _run(grid, CFG)
    # Assert: the new global model is the honest sites' average, every value finite
    new = {k: v.numpy() for k, v in state.arrays.items()}
    for key, ref in GLOBAL.items():
        assert np.all(np.isfinite(new[key]))
        np.testing.assert_allclose(new[key], ref + STEP, rtol=0, atol=1e-6)
    [record] = state.history.rounds
    assert record.sites["evil"]["status"] == "rejected"
    assert reason in record.sites["evil"]["reason"]
    assert record.sites["a"]["status"] == record.sites["b"]["status"] == "ok"
    assert record.aggregate["sites-used"] == 2


def test_when_every_reply_is_bad_the_global_model_is_unchanged():
    # Prepare
    grid = FakeGrid({1: nan_weights("x"), 2: huge_update("y")})
    # Execute
    state = _run(grid, CFG.replace(num_server_rounds=2))
    # Assert
    for key, ref in GLOBAL.items():
        np.testing.assert_array_equal(state.arrays[key].numpy(), ref)
    assert [r.aggregate["sites-used"] for r in state.history.rounds] == [0, 0]


def test_a_silent_site_does_not_stall_the_round_and_the_timeout_comes_from_the_config():
    # Prepare: node 3 never answers (crashed); the grid returns what arrived by the timeout
    grid = FakeGrid({1: honest("a"), 2: honest("b"), 3: silent("dead")})
    cfg = CFG.replace(num_server_rounds=2, round_timeout_s=12.5)
    # Execute
    state = _run(grid, cfg)
    # Assert
    assert grid.timeouts == [12.5, 12.5]
    assert [sorted(r.sites) for r in state.history.rounds] == [["a", "b"], ["a", "b"]]
    np.testing.assert_allclose(state.arrays["b"].numpy(), GLOBAL["b"] + 2 * STEP, atol=1e-6)


def test_a_site_that_went_away_is_named_in_the_history_not_as_the_superlink():
    # Prepare: site "b" (node 2) answers round 1, then the SuperLink reports it unavailable
    grid = FakeGrid({1: honest("a"), 2: dies_after_round_1("b")})
    # Execute
    state = _run(grid, CFG.replace(num_server_rounds=2))
    # Assert
    second = state.history.rounds[1].sites
    assert sorted(second) == ["a", "b"] and second["b"]["status"] == "error"
    assert "node-" not in " ".join(second)


def test_evaluation_replies_are_validated_and_recorded_per_site():
    # Prepare: evaluate replies carry metrics only; one site reports no examples
    def evaluator(site: str, examples: int) -> Behaviour:
        def reply(msg: Message) -> RecordDict:
            if msg.metadata.message_type.startswith("train"):
                return honest(site)(msg)
            return RecordDict({"metrics": MetricRecord({"num-examples": examples, "val-loss": 1.0, "val-accuracy": 0.75}),
                               "site": ConfigRecord({"name": site, "status": "ok", "reason": ""})})
        return reply

    grid = FakeGrid({1: evaluator("a", 8), 2: evaluator("b", 0)})
    cfg = CFG.replace(fraction_evaluate=1.0)
    # Execute
    state = _run(grid, cfg)
    # Assert
    [record] = state.history.rounds
    assert record.sites["a"]["val-accuracy"] == 0.75
    assert record.sites["b"]["status"] == "ok"  # it trained; its evaluation had nothing to evaluate
    assert record.sites["b"]["val-status"] == "no-data" and "no validation images" in record.sites["b"]["val-reason"]
    assert record.aggregate["val-accuracy"] == pytest.approx(0.75)
    assert sorted(t for _, t in grid.sent) == ["evaluate", "evaluate", "train", "train"]


def test_a_resumed_run_starts_at_its_next_round():
    # Prepare
    grid = FakeGrid({1: honest("a")})
    # Execute
    state = _run(grid, CFG.replace(num_server_rounds=3), start_round=3)
    # Assert
    assert [r.round for r in state.history.rounds] == [3]
    assert len(grid.sent) == 1


def _app_run(grid: FakeGrid, cfg: RunConfig, ckpt: Path) -> LoopState:
    """The ServerApp's own run (checkpoint, resume) against the fake grid."""
    from types import SimpleNamespace

    from common.catalog import Catalog, ImplantClass
    from server import app as server_app

    catalog = Catalog("hips", "1", tuple(ImplantClass(f"c{i}", "M", f"C{i}") for i in range(3)))
    setup = server_app.RunSetup(config=cfg, catalog=catalog, checkpoint_dir=ckpt)
    return server_app.run(grid, SimpleNamespace(run_config={}), setup)


def _ramp(site: str) -> Behaviour:
    """A site whose update grows every round, so the server optimizer's moments matter."""
    def reply(msg: Message) -> RecordDict:
        rnd = int(msg.content.config_records["config"]["server-round"])
        return _content({k: v + STEP * rnd for k, v in _received(msg).items()}, site=site)
    return reply


def test_a_resumed_fedadam_run_continues_from_its_checkpointed_moments(tmp_path, monkeypatch):
    # Prepare: the same 3-round FedAdam run, once straight through, once stopped after round 2
    cfg = CFG.replace(strategy="fedadam", server_learning_rate=0.05, max_update_norm=1e4, model="cnn")
    straight = _app_run(FakeGrid({1: _ramp("a"), 2: _ramp("b")}), cfg.replace(num_server_rounds=3), tmp_path / "s")
    _app_run(FakeGrid({1: _ramp("a"), 2: _ramp("b")}), cfg.replace(num_server_rounds=2), tmp_path / "r")
    (tmp_path / "r2").mkdir()
    for f in (tmp_path / "r").iterdir():
        if f.is_file():  # the checkpoint (the run's report and plots are not needed to resume)
            (tmp_path / "r2" / f.name).write_bytes(f.read_bytes())
    # Execute: the restarted server resumes round 3 from the checkpoint (with and without the moments)
    resumed = _app_run(FakeGrid({1: _ramp("a"), 2: _ramp("b")}), cfg.replace(num_server_rounds=3), tmp_path / "r")
    monkeypatch.setattr("server.app.restore_strategy_arrays", lambda *_args: None)  # the resume before this fix
    forgetful = _app_run(FakeGrid({1: _ramp("a"), 2: _ramp("b")}), cfg.replace(num_server_rounds=3), tmp_path / "r2")
    # Assert: only the run that got its moments back ends where the uninterrupted run ends
    assert (tmp_path / "r" / "strategy.npz").exists()
    assert [r.round for r in resumed.history.rounds] == [1, 2, 3]
    for key in straight.arrays.keys():
        np.testing.assert_allclose(resumed.arrays[key].numpy(), straight.arrays[key].numpy(), rtol=0, atol=1e-7)
    assert any(not np.allclose(forgetful.arrays[k].numpy(), straight.arrays[k].numpy(), rtol=0, atol=1e-5)
               for k in straight.arrays.keys())


def test_only_fedadam_keeps_model_sized_strategy_state():
    from server.strategy import strategy_arrays

    assert strategy_arrays(build_strategy(CFG)) == {}
    assert strategy_arrays(build_strategy(CFG.replace(strategy="fedadam"))) == {}  # nothing learned yet


class ShuffledGrid(FakeGrid):
    """Replies arrive in another order every round (as sites on parallel workers race)."""

    def __init__(self, behaviours: dict[int, Behaviour], order_seed: int) -> None:
        super().__init__(behaviours)
        self.rng = np.random.default_rng(order_seed)

    def send_and_receive(self, messages, *, timeout=None):
        replies = list(super().send_and_receive(messages, timeout=timeout))
        return [replies[i] for i in self.rng.permutation(len(replies))]


def _offset(site: str, value: float, examples: int) -> Behaviour:
    return lambda msg: _content({k: v + np.float32(value) for k, v in _received(msg).items()}, site=site,
                                examples=examples)


def test_the_aggregate_does_not_depend_on_the_order_replies_arrive_in():
    # Prepare: updates whose float32 weighted sum changes with the order of its terms
    sites = {1: _offset("a", 1e-3, 7), 2: _offset("b", 0.3, 13), 3: _offset("c", -0.2999, 11), 4: _offset("d", 7e-4, 5)}
    cfg = CFG.replace(num_server_rounds=3, max_update_norm=1e3)
    # Execute: the same run with replies arriving in different orders
    finals = [_run(ShuffledGrid(dict(sites), order_seed=s), cfg).arrays for s in range(4)]
    # Assert: bit-identical global models
    for other in finals[1:]:
        for key in finals[0].keys():
            np.testing.assert_array_equal(other[key].numpy(), finals[0][key].numpy())


@pytest.mark.parametrize("client_dp", ["none", "fixed-server", "adaptive-server", "fixed-client", "adaptive-client"])
def test_fedadam_moments_are_found_inside_every_client_dp_wrapper(client_dp):
    from flwr.serverapp.strategy.fedopt import FedOpt

    from server.strategy import _find, restore_strategy_arrays, strategy_arrays

    # Prepare: a FedAdam run (possibly wrapped for client-level DP) that has learned moments
    cfg = RunConfig.from_flower({"strategy": "fedadam", "client-dp": client_dp, "client-dp-count-stddev": 1.0})
    running = build_strategy(cfg)
    inner = _find(running, lambda s: isinstance(s, FedOpt))
    inner.m_t, inner.v_t = {"w": np.full(3, 0.5)}, {"w": np.full(3, 0.25)}
    # Execute: save, and restore into the strategy a restarted server builds
    saved = strategy_arrays(running)
    resumed = build_strategy(cfg)
    restore_strategy_arrays(resumed, saved)
    # Assert
    back = _find(resumed, lambda s: isinstance(s, FedOpt))
    np.testing.assert_array_equal(back.m_t["w"], np.full(3, 0.5))
    np.testing.assert_array_equal(back.v_t["w"], np.full(3, 0.25))
