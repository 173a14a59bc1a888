"""The dashboard's web app (Starlette): one page, its JSON API, nothing that changes state.

Routes (GET only; any other method is 405): ``/`` the page, ``/api/runs`` the runs,
``/api/runs/<id>`` one run (404 if unknown), ``/runs/<id>/model-card`` the release's model
card as text. Every asset is in the page itself: no CDN, no build step, works air-gapped.

With a token (required off 127.0.0.1), every request needs ``Authorization: Bearer
<token>``, or the session cookie that one visit with ``?token=<token>`` sets. A wrong or
missing token is a plain 401.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route

from server.dashboard.runs_view import RunSource, model_card, run_view, summary

COOKIE = "implantfl_dashboard"
PAGE = Path(__file__).with_name("page.html")


class _TokenGate(BaseHTTPMiddleware):
    def __init__(self, app: Any, token: str) -> None:
        super().__init__(app)
        self.token = token

    def _ok(self, value: str | None) -> bool:
        return value is not None and hmac.compare_digest(value.encode(), self.token.encode())

    async def dispatch(self, request: Request, call_next: Callable) -> Response:
        header = request.headers.get("authorization", "")
        bearer = header[7:].strip() if header.lower().startswith("bearer ") else None
        if self._ok(bearer) or self._ok(request.cookies.get(COOKIE)):
            return await call_next(request)
        query = request.query_params.get("token")
        if self._ok(query):  # once: the cookie carries it from now on, the URL no longer does
            target = request.url.remove_query_params("token")
            response = RedirectResponse(str(target.path) + (f"?{target.query}" if target.query else ""), status_code=303)
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
            return response
        return PlainTextResponse("401: a valid dashboard token is required (Authorization: Bearer, or ?token=)",
                                 status_code=401)


def build_app(sources: Callable[[], Sequence[RunSource]], *, token: str | None = None, title: str = "ImplantFL") -> Starlette:
    """The app over the runs ``sources()`` lists (called per request: new runs appear)."""

    def find(run_id: str) -> RunSource | None:
        return next((s for s in sources() if s.run_id == run_id), None)

    async def page(_request: Request) -> Response:
        return HTMLResponse(PAGE.read_text(encoding="utf-8").replace("{{TITLE}}", _escape(title)),
                            headers={"Cache-Control": "no-store"})

    async def runs(_request: Request) -> Response:
        return JSONResponse([summary(s) for s in sources()], headers={"Cache-Control": "no-store"})

    async def one_run(request: Request) -> Response:
        src = find(request.path_params["run_id"])
        if src is None:
            return JSONResponse({"error": "no such run"}, status_code=404)
        return JSONResponse(run_view(src), headers={"Cache-Control": "no-store"})

    async def card(request: Request) -> Response:
        src = find(request.path_params["run_id"])
        text = model_card(src) if src is not None else None
        if text is None:
            return PlainTextResponse("404: no model card for this run", status_code=404)
        return PlainTextResponse(text, media_type="text/markdown; charset=utf-8")

    routes = [Route("/", page, methods=["GET"]), Route("/api/runs", runs, methods=["GET"]),
              Route("/api/runs/{run_id}", one_run, methods=["GET"]),
              Route("/runs/{run_id}/model-card", card, methods=["GET"])]
    middleware = [Middleware(_TokenGate, token=token)] if token else []
    return Starlette(routes=routes, middleware=middleware)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
