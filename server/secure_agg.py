"""Secure aggregation (SecAgg+, Bell et al. 2020) of the sites' updates with Flower's protocol.

Flower 1.41 offers SecAgg+ as ``SecAggPlusWorkflow`` for its legacy workflow only. Its
four stages (setup, share keys, collect masked vectors, unmask) are public methods taking
a Grid, so this module drives them from ImplantFL's own round loop: a legacy context with
a scratch state and a two-method stand-in strategy is all they need. Each site replies
in stage 3 with its update (trained - global), weighted by its number of examples,
quantised and masked (:mod:`client.training.secure_agg`); the server only ever learns the
example-weighted mean update of the sites that took part, never one site's update.

What the server still sees in plain text: each site's metrics and status (examples,
loss, epsilon, refusals), which sites dropped out, and the evaluation replies. Because no
single update is visible, the per-site checks of :mod:`server.validation` cannot run;
sites check their own update (finite, norm bound) before masking, and the server checks
the aggregate. A site lost during setup or key sharing (which Flower's protocol does not
tolerate) is dropped and the key agreement restarted without it, before anyone trains;
after that, dropouts are tolerated down to the reconstruction threshold.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid

from common.config import RunConfig
from server.validation import check_weights, site_of

logger = logging.getLogger(__name__)

SECAGG_RECORD = "secaggplus_configs"  # flwr.common.secure_aggregation.secaggplus_constants.RECORD_KEY_CONFIGS
KEY_AGREEMENT_ATTEMPTS = 3  # setup + key sharing, restarted without the sites lost on the way


@dataclass
class SecAggRound:
    """What one securely aggregated train round produced."""

    arrays: ArrayRecord | None  # new global weights; None when the round produced no usable update
    replies: list[Message] = field(default_factory=list)  # stage-3 replies: metrics and status only, no weights
    sent: list[Message] = field(default_factory=list)  # the stage-3 messages (say which site each reply is from)
    reason: str = ""  # why there is no update ("" when there is one)


class _CapturingGrid:
    """A Grid that keeps the stage-3 exchange (the messages that carry the sites' train config)."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid
        self.sent: list[Message] = []
        self.replies: list[Message] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        if any("config" in m.content.config_records for m in messages):  # the collect-masked-vectors stage
            self.sent, self.replies = messages, replies
        return replies


class _StageStrategy:
    """The two methods of a legacy Strategy that the SecAgg+ stages call."""

    def __init__(self, proxies: list[Any]) -> None:
        self.proxies = proxies

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> list[tuple[Any, Any]]:
        from flwr.common import FitIns, Parameters

        return [(p, FitIns(Parameters(tensors=[], tensor_type=""), {})) for p in self.proxies]

    def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple[Any, dict]:
        # After unmasking every result's parameters hold the weighted mean (Flower's workflow sets them).
        return (results[0][1].parameters if results else None), {}


def workflow(cfg: RunConfig) -> Any:
    """Flower's SecAgg+ workflow with the run's protocol parameters."""
    from flwr.server.workflow import SecAggPlusWorkflow

    return SecAggPlusWorkflow(
        num_shares=cfg.secagg_num_shares, reconstruction_threshold=cfg.secagg_reconstruction_threshold,
        max_weight=float(cfg.secagg_max_weight), clipping_range=cfg.secagg_clipping_range,
        quantization_range=cfg.secagg_quantization_range, modulus_range=2**32, timeout=cfg.round_timeout_s,
    )


def secure_train_round(
    grid: Grid, context: Context, rnd: int, arrays: ArrayRecord, messages: Iterable[Message], cfg: RunConfig
) -> SecAggRound:
    """Run SecAgg+ over the sites the strategy sampled (``messages``: its train messages)."""

    planned = list(messages)
    if len(planned) < 2:
        return SecAggRound(None, reason="secure aggregation needs at least 2 sampled sites")
    if len(planned) * cfg.secagg_quantization_range >= 2**32:  # the masked sum must not wrap the modulus
        return SecAggRound(None, reason="too many sites for secagg-quantization-range; lower it")
    wf = workflow(cfg)
    capture = _CapturingGrid(grid)
    agreed = _agree_keys(wf, capture, context, rnd, [m.metadata.dst_node_id for m in planned])
    if agreed is None:
        return SecAggRound(None, reason="SecAgg+ key agreement failed (fewer than 2 sites, or too few for the "
                                        "reconstruction threshold, kept answering)")
    lctx, st = agreed
    # One RecordDict per site: the collect stage writes each site's ciphertexts into its own.
    st.nid_to_fitins = {m.metadata.dst_node_id: RecordDict({
        "arrays": arrays, "config": ConfigRecord(dict(m.content.config_records["config"]))})
        for m in planned if m.metadata.dst_node_id in st.active_node_ids}
    stages = (("masked-vector collection", wf.collect_masked_vectors_stage), ("unmasking", wf.unmask_stage))
    for name, stage in stages:
        try:
            with np.errstate(divide="ignore", invalid="ignore"):  # a round nobody contributed to: checked below
                ok = stage(capture, lctx, st)
        except (ArithmeticError, ValueError, KeyError) as e:  # e.g. every site refused: no weight to divide by
            logger.warning("round %d: SecAgg+ %s failed: %s", rnd, name, type(e).__name__)
            ok = False
        if not ok:
            return SecAggRound(None, capture.replies, capture.sent, f"SecAgg+ {name} failed (too few sites left "
                                                                    "for the reconstruction threshold, or no site "
                                                                    "contributed)")
    if not any(site_of(r)[1] == "ok" for r in capture.replies):
        return SecAggRound(None, capture.replies, capture.sent, "no site contributed an update")
    mean_update = [a.numpy() for a in lctx.state.array_records["parameters"].values()]
    add_client_dp_noise(mean_update, cfg)
    new, reason = apply_update(arrays, mean_update, cfg.max_update_norm)
    return SecAggRound(new, capture.replies, capture.sent, reason)


def _agree_keys(wf: Any, grid: Grid, context: Context, rnd: int, node_ids: list[int]) -> tuple[Any, Any] | None:
    """SecAgg+ setup and key sharing among ``node_ids``, restarted without the sites lost on the way.

    Flower's protocol keeps a site lost in these two stages on its list of sampled sites,
    and unmasking then fails for everyone. Nothing has been trained yet at this point, so
    restarting the key agreement with the sites that answered costs no privacy and only
    two short exchanges. Returns the legacy context and workflow state ready for the
    masked-vector stage, or None when fewer than 2 sites (or too few for the threshold) remain.
    """
    from flwr.server import LegacyContext
    from flwr.server.compat.grid_client_proxy import GridClientProxy
    from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState

    nodes = list(node_ids)
    for _ in range(KEY_AGREEMENT_ATTEMPTS):
        if len(nodes) < 2:
            return None
        proxies = [GridClientProxy(n, grid, context.run_id) for n in nodes]
        lctx = LegacyContext(context, strategy=_StageStrategy(proxies))
        lctx.state = RecordDict()  # a scratch state: the ServerApp's own context is not touched
        lctx.state.config_records["config"] = ConfigRecord({"current_round": rnd})
        lctx.state.array_records["parameters"] = ArrayRecord()
        st = WorkflowState()
        ok = wf.setup_stage(grid, lctx, st) and wf.share_keys_stage(grid, lctx, st)
        if ok and st.active_node_ids == set(nodes):
            return lctx, st
        answered = [n for n in nodes if n in st.active_node_ids]
        if answered == nodes:  # everyone answered but the threshold check failed: a retry cannot help
            return None
        logger.warning("round %d: %d of %d sites lost during SecAgg+ key agreement; restarting it without them",
                       rnd, len(nodes) - len(answered), len(nodes))
        nodes = answered
    return None


def add_client_dp_noise(mean_update: list[np.ndarray], cfg: RunConfig) -> None:
    """Client-level DP clipped at the sites: Gaussian noise on the mean, as Flower's wrapper adds it (in place).

    Std = ``client-dp-noise * client-dp-clip / client-dp-sampled-sites``; no-op for other runs.
    """
    if cfg.client_dp != "fixed-client":
        return
    from flwr.supercore.differential_privacy import add_gaussian_noise_inplace, compute_stdv

    add_gaussian_noise_inplace(mean_update, compute_stdv(cfg.client_dp_noise, cfg.client_dp_clip, cfg.client_dp_sites))


def apply_update(arrays: ArrayRecord, mean_update: list[np.ndarray], max_update_norm: float) -> tuple[ArrayRecord | None, str]:
    """Global weights + the aggregated update, if that is usable (:func:`server.validation.check_weights`)."""
    if len(mean_update) != len(arrays):
        return None, f"aggregate has {len(mean_update)} arrays, the model {len(arrays)}"
    reference = {k: arrays[k].numpy() for k in arrays.keys()}
    new = {key: _added(ref, upd) for (key, ref), upd in zip(reference.items(), mean_update, strict=True)}
    problem = check_weights(new, reference, max_update_norm)
    if problem:
        return None, f"aggregate: {problem}"
    return ArrayRecord({k: Array(v) for k, v in new.items()}), ""


def _added(ref: np.ndarray, update: np.ndarray) -> np.ndarray:
    if update.shape != ref.shape:
        return update  # check_weights names the mismatch
    if not np.issubdtype(ref.dtype, np.floating):
        return ref
    return (ref.astype(np.float64) + update).astype(ref.dtype)


def guarantee(cfg: RunConfig) -> dict[str, Any]:
    """What SecAgg+ protects in this run, for ``results.json``."""
    return {
        "protocol": "SecAgg+ (Bell et al. 2020), Flower 1.41 SecAggPlusWorkflow + secaggplus_mod",
        "num_shares": cfg.secagg_num_shares,
        "reconstruction_threshold": cfg.secagg_reconstruction_threshold,
        "clipping_range": cfg.secagg_clipping_range,
        "quantization_range": cfg.secagg_quantization_range,
        "modulus_range": 2**32,
        "max_weight": cfg.secagg_max_weight,
        "server_sees": "the example-weighted mean update of the sites that took part in a round; each site's "
                       "metrics and status in plain text; which sites dropped out",
        "server_never_sees": "any single site's update or weights",
        "threat_model": "honest-but-curious server; fewer colluding sites than the reconstruction threshold. "
                        "Not a differential-privacy guarantee by itself: the aggregate is released (combine with "
                        "sample-level DP at the sites, or client-dp = fixed-client, whose noise the server adds to "
                        "the mean). With 2 sites each can infer the other's update.",
        "implementation": "prototype-grade cryptography in flwr 1.41: masks from numpy RandomState seeded with "
                          "32 bits; sites trust the server's list of dropped sites",
        "dropouts": "a site lost during setup or key sharing is dropped and the key agreement restarted "
                    "without it (before any training); later dropouts are tolerated down to the reconstruction "
                    "threshold, below which the round leaves the global model unchanged",
    }
