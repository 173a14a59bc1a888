"""The federated round loop: sample, send, validate, aggregate, evaluate, checkpoint.

Flower's ``Strategy.start`` runs the rounds itself; ImplantFL needs four things it does
not do, so the loop is ours and the strategy's ``configure_*``/``aggregate_*`` are
Flower's: every reply is rebuilt if its update was compressed, then validated (shapes,
finite values, norm bound) before aggregation, per-site metrics (and bytes sent) are
kept each round, the run is checkpointed after every round, and a restarted run resumes
from its last checkpoint. With ``secure-aggregation`` a train round runs SecAgg+
(:mod:`server.secure_agg`): the server gets only the sites' mean update, and each site's
metrics and status.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common.config import RunConfig
from common.errors import ImplantFLError
from server.history import RoundRecord, RunHistory, mean_update_bytes, weighted_means
from server.records import record_to_numpy
from server.validation import ReplyVerdict, validate_replies

logger = logging.getLogger(__name__)

TRAIN_KEYS = ("train-loss", "train-accuracy")
EVAL_KEYS = ("val-loss", "val-accuracy")

EvaluateFn = Callable[[int, ArrayRecord], Mapping[str, float]]
RoundHook = Callable[[RoundRecord, ArrayRecord], None]


@dataclass
class LoopState:
    arrays: ArrayRecord
    history: RunHistory = field(default_factory=RunHistory)
    start_round: int = 1


def run_rounds(
    grid: Grid,
    strategy: Strategy,
    cfg: RunConfig,
    state: LoopState,
    *,
    send_config: Mapping[str, Any],
    evaluate_fn: EvaluateFn | None = None,
    on_round_end: RoundHook | None = None,
    context: Context | None = None,
) -> LoopState:
    """Run rounds ``state.start_round .. cfg.num_server_rounds``; returns the final state.

    ``context`` (the ServerApp's) is needed by secure aggregation only.
    """
    if cfg.secure_aggregation and context is None:
        raise ImplantFLError("secure aggregation needs the ServerApp context")
    arrays = state.arrays
    names: dict[int, str] = {}  # node id -> site name, learned from replies (names failed sites)
    for rnd in range(state.start_round, cfg.num_server_rounds + 1):
        wait_for_sites(grid, cfg.min_available_sites, timeout_s=cfg.round_timeout_s)
        t0 = time.monotonic()
        record = RoundRecord(round=rnd)
        logger.info("round %d/%d: training", rnd, cfg.num_server_rounds)
        planned = strategy.configure_train(rnd, arrays, ConfigRecord(dict(send_config)), grid)
        if cfg.stats_round(rnd):
            new_arrays, verdicts = _stats_train(grid, rnd, arrays, planned, cfg, names)
        elif cfg.secure_aggregation:
            new_arrays, verdicts = _secure_train(grid, context, rnd, arrays, planned, cfg, names)
        else:
            new_arrays, verdicts = _plain_train(grid, strategy, rnd, arrays, planned, cfg, names)
        record.add(verdicts, "train")
        if new_arrays is not None:
            arrays = new_arrays
        record.aggregate.update(weighted_means(verdicts, TRAIN_KEYS))
        record.aggregate.update(mean_update_bytes(verdicts))
        record.aggregate["sites-used"] = sum(v.status == "ok" for v in verdicts) if new_arrays is not None else 0
        if new_arrays is None:
            record.failed = _failure(verdicts)

        if cfg.fraction_evaluate > 0:
            replies, senders = _exchange(
                grid, strategy.configure_evaluate(rnd, arrays, ConfigRecord(dict(send_config)), grid),
                cfg.round_timeout_s, names,
            )
            verdicts = validate_replies(replies, reference=None, max_update_norm=cfg.max_update_norm, senders=senders)
            record.add(verdicts, "val")
            record.aggregate.update(weighted_means(verdicts, EVAL_KEYS))
        if evaluate_fn is not None:
            record.aggregate.update({f"test-{k}": float(v) for k, v in evaluate_fn(rnd, arrays).items()})
        record.wall_s = time.monotonic() - t0
        state.history.rounds.append(record)
        logger.info("round %d done in %.1fs: %s", rnd, record.wall_s, _fmt(record.aggregate))
        if on_round_end is not None:
            on_round_end(record, arrays)
    state.arrays = arrays
    return state


def _plain_train(
    grid: Grid, strategy: Strategy, rnd: int, arrays: ArrayRecord, planned: Iterable[Message], cfg: RunConfig,
    names: dict[int, str],
) -> tuple[ArrayRecord | None, list[ReplyVerdict]]:
    """Send the train messages, validate every site's update, aggregate the accepted ones."""
    replies, senders = _exchange(grid, planned, cfg.round_timeout_s, names)
    verdicts = validate_replies(replies, reference=record_to_numpy(arrays), max_update_norm=cfg.max_update_norm,
                                senders=senders)
    # In site order, not arrival order: float sums depend on their order, and a seeded run
    # must end with the same model however the replies raced.
    accepted = [v.message for v in sorted(verdicts, key=lambda v: v.site) if v.message is not None]
    if not accepted:
        logger.warning("round %d: no usable update; the global model is unchanged", rnd)
        return None, verdicts
    new_arrays, _ = strategy.aggregate_train(rnd, accepted)
    return new_arrays, verdicts


def _stats_train(
    grid: Grid, rnd: int, arrays: ArrayRecord, planned: Iterable[Message], cfg: RunConfig, names: dict[int, str],
) -> tuple[ArrayRecord | None, list[ReplyVerdict]]:
    """The dp-stats round: sites release noised statistics once; their sum is solved for the global head."""
    from server.stats_round import solve_global, validate_stats_replies

    num_classes, dim = record_to_numpy(arrays)["weight"].shape
    replies, senders = _exchange(grid, planned, cfg.round_timeout_s, names)
    verdicts, accepted = validate_stats_replies(replies, num_classes=num_classes, dim=dim, solver=cfg.dp_stats_solver,
                                                senders=senders)
    new_arrays = solve_global(accepted, solver=cfg.dp_stats_solver, ridge=cfg.dp_stats_ridge)
    if new_arrays is None:
        logger.warning("round %d: no usable statistics; the global model is unchanged", rnd)
    return new_arrays, verdicts


def _secure_train(
    grid: Grid, context: Context | None, rnd: int, arrays: ArrayRecord, planned: Iterable[Message], cfg: RunConfig,
    names: dict[int, str],
) -> tuple[ArrayRecord | None, list[ReplyVerdict]]:
    """One SecAgg+ round: the server gets the mean update; per site only metrics and status."""
    from server.secure_agg import secure_train_round

    assert context is not None  # checked by run_rounds
    result = secure_train_round(grid, context, rnd, arrays, planned, cfg)
    _learn_names(result.replies, names)
    verdicts = validate_replies(result.replies, reference=None, max_update_norm=cfg.max_update_norm,
                                senders=_senders(result.sent, names))
    if result.arrays is None:
        logger.warning("round %d: %s; the global model is unchanged", rnd, result.reason)
    return result.arrays, verdicts


def _learn_names(replies: Iterable[Message], names: dict[int, str]) -> None:
    for reply in replies:
        if not reply.has_error() and "site" in reply.content.config_records:
            names[reply.metadata.src_node_id] = str(reply.content.config_records["site"].get("name", ""))


def _exchange(
    grid: Grid, messages: Iterable[Message], timeout: float, names: dict[int, str]
) -> tuple[list[Message], dict[str, str]]:
    """Send, wait for the replies, and say which site each sent message went to.

    ``names`` (node id -> site name) is updated from every reply that names its site.
    """
    sent = list(messages)
    replies = list(grid.send_and_receive(sent, timeout=timeout))
    _learn_names(replies, names)
    return replies, _senders(sent, names)


def _senders(sent: Iterable[Message], names: Mapping[int, str]) -> dict[str, str]:
    """Sent message id -> the site it went to (its name when known, else node-<id>)."""
    return {m.metadata.message_id: names.get(m.metadata.dst_node_id) or f"node-{m.metadata.dst_node_id}" for m in sent}


def wait_for_sites(grid: Grid, minimum: int, *, timeout_s: float, poll_s: float = 1.0) -> None:
    """Wait until ``minimum`` sites are connected; stop the run after ``timeout_s`` instead of hanging.

    Flower's strategies wait for ``min_available_nodes`` without a time limit, so a
    federation that lost too many sites would otherwise wait forever.
    """
    deadline = time.monotonic() + timeout_s
    while len(list(grid.get_node_ids())) < minimum:
        if time.monotonic() > deadline:
            raise ImplantFLError(
                f"fewer than {minimum} sites connected after {timeout_s:.0f} s (min-available-sites); run stopped"
            )
        time.sleep(poll_s)


def _failure(verdicts: Iterable[ReplyVerdict]) -> str:
    """Why a round accepted no update, from its replies' own statuses."""
    verdicts = list(verdicts)
    if not verdicts:
        return "no site replied"
    reasons = sorted({f"{v.status}: {v.reason}" if v.reason else v.status for v in verdicts})
    return "no update was accepted (" + "; ".join(reasons)[:300] + ")"


def _fmt(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.3f}" for k, v in values.items())
