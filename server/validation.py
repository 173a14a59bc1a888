"""Validate site replies before aggregation: a bad reply is dropped with a logged reason.

Checks, in order: the site's own status (refusals carry no weights), a MetricRecord with
``num-examples`` > 0, exactly the expected arrays with the expected shapes, finite
values, and an update norm ``||new - global||`` below the configured bound.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Message

from common.weights import update_norm

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplyVerdict:
    site: str  # site name reported by the client, or node-<id>
    status: str  # ok | policy-refused | budget-exhausted | error | rejected
    reason: str  # why it was not used ("" when ok)
    metrics: dict[str, float]  # the reply's metrics (kept for the per-site history)
    message: Message | None  # the reply, when accepted


def site_of(msg: Message) -> tuple[str, str, str]:
    """(site name, status, reason) from the reply's ``site`` ConfigRecord."""
    node = f"node-{msg.metadata.src_node_id}"
    if msg.has_error():
        return node, "error", f"client error: {msg.error.reason}"
    rec = msg.content.config_records.get("site")
    if rec is None:
        return node, "ok", ""
    return str(rec.get("name", node)), str(rec.get("status", "ok")), str(rec.get("reason", ""))


def _metrics_of(msg: Message) -> dict[str, float]:
    if msg.has_error() or not msg.content.metric_records:
        return {}
    rec = next(iter(msg.content.metric_records.values()))
    return {k: v for k, v in rec.items() if isinstance(v, int | float)}


def check_arrays(msg: Message, reference: Mapping[str, np.ndarray], max_update_norm: float) -> str:
    """Return "" if the reply's arrays are usable, else the reason they are not."""
    if len(msg.content.array_records) != 1:
        return "expected exactly one ArrayRecord"
    record = next(iter(msg.content.array_records.values()))
    if set(record.keys()) != set(reference):
        return "arrays do not match the model's parameter names"
    new: dict[str, np.ndarray] = {}
    for key, ref in reference.items():
        arr = record[key].numpy()
        if arr.shape != ref.shape:
            return f"array {key} has shape {arr.shape}, expected {ref.shape}"
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            return f"array {key} holds non-finite values"
        new[key] = arr
    norm = update_norm(new, reference)
    if not np.isfinite(norm) or norm > max_update_norm:
        return f"update norm {norm:.3g} exceeds the bound {max_update_norm:.3g}"
    return ""


def validate_replies(
    replies: Iterable[Message],
    *,
    reference: Mapping[str, np.ndarray] | None,
    max_update_norm: float,
) -> list[ReplyVerdict]:
    """Judge every reply. ``reference`` = the global arrays sent (None for evaluate replies)."""
    verdicts = []
    for msg in replies:
        site, status, reason = site_of(msg)
        metrics = _metrics_of(msg)
        if status == "ok":
            if not metrics or metrics.get("num-examples", 0) <= 0:
                status, reason = "rejected", "no examples reported"
            elif reference is not None:
                problem = check_arrays(msg, reference, max_update_norm)
                if problem:
                    status, reason = "rejected", problem
        if status != "ok":
            logger.warning("reply from %s not used (%s): %s", site, status, reason)
        verdicts.append(ReplyVerdict(site, status, reason, metrics, msg if status == "ok" else None))
    return verdicts
