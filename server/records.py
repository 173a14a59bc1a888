"""The server's side of Flower records: ``ArrayRecord`` <-> arrays by name.

The round loop, validation and aggregation read replies through these; ``common`` stays
free of Flower.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord


def record_to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def numpy_to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def record_bytes(record: ArrayRecord) -> int:
    """Size of ``record`` serialised as Flower sends it (protobuf), in bytes (benchmarks)."""
    from flwr.common.serde import array_record_to_proto

    return int(array_record_to_proto(record).ByteSize())
