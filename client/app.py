"""Flower ClientApp: a thin adapter from Flower messages to :mod:`client.task`.

``app`` is what ``[tool.flwr.app.components]`` names for deployments (the site comes from
``node_config["site-config"]``). Simulations build their own app with
:func:`build_client_app`, passing the simulated sites.
"""

from __future__ import annotations

from collections.abc import Sequence

from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from client import task
from client.runtime import SiteRuntime, resolve_site


def _arrays(msg: Message) -> ArrayRecord:
    return next(iter(msg.content.array_records.values()))


def _config(msg: Message) -> dict:
    return dict(next(iter(msg.content.config_records.values())))


def build_client_app(sim_sites: Sequence[SiteRuntime] | None = None) -> ClientApp:
    """ClientApp for a deployment (``sim_sites=None``) or a simulation."""
    app = ClientApp()
    sites = list(sim_sites) if sim_sites is not None else None

    @app.train()
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
