"""Flower ClientApp: a thin adapter from Flower messages to :mod:`client.task`.

``app`` is what ``[tool.flwr.app.components]`` names for deployments (the site comes from
``node_config["site-config"]``). Simulations build their own app with
:func:`build_client_app`, passing the simulated sites.

Train messages pass through :func:`client_dp_mod`: when the run asks for client-level DP
with clipping at the site (``client-dp = fixed-client | adaptive-client``), Flower's
``fixedclipping_mod`` / ``adaptiveclipping_mod`` clip the update this site sends; other
runs pass unchanged, so one ClientApp serves every run. Before that, train messages of a
run with ``secure-aggregation = true`` go through SecAgg+ (:mod:`client.training.secure_agg`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM, KEY_NORM_BIT

from client import task
from client.site.config import SiteConfig, resolve_site
from client.training.secure_agg import SECAGG_RECORD, secure_agg_mod


def _arrays(msg: Message) -> ArrayRecord:
    return next(iter(msg.content.array_records.values()))


def _run_config(msg: Message) -> Mapping[str, Any]:
    """The server's run-config record (named ``config``; a secure round adds the SecAgg+ protocol's record)."""
    records = msg.content.config_records
    return records["config"] if "config" in records else next(iter(records.values()), {})


def _config(msg: Message) -> dict:
    config = dict(_run_config(msg))
    config.pop(KEY_CLIPPING_NORM, None)  # the client-side DP wrapper's, read by the clipping mod
    return config


CLIPPING_MODS = {"fixed-client": fixedclipping_mod, "adaptive-client": adaptiveclipping_mod}


def client_dp_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Apply Flower's clipping mod that the run's ``client-dp`` names; a reply without weights passes as is.

    Flower's mods turn a reply without exactly one ArrayRecord into an error; a site's
    refusal (``policy-refused``, ``budget-exhausted``, ``error``) carries no weights and
    must reach the server with its ``site`` status, so it is returned unchanged.
    """
    if SECAGG_RECORD in msg.content.config_records:  # a secure round: client.training.secure_agg clips the update it masks
        return call_next(msg, context)
    config = _run_config(msg)
    flower_mod = CLIPPING_MODS.get(str(config.get("client-dp", "none")))
    if flower_mod is None:
        return call_next(msg, context)
    if KEY_CLIPPING_NORM not in config or len(msg.content.array_records) != 1:
        return flower_mod(msg, context, call_next)  # Flower's precondition error, before any training
    reply = call_next(msg, context)
    if reply.has_error() or not reply.content.array_records:
        return reply  # a refusal or a site error: nothing to clip, and its status must reach the server
    if _unchanged(_arrays(reply), _arrays(msg)):  # Flower's clipping divides by the update's norm
        if flower_mod is adaptiveclipping_mod:
            next(iter(reply.content.metric_records.values()))[KEY_NORM_BIT] = 0
        return reply
    return flower_mod(msg, context, lambda _m, _c: reply)


def _unchanged(new: ArrayRecord, sent: ArrayRecord) -> bool:
    return list(new.keys()) == list(sent.keys()) and all(
        np.array_equal(new[k].numpy(), sent[k].numpy()) for k in new.keys()
    )


def build_client_app(sim_sites: Sequence[SiteConfig] | None = None) -> ClientApp:
    """ClientApp for a deployment (``sim_sites=None``) or a simulation."""
    app = ClientApp()
    sites = list(sim_sites) if sim_sites is not None else None

    @app.train(mods=[secure_agg_mod, client_dp_mod])
    def _train(msg: Message, context: Context) -> Message:
        site = resolve_site(context.node_config, sites)
        content = task.train(site, _arrays(msg), _config(msg), run_id=context.run_id)
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        site = resolve_site(context.node_config, sites)
        content = task.evaluate(site, _arrays(msg), _config(msg), run_id=context.run_id)
        return Message(content=content, reply_to=msg)

    return app


app = build_client_app()
