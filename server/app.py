"""Flower ServerApp: a thin adapter that sets up a run and hands it to :mod:`server.loop`.

``app`` is what ``[tool.flwr.app.components]`` names for deployments; its run config is
``[tool.flwr.app.config]`` plus the server-only keys ``catalog`` (path to catalog.json),
``checkpoint-dir`` and ``encoder-file`` (the public encoder a run with a head uses; its
SHA-256 becomes the run-config ``encoder`` the sites check). Simulations build their own
app with :func:`build_server_app`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

from common.catalog import Catalog
from common.config import RunConfig
from common.errors import ConfigError, ImplantFLError
from common.models import build_model
from server.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from server.history import RoundRecord, run_outcome
from server.loop import EvaluateFn, LoopState, RoundHook, run_rounds
from server.strategy import (
    build_strategy,
    restore_strategy_arrays,
    restore_strategy_state,
    strategy_arrays,
    strategy_state,
)

logger = logging.getLogger(__name__)

SERVER_KEYS = ("catalog", "checkpoint-dir", "encoder-file")


@dataclass
class RunSetup:
    """Everything the ServerApp needs beyond Flower's context (filled by a simulation)."""

    config: RunConfig | None = None  # None: parse context.run_config
    catalog: Catalog | None = None  # None: run config key ``catalog``
    checkpoint_dir: Path | None = None  # None: run config key ``checkpoint-dir`` (or no checkpoints)
    encoder: Any = None  # the public FrozenEncoder (None: run config key ``encoder-file``, when the run has a head)
    evaluate_fn: EvaluateFn | None = None  # central evaluation (simulations only: the server has no images)
    on_round_end: RoundHook | None = None
    abort: threading.Event | None = None  # set by a simulation whose runtime died: every wait ends (AbortableGrid)
    abort_reason: list[str] = field(default_factory=list)  # why, for the error the run ends with
    final: LoopState | None = field(default=None, init=False)  # set when the run ends


def initial_arrays(cfg: RunConfig, catalog: Catalog, encoder: Any = None) -> ArrayRecord:
    """The round-1 global model: the end-to-end model, or the head on the public encoder's features."""
    torch.manual_seed(cfg.seed)
    if not cfg.uses_encoder:
        model = build_model(cfg.model, num_classes=len(catalog), image_size=cfg.image_size)
        return ArrayRecord(model.state_dict())
    if encoder is None:
        raise ConfigError(f"head = {cfg.head} needs the public encoder (server.toml encoder, or --encoder)")
    from common.models.heads import EncoderClassifier, HeadConfig, build_head

    head = build_head(HeadConfig("mlp" if cfg.head == "mlp" else "linear", encoder.dim, len(catalog)))
    if cfg.head == "finetune":
        return ArrayRecord(EncoderClassifier(encoder, head).state_dict())
    return ArrayRecord(head.state_dict())


def _encoder(setup: RunSetup, cfg: RunConfig, run_config: dict) -> tuple[RunConfig, Any]:
    """The run's public encoder; fills run-config ``encoder`` with its hash when the run left it empty."""
    if not cfg.uses_encoder:
        return cfg, None
    encoder = setup.encoder
    if encoder is None:
        if not run_config.get("encoder-file"):
            raise ConfigError(f"head = {cfg.head} needs the public encoder: set encoder in server.toml "
                              "(run config key encoder-file)")
        from common.encoders import load_encoder

        encoder = load_encoder(Path(str(run_config["encoder-file"])), expected_sha256=cfg.encoder or None)
    if cfg.encoder and cfg.encoder != encoder.sha256:
        raise ConfigError(f"the run names encoder {cfg.encoder[:12]} but the server's encoder is {encoder.sha256[:12]}")
    if encoder.config.image_size != cfg.image_size:
        raise ConfigError(f"the encoder takes {encoder.config.image_size}-pixel crops; the run's image-size is "
                          f"{cfg.image_size}")
    return cfg.replace(encoder=encoder.sha256), encoder


def _resolve(setup: RunSetup, context: Context) -> tuple[RunConfig, Catalog, Path | None]:
    run_config = dict(context.run_config)
    cfg = setup.config or RunConfig.from_flower(run_config, ignore=SERVER_KEYS)
    catalog = setup.catalog
    if catalog is None:
        if not run_config.get("catalog"):  # absent, or pyproject's empty default
            raise ConfigError("run config needs key 'catalog' (path to the consortium catalog.json)")
        catalog = Catalog.load(Path(str(run_config["catalog"])))
    ckpt = setup.checkpoint_dir
    if ckpt is None and run_config.get("checkpoint-dir"):
        ckpt = Path(str(run_config["checkpoint-dir"]))
    return cfg, catalog, ckpt


def run(grid: Grid, context: Context, setup: RunSetup) -> LoopState:
    """Run (or resume) a federated training and return its final state.

    The run's outcome (:func:`server.history.run_outcome`) goes into the checkpoint; a
    deployment (no central evaluation) also writes ``results.json`` and ``report.md``
    there. A run whose rounds all failed raises, so Flower marks it failed.
    """
    started = time.monotonic()
    cfg, catalog, ckpt_dir = _resolve(setup, context)
    cfg, encoder = _encoder(setup, cfg, dict(context.run_config))
    meta = {"config": cfg.to_flower(), "catalog-fingerprint": catalog.fingerprint(), "strategy": cfg.strategy}
    state = LoopState(arrays=initial_arrays(cfg, catalog, encoder))
    strategy = build_strategy(cfg)
    previous = load_checkpoint(ckpt_dir) if ckpt_dir else None
    if previous is not None:
        if previous.meta.get("catalog-fingerprint") != meta["catalog-fingerprint"]:
            raise ConfigError("checkpoint was made with another catalog; use a new checkpoint-dir")
        logger.info("resuming after round %d from checkpoint", previous.round)
        state = LoopState(arrays=previous.arrays, history=previous.history, start_round=previous.round + 1)
        restore_strategy_state(strategy, dict(previous.meta.get("strategy-state", {})))
        restore_strategy_arrays(strategy, previous.strategy_arrays)

    def on_round_end(record: RoundRecord, arrays: ArrayRecord) -> None:
        if ckpt_dir is not None:
            meta["strategy-state"] = strategy_state(strategy)
            save_checkpoint(ckpt_dir, Checkpoint(record.round, arrays, state.history, meta, strategy_arrays(strategy)))
        if setup.on_round_end is not None:
            setup.on_round_end(record, arrays)

    send_config = {**cfg.to_flower(), "catalog-fingerprint": catalog.fingerprint()}
    state = run_rounds(
        grid, strategy, cfg, state,
        send_config=send_config, evaluate_fn=setup.evaluate_fn, on_round_end=on_round_end, context=context,
    )
    setup.final = state
    rounds = state.history.to_list()
    outcome = run_outcome(rounds, cfg.num_server_rounds)
    if ckpt_dir is not None:
        meta["outcome"] = outcome
        save_checkpoint(ckpt_dir, Checkpoint(state.history.rounds[-1].round if rounds else 0, state.arrays,
                                             state.history, meta, strategy_arrays(strategy)))
        if setup.evaluate_fn is None:  # a deployment: the operator's report, from what the server holds
            from server.deploy_report import deployment_results, write_deployment_report

            write_deployment_report(ckpt_dir, deployment_results(cfg, rounds, outcome=outcome, started=started,
                                                                 checkpoint_dir=ckpt_dir))
    if outcome["status"] == "failed":
        raise ImplantFLError(outcome["reason"])
    return state


def build_server_app(setup: RunSetup | None = None) -> ServerApp:
    app = ServerApp()
    the_setup = setup or RunSetup()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        if the_setup.abort is not None:
            from server.abortable_grid import AbortableGrid

            grid = AbortableGrid(grid, the_setup.abort, the_setup.abort_reason)  # type: ignore[assignment]
        run(grid, context, the_setup)

    return app


app = build_server_app()
