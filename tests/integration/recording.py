"""A ServerApp factory for simulations whose Grid is wrapped, so a test sees what the server sent and received."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def recording_server_app(grids: list[Any], wrap: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A stand-in for ``server.app.build_server_app``: the ServerApp runs on ``wrap(grid)``, kept in ``grids``."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    import server.app as server_app

    def build(setup: Any) -> ServerApp:
        app = ServerApp()

        @app.main()
        def _main(grid: Grid, context: Context) -> None:
            grids.append(wrap(grid))
            server_app.run(grids[-1], context, setup)

        return app

    return build
