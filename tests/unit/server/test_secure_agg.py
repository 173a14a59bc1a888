"""SecAgg+ pieces that need no Flower run: the site's masked input and the server's use of the aggregate.

The whole protocol runs here in process (sites as secure_agg_mod over copied messages), and
end to end through Flower in tests/integration/test_secure_agg_e2e.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from client.training.secure_agg import as_masked_input, secure_agg_mod
from common.config import RunConfig
from common.errors import ConfigError
from server.secure_agg import add_client_dp_noise, apply_update, guarantee, secure_train_round


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Flower's Message() reads the running task's identity, which a real ClientApp process sets."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1 if attr != "_node_id" else 0)


SENT = {"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)}


def _train_msg(**config) -> Message:
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in SENT.items()}),
                          "config": ConfigRecord({"max-update-norm": 10.0, "secagg-max-weight": 100, **config})})
    return Message(content, dst_node_id=1, message_type="train")


def _reply(msg: Message, arrays: dict | None, status: str = "ok", n: int = 20) -> Message:
    content = RecordDict({"metrics": MetricRecord({"num-examples": n, "train-loss": 0.5, "epsilon": 1.5}),
                          "site": ConfigRecord({"name": "hosp-a", "status": status, "reason": "" if status == "ok" else "why"})})
    if arrays is not None:
        content["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    return Message(content, reply_to=msg)


def _masked(reply: Message) -> tuple[list[np.ndarray], int, dict, dict]:
    c = reply.content
    return ([a.numpy() for a in c.array_records["fitres.parameters"].values()],
            int(c.metric_records["fitres.num_examples"]["num_examples"]), dict(c.config_records["site"]),
            dict(c.metric_records["metrics"]))


def test_a_trained_reply_becomes_the_update_in_the_order_sent_weighted_by_its_examples():
    msg = _train_msg()
    trained = {"b": np.full(3, 0.5, np.float32), "w": np.full((2, 3), 1.25, np.float32)}  # other key order
    update, weight, site, metrics = _masked(as_masked_input(msg, _reply(msg, trained)))
    np.testing.assert_allclose(update[0], np.full((2, 3), 0.25))
    np.testing.assert_allclose(update[1], np.full(3, 0.5))
    assert weight == 20 and site["status"] == "ok" and metrics["epsilon"] == 1.5


@pytest.mark.parametrize(
    ("trained", "n", "status", "fragment"),
    [
        (None, 20, "budget-exhausted", "why"),  # a refusal keeps its own reason
        ({"w": np.full((2, 3), np.nan, np.float32), "b": SENT["b"]}, 20, "rejected", "non-finite"),
        ({"w": SENT["w"] + 9.0, "b": SENT["b"]}, 20, "rejected", "exceeds the bound"),
        ({"w": SENT["w"] + 0.1, "b": SENT["b"]}, 500, "rejected", "secagg-max-weight"),
        ({"w": SENT["w"][:1], "b": SENT["b"]}, 20, "rejected", "shape"),
    ],
)
def test_what_the_site_cannot_send_becomes_a_zero_update_of_weight_zero_with_its_reason(trained, n, status, fragment):
    msg = _train_msg()
    update, weight, site, _ = _masked(as_masked_input(msg, _reply(msg, trained, "ok" if trained else status, n)))
    assert weight == 0 and all(not u.any() for u in update) and [u.shape for u in update] == [(2, 3), (3,)]
    assert site["status"] == status and fragment in site["reason"]


def test_other_messages_pass_the_secure_mod_untouched():
    msg = _train_msg()  # no SecAgg+ protocol record: a run without secure aggregation
    reply = _reply(msg, {k: v + 1 for k, v in SENT.items()})
    assert secure_agg_mod(msg, None, lambda m, c: reply) is reply  # type: ignore[arg-type]


def test_the_aggregate_moves_the_global_model_only_when_finite_and_within_the_bound():
    arrays = ArrayRecord({k: Array(v) for k, v in SENT.items()})
    new, reason = apply_update(arrays, [np.full((2, 3), 0.5), np.full(3, -0.5)], max_update_norm=10.0)
    assert reason == "" and new is not None
    np.testing.assert_allclose(new["w"].numpy(), 1.5)
    assert new["w"].numpy().dtype == np.float32 and list(new.keys()) == ["w", "b"]
    for update, fragment in [([np.full((2, 3), np.inf), np.zeros(3)], "non-finite"),
                             ([np.full((2, 3), 50.0), np.zeros(3)], "exceeds the bound"),
                             ([np.zeros((2, 3))], "arrays")]:
        new, reason = apply_update(arrays, update, max_update_norm=10.0)
        assert new is None and fragment in reason


def test_a_round_needs_two_sites_and_a_modulus_the_sum_cannot_wrap():
    arrays = ArrayRecord({k: Array(v) for k, v in SENT.items()})
    one = secure_train_round(None, None, 1, arrays, [_train_msg()], RunConfig(secure_aggregation=True))  # type: ignore[arg-type]
    assert one.arrays is None and "at least 2" in one.reason
    many = secure_train_round(None, None, 1, arrays, [_train_msg()] * 300, RunConfig(secure_aggregation=True))  # type: ignore[arg-type]
    assert many.arrays is None and "too many sites" in many.reason


def test_the_guarantee_names_what_the_server_sees_and_the_threat_model():
    g = guarantee(RunConfig(secure_aggregation=True))
    assert g["quantization_range"] == 2**24 and g["clipping_range"] == 1.0
    assert "mean update" in g["server_sees"] and "colluding" in g["threat_model"] and "key sharing" in g["dropouts"]


def test_with_client_level_dp_the_site_clips_its_update_and_every_site_weighs_the_same():
    from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

    msg = _train_msg(**{KEY_CLIPPING_NORM: 0.3})
    trained = {"w": SENT["w"] + 1.0, "b": SENT["b"]}  # update norm sqrt(6) = 2.45, far above the bound
    update, weight, site, _ = _masked(as_masked_input(msg, _reply(msg, trained, n=20)))
    norm = np.sqrt(sum(float(np.sum(u * u)) for u in update))
    assert weight == 100 and site["status"] == "ok" and norm == pytest.approx(0.3)  # secagg-max-weight
    np.testing.assert_allclose(update[0] / update[0].flat[0], 1.0)  # clipped by scaling, direction kept


def test_client_level_dp_noise_goes_on_the_mean_with_flowers_std():
    cfg = RunConfig(secure_aggregation=True, client_dp="fixed-client", client_dp_noise=2.0, client_dp_clip=0.5,
                    client_dp_sampled_sites=4)
    mean = [np.zeros((200, 200))]
    add_client_dp_noise(mean, cfg)
    assert np.std(mean[0]) == pytest.approx(2.0 * 0.5 / 4, rel=0.02)
    untouched = [np.zeros(3)]
    add_client_dp_noise(untouched, RunConfig(secure_aggregation=True))
    assert not untouched[0].any()


def test_secure_aggregation_takes_client_dp_clipped_at_the_sites_only():
    assert RunConfig.from_flower({"secure-aggregation": True, "client-dp": "fixed-client"}).client_dp == "fixed-client"
    for mode in ("fixed-server", "adaptive-server", "adaptive-client"):
        with pytest.raises(ConfigError, match="fixed-client only"):
            RunConfig.from_flower({"secure-aggregation": True, "client-dp": mode, "client-dp-noise": 0.01})


# ------------------------------------------------- the whole protocol, in process, with dropouts
class ProtocolGrid:
    """Delivers each message to a site running ``secure_agg_mod`` in process, as a copy (as the wire would).

    Site ``n`` moves every weight by ``steps[n]`` and has ``10 * n`` training examples;
    ``lost[n]`` names the SecAgg+ stage whose message site ``n`` never answers.
    """

    def __init__(self, steps: dict[int, float], lost: dict[int, str] | None = None) -> None:
        from flwr.app import Context

        self.steps, self.lost = steps, lost or {}
        self.contexts = {n: Context(run_id=1, node_id=n, node_config={}, state=RecordDict(), run_config={})
                         for n in steps}
        self.trained: list[int] = []
        self.setups = 0
        self._count = 0

    def get_node_ids(self) -> list[int]:
        return list(self.steps)

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        import copy

        replies = []
        for msg in messages:
            self._count += 1
            msg.metadata.__dict__["_message_id"] = f"m{self._count}"  # as Flower's grids do when pushing
            node = msg.metadata.dst_node_id
            stage = msg.content.config_records["secaggplus_configs"]["stage"]
            self.setups += stage == "setup"
            if self.lost.get(node) == stage:
                continue
            replies.append(copy.deepcopy(secure_agg_mod(copy.deepcopy(msg), self.contexts[node], self._train(node))))
        return replies

    def _train(self, node: int):
        def train(msg: Message, _context) -> Message:
            self.trained.append(node)
            return _reply(msg, {k: v + self.steps[node] for k, v in SENT.items()}, n=10 * node)
        return train


def _secure_round(grid: ProtocolGrid, cfg: RunConfig):
    from flwr.app import Context

    planned = [Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in SENT.items()}),
                                   "config": ConfigRecord({**cfg.to_flower(), "server-round": 1})}),
                       dst_node_id=n, message_type="train") for n in grid.steps]
    server = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    return secure_train_round(grid, server, 1, ArrayRecord({k: Array(v) for k, v in SENT.items()}), planned, cfg)


SECURE = RunConfig(secure_aggregation=True, min_fit_sites=2, min_available_sites=2)


def test_the_protocol_in_process_gives_the_example_weighted_mean_update():
    # Prepare
    grid = ProtocolGrid({1: 0.1, 2: 0.2, 3: 0.3})
    # Execute
    result = _secure_round(grid, SECURE)
    # Assert: (10 x 0.1 + 20 x 0.2 + 30 x 0.3) / 60, within the quantisation step; one key agreement
    np.testing.assert_allclose(result.arrays["b"].numpy(), 14 / 60, atol=1e-3)
    assert sorted(grid.trained) == [1, 2, 3] and grid.setups == 3


@pytest.mark.parametrize("stage", ["setup", "share_keys", "collect_masked_vectors"])
def test_a_site_lost_at_any_stage_before_unmasking_leaves_the_others_mean(stage):
    # Prepare: site 3 goes away at one stage (Flower's protocol alone fails the round when that is setup
    # or key sharing: unmasking then misses the lost site's shares)
    grid = ProtocolGrid({1: 0.1, 2: 0.2, 3: 0.3}, lost={3: stage})
    # Execute
    result = _secure_round(grid, SECURE)
    # Assert: the mean of the two sites left; the lost site never trained, so it spent no privacy
    assert result.arrays is not None, result.reason
    np.testing.assert_allclose(result.arrays["b"].numpy(), (1 + 4) / 30, atol=1e-3)
    assert 3 not in grid.trained and sorted(grid.trained) == [1, 2]


def test_when_too_few_sites_are_left_to_agree_on_keys_the_round_says_so():
    # Prepare: two of three sites are lost in setup
    grid = ProtocolGrid({1: 0.1, 2: 0.2, 3: 0.3}, lost={2: "setup", 3: "setup"})
    # Execute
    result = _secure_round(grid, SECURE)
    # Assert: no update, nobody trained, and the reason names the key agreement
    assert result.arrays is None and "key agreement failed" in result.reason and grid.trained == []
