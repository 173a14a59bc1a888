"""The site's side of secure aggregation (SecAgg+): Flower's ``secaggplus_mod`` around training.

When a train message carries the SecAgg+ protocol record (the run has
``secure-aggregation = true``, :mod:`server.secure_agg`), Flower's mod answers the
setup, key-sharing and unmasking stages itself and calls the training handler once, in
the collect-masked-vectors stage. :func:`secure_agg_mod` turns the handler's reply into
what the mod masks: this site's update (trained - received weights) and its number of
training examples as the weight. The site checks its own update first (finite values,
the run's norm bound, a weight the protocol can carry), because the server cannot see
it. A refusal, a site error or a failed check sends a zero update with weight 0: the
site's status and reason still reach the server in plain text, with its metrics, and
the protocol completes for everyone else. With client-level DP clipped at the site
(``client-dp = fixed-client``) the update is clipped here to the bound Flower's wrapper
sends, and every site weighs the same (``secagg-max-weight``), as that wrapper's mean requires.

Other messages (evaluation, runs without secure aggregation) pass through untouched.
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

logger = logging.getLogger(__name__)

SECAGG_RECORD = "secaggplus_configs"  # flwr.common.secure_aggregation.secaggplus_constants.RECORD_KEY_CONFIGS


def secure_agg_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Run the SecAgg+ protocol for train messages that ask for it; pass everything else on."""
    if msg.metadata.message_type != "train" or SECAGG_RECORD not in msg.content.config_records:
        return call_next(msg, context)
    from flwr.client.mod import secaggplus_mod

    return secaggplus_mod(msg, context, lambda m, c: as_masked_input(m, call_next(m, c)))


def as_masked_input(msg: Message, reply: Message) -> Message:
    """The reply in the layout ``secaggplus_mod`` masks: the update and its weight, plus plain metrics and status."""
    sent = msg.content.array_records["arrays"]
    config = msg.content.config_records["config"]
    content = reply.content if not reply.has_error() else RecordDict()
    site = content.config_records.get("site") or ConfigRecord({"name": "", "status": "error", "reason": "site error"})
    metrics = next(iter(content.metric_records.values()), MetricRecord({"num-examples": 0}))
    weight, update = 0, None
    clip = config.get(KEY_CLIPPING_NORM)  # client-level DP clipped at the site (Flower's wrapper sends the bound)
    max_weight = int(config.get("secagg-max-weight", 10_000))
    if str(site.get("status", "ok")) == "ok" and "arrays" in content.array_records:
        # Client-level DP wants equal weights: every site takes the largest weight, which also keeps the
        # protocol's full precision (it quantises update x weight / secagg-max-weight).
        weight = int(metrics.get("num-examples", 0)) if clip is None else max_weight
        update, problem = _update(content.array_records["arrays"], sent, float(config.get("max-update-norm", 1e4)))
        if not problem and weight > max_weight:
            problem = f"{weight} training examples exceed secagg-max-weight; the run must raise it"
        if not problem and update is not None and clip is not None:
            update = _clipped(update, float(clip))
        if problem:
            logger.warning("update not sent: %s", problem)
            site = ConfigRecord({**dict(site), "status": "rejected", "reason": f"checked at the site: {problem}"})
            weight, update = 0, None
    if update is None:  # nothing to contribute: a zero update with weight 0 keeps the protocol going
        update = [np.zeros(sent[k].numpy().shape, np.float64) for k in sent.keys()]
    return Message(RecordDict({
        "fitres.parameters": ArrayRecord(update),  # in the order of the weights sent
        "fitres.num_examples": MetricRecord({"num_examples": weight}),
        "fitres.metrics": ConfigRecord({}),
        "fitres.status": ConfigRecord({"code": 0, "message": "ok"}),
        "metrics": metrics,
        "site": site,
    }), reply_to=msg)


def _clipped(update: list[np.ndarray], bound: float) -> list[np.ndarray]:
    """The update scaled to L2 norm at most ``bound`` (what Flower's ``fixedclipping_mod`` does)."""
    norm = _norm(update)
    return update if norm <= bound or norm == 0 else [u * (bound / norm) for u in update]


def _update(new: ArrayRecord, sent: ArrayRecord, max_norm: float) -> tuple[list[np.ndarray] | None, str]:
    if set(new.keys()) != set(sent.keys()):
        return None, "trained weights do not match the model's parameter names"
    update = []
    for key in sent.keys():
        ref, arr = sent[key].numpy(), new[key].numpy()
        if arr.shape != ref.shape:
            return None, f"array {key} has shape {arr.shape}, expected {ref.shape}"
        diff = arr.astype(np.float64) - ref.astype(np.float64)
        if not np.all(np.isfinite(diff)):
            return None, f"array {key} holds non-finite values"
        update.append(diff)
    norm = _norm(update)
    if norm > max_norm:
        return None, f"update norm {norm:.3g} exceeds the bound {max_norm:.3g}"
    return update, ""


def _norm(arrays: list[np.ndarray]) -> float:
    return float(np.sqrt(sum(float(np.sum(a * a)) for a in arrays)))
