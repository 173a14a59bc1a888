"""Validate site replies before aggregation: a bad reply is dropped with a logged reason.

Checks, in order: the site's own status (refusals carry no weights), a MetricRecord with
``num-examples`` > 0, a compressed update that rebuilds (the reply's ``site`` record names
its ``compression``, :mod:`common.compression`; the rebuilt weights replace it in the
reply), exactly the expected arrays with the expected shapes, finite values, and an update
norm ``||new - global||`` below the configured bound; last, train replies whose record
names or metric keys differ from the most common layout (Flower aggregates only replies
that agree). The bytes of every reply's arrays (as sent, before any rebuilding) are kept
for the round's history.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Message

from common.compression import MODES, REPLY_KEY, decompress_update
from common.weights import payload_bytes, update_norm
from server.records import numpy_to_record, record_to_numpy

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplyVerdict:
    site: str  # site name reported by the client, or node-<id>
    status: str  # ok | policy-refused | budget-exhausted | error | rejected
    reason: str  # why it was not used ("" when ok)
    metrics: dict[str, float]  # the reply's metrics (kept for the per-site history)
    message: Message | None  # the reply, when accepted
    update_bytes: int = 0  # bytes of the arrays the site sent (compressed or not); 0 without arrays


def site_of(msg: Message, senders: Mapping[str, str] | None = None) -> tuple[str, str, str]:
    """(site name, status, reason) from the reply's ``site`` ConfigRecord.

    ``senders`` maps the id of each message the server sent to the site it went to (its
    name when known, else ``node-<id>``): an error reply the SuperLink writes for a node
    that never answered comes from the SuperLink itself, so only the message it replies
    to says which site failed.
    """
    node = f"node-{msg.metadata.src_node_id}"
    if senders and msg.metadata.reply_to_message_id in senders:
        node = senders[msg.metadata.reply_to_message_id]
    if msg.has_error():
        return node, "error", f"client error: {msg.error.reason}"
    rec = msg.content.config_records.get("site")
    if rec is None:
        return node, "ok", ""
    return str(rec.get("name", node)), str(rec.get("status", "ok")), str(rec.get("reason", ""))


def metrics_of(msg: Message) -> dict[str, float]:
    if msg.has_error() or not msg.content.metric_records:
        return {}
    records = msg.content.metric_records  # a secure round's reply also holds the protocol's own records
    rec = records["metrics"] if "metrics" in records else next(iter(records.values()))
    return {k: v for k, v in rec.items() if isinstance(v, int | float)}


def update_bytes(msg: Message) -> int:
    if msg.has_error() or len(msg.content.array_records) != 1:
        return 0
    return payload_bytes(record_to_numpy(next(iter(msg.content.array_records.values()))))


def rebuild_arrays(msg: Message, reference: Mapping[str, np.ndarray]) -> str:
    """Replace a compressed reply's arrays by the weights they encode; "" or why that is impossible."""
    rec = msg.content.config_records.get("site")
    mode = str(rec.get(REPLY_KEY, "none")) if rec is not None else "none"
    if mode == "none":
        return ""
    if mode not in MODES:
        return f"unknown update compression {mode[:16]!r}"
    if len(msg.content.array_records) != 1:
        return "expected exactly one ArrayRecord"
    key = next(iter(msg.content.array_records))
    try:
        msg.content[key] = numpy_to_record(decompress_update(record_to_numpy(msg.content.array_records[key]),
                                                             reference, mode))
    except ValueError as e:
        return f"{mode} update cannot be rebuilt: {e}"
    return ""


def check_arrays(msg: Message, reference: Mapping[str, np.ndarray], max_update_norm: float) -> str:
    """Return "" if the reply's arrays are usable, else the reason they are not."""
    if len(msg.content.array_records) != 1:
        return "expected exactly one ArrayRecord"
    record = next(iter(msg.content.array_records.values()))
    if set(record.keys()) != set(reference):
        return "arrays do not match the model's parameter names"
    return check_weights({key: record[key].numpy() for key in reference}, reference, max_update_norm)


def check_weights(new: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], max_update_norm: float) -> str:
    """Return "" if ``new`` (same names as ``reference``) is usable as the next global model, else why not.

    Shapes as the reference's, finite values, and an update norm ``||new - reference||`` within the bound.
    """
    for key, ref in reference.items():
        arr = new[key]
        if arr.shape != ref.shape:
            return f"array {key} has shape {arr.shape}, expected {ref.shape}"
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            return f"array {key} holds non-finite values"
    norm = update_norm(new, reference)
    if not np.isfinite(norm) or norm > max_update_norm:
        return f"update norm {norm:.3g} exceeds the bound {max_update_norm:.3g}"
    return ""


def validate_replies(
    replies: Iterable[Message],
    *,
    reference: Mapping[str, np.ndarray] | None,
    max_update_norm: float,
    senders: Mapping[str, str] | None = None,
) -> list[ReplyVerdict]:
    """Judge every reply. ``reference`` = the global arrays sent (None for evaluate replies);
    ``senders``: sent message id -> site (see :func:`site_of`)."""
    verdicts = []
    for msg in replies:
        site, status, reason = site_of(msg, senders)
        metrics = metrics_of(msg)
        sent = update_bytes(msg)
        if status == "ok":
            if (not metrics or metrics.get("num-examples", 0) <= 0) and reference is None:
                status, reason = "no-data", "no validation images at this site"  # an evaluation reply
            elif not metrics or metrics.get("num-examples", 0) <= 0:
                status, reason = "rejected", "no examples reported"
            elif reference is not None:
                problem = rebuild_arrays(msg, reference) or check_arrays(msg, reference, max_update_norm)
                if problem:
                    status, reason = "rejected", problem
        if status != "ok":
            logger.warning("reply from %s not used (%s): %s", site, status, reason)
        verdicts.append(ReplyVerdict(site, status, reason, metrics, msg if status == "ok" else None, sent))
    return _same_layout(verdicts) if reference is not None else verdicts


def _layout(msg: Message) -> tuple[tuple[str, ...], tuple[str, ...], frozenset[str]]:
    records = msg.content.metric_records
    keys = frozenset(next(iter(records.values())).keys()) if len(records) == 1 else frozenset()
    return tuple(msg.content.array_records), tuple(records), keys


def _same_layout(verdicts: list[ReplyVerdict]) -> list[ReplyVerdict]:
    """Keep the accepted train replies that share the most common record layout; reject the others.

    Flower's strategies refuse to aggregate (they raise) unless every reply has the same
    record names and metric keys, so one odd reply would otherwise stop the round.
    """
    layouts = Counter(_layout(v.message) for v in verdicts if v.message is not None)
    if len(layouts) <= 1:
        return verdicts
    common = layouts.most_common(1)[0][0]
    out = []
    for v in verdicts:
        if v.message is not None and _layout(v.message) != common:
            logger.warning("reply from %s not used (rejected): its records differ from the other replies", v.site)
            v = dataclasses.replace(v, status="rejected", reason="records or metric keys differ from the other replies",
                                    message=None)
        out.append(v)
    return out
