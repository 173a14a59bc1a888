import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from server.validation import validate_replies
from tests.conftest import reply_message

REF = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}


def _reply(arrays=None, *, examples=10, status="ok", site="site-a"):
    content = RecordDict({"metrics": MetricRecord({"num-examples": examples, "train-loss": 0.5}),
                          "site": ConfigRecord({"name": site, "status": status, "reason": "" if status == "ok" else "why"})})
    if arrays is not None:
        content["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    return reply_message(content)


@pytest.mark.parametrize(
    ("arrays", "status", "examples", "expected", "fragment"),
    [
        ({"w": np.ones((2, 3), np.float32), "b": np.ones(3, np.float32)}, "ok", 10, "ok", ""),
        ({"w": np.full((2, 3), np.nan, np.float32), "b": np.ones(3, np.float32)}, "ok", 10, "rejected", "non-finite"),
        ({"w": np.full((2, 3), 1e6, np.float32), "b": np.ones(3, np.float32)}, "ok", 10, "rejected", "norm"),
        ({"w": np.ones((3, 2), np.float32), "b": np.ones(3, np.float32)}, "ok", 10, "rejected", "shape"),
        ({"w": np.ones((2, 3), np.float32)}, "ok", 10, "rejected", "parameter names"),
        ({"w": np.ones((2, 3), np.float32), "b": np.ones(3, np.float32)}, "ok", 0, "rejected", "no examples"),
        (None, "budget-exhausted", 0, "budget-exhausted", "why"),
        (None, "ok", 10, "rejected", "ArrayRecord"),
    ],
)
def test_replies_are_judged(arrays, status, examples, expected, fragment):
    # Execute
    [verdict] = validate_replies([_reply(arrays, examples=examples, status=status)], reference=REF, max_update_norm=100.0)
    # Assert
    assert verdict.status == expected
    assert fragment in verdict.reason
    assert (verdict.message is not None) == (expected == "ok")
    assert verdict.site == "site-a"
