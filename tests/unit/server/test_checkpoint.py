import numpy as np
from flwr.app import Array, ArrayRecord

from server.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from server.history import RoundRecord, RunHistory


def test_checkpoint_roundtrip_keeps_weights_order_round_and_history(tmp_path):
    arrays = ArrayRecord({"z": Array(np.arange(6, dtype=np.float32).reshape(2, 3)), "a": Array(np.ones(2, np.float32))})
    history = RunHistory([RoundRecord(1, {"s": {"status": "ok", "epsilon": 0.4}}, {"val-accuracy": 0.5})])
    save_checkpoint(tmp_path, Checkpoint(1, arrays, history, {"strategy": "fedavg"}))
    back = load_checkpoint(tmp_path)
    assert back is not None and back.round == 1
    assert list(back.arrays.keys()) == ["z", "a"]
    np.testing.assert_array_equal(back.arrays["z"].numpy(), arrays["z"].numpy())
    assert back.history.epsilon_by_site() == {"s": [(1, 0.4)]}
    assert not list(tmp_path.glob("*.tmp"))


def test_missing_checkpoint_is_none(tmp_path):
    assert load_checkpoint(tmp_path) is None
