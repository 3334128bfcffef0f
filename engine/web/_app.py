"""The console's ASGI app (Starlette): the page, its JSON API, the live sizes stream and
``/metrics``. Every call goes to the server through ``engine.client.Client``, so the same app
runs inside ``rtseg serve`` and apart from it (``rtseg console --target``).

Auth: with a token, every request carries ``Authorization: Bearer TOKEN``; the page itself
and the event stream (``EventSource`` cannot set headers) also take ``?token=``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import math
from importlib import resources
from typing import Any

import grpc
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from engine import errors as E
from engine.web._feed import SizeFeed
from engine.web._prom import CONTENT_TYPE_LATEST, MetricsEndpoint, RemoteSource

KEEPALIVE_S = 15.0
PREVIEW_SAMPLE = 10
QUERY_TOKEN_PATHS = ("/", "/api/live")

# Most specific first; anything else an engine error is 400.
_HTTP_STATUS: tuple[tuple[type, int], ...] = (
    (E.ExpressionError, 400), (E.SegmentExists, 409), (E.GoalExists, 409),
    (E.UnknownSegment, 404), (E.UnknownModel, 404), (E.UnknownGoal, 404),
    (E.SegmentInUse, 409), (E.ModelInUse, 409), (E.Unavailable, 503), (E.Overloaded, 429),
    (E.EngineError, 400), (ValueError, 400),
)


def _static(name: str) -> str:
    return resources.files("engine.web").joinpath("static", name).read_text(encoding="utf-8")


def page_html() -> str:
    """The page with its script and style inlined: one response, behind the token."""
    html = _static("index.html")
    html = html.replace('<link rel="stylesheet" href="console.css">',
                        "<style>\n" + _static("console.css") + "\n</style>")
    return html.replace('<script src="console.js"></script>',
                        "<script>\n" + _static("console.js") + "\n</script>")


def _clean(obj: Any) -> Any:
    """JSON-safe: dataclasses to dicts, NaN/inf to None."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _json(obj: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(_clean(obj), status_code=status)


def error_response(exc: BaseException) -> JSONResponse:
    if isinstance(exc, grpc.RpcError):
        code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
        details = exc.details() if hasattr(exc, "details") else str(exc)
        status = 401 if code == "UNAUTHENTICATED" else 502
        return _json({"error": {"type": code, "message": f"{code}: {details}"}}, status)
    status = next((s for cls, s in _HTTP_STATUS if isinstance(exc, cls)), 500)
    body: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, E.ExpressionError):
        body.update(line=exc.line, col=exc.col, message=exc.message, text=str(exc))
    return _json({"error": body}, status)


class TokenGuard:
    """ASGI middleware: the bearer token on every request (``?token=`` on the page and the
    event stream only)."""

    def __init__(self, app, token: str | None):
        self.app = app
        self.token = token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.token or self._allowed(Request(scope)):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if request.url.path == "/":
            response: Response = HTMLResponse(_LOGIN_PAGE, status_code=401)
        else:
            response = JSONResponse({"error": {"type": "UNAUTHENTICATED", "message":
                                     "missing or wrong token: send 'Authorization: Bearer "
                                     "TOKEN' (the server's --token)"}}, status_code=401)
        response.headers["WWW-Authenticate"] = 'Bearer realm="rtseg"'
        await response(scope, receive, send)

    def _allowed(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else None
        if given is None and request.url.path in QUERY_TOKEN_PATHS:
            given = request.query_params.get("token")
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())


_LOGIN_PAGE = """<!doctype html><meta charset="utf-8"><title>rtseg console</title>
<link rel="icon" href="data:,">
<script>
const t = sessionStorage.getItem("rtseg-token");
if (t && !location.search.includes("token=")) location.replace("/?token=" + encodeURIComponent(t));
</script>
<form method="get" action="/" style="font:15px system-ui;margin:4em auto;width:22em">
<h2>rtseg console</h2><p>This server needs its token (<code>--token</code>).</p>
<input name="token" type="password" placeholder="token" autofocus style="width:100%;padding:.4em">
<button style="margin-top:.6em">Open</button></form>"""


class ConsoleApp:
    """Handlers over one ``Client``; ``metrics`` renders ``/metrics``."""

    def __init__(self, client, metrics: MetricsEndpoint, target: str = ""):
        self.client = client
        self.metrics = metrics
        self.target = target
        self.feed = SizeFeed(client)

    async def call(self, fn, *args, **kwargs):
        try:
            return await run_in_threadpool(fn, *args, **kwargs)
        except (E.EngineError, ValueError, grpc.RpcError) as exc:
            raise _Failed(error_response(exc)) from None

    # ------------------------------------------------------------------ page, metrics

    async def page(self, request: Request) -> Response:
        return HTMLResponse(page_html(), headers={"Cache-Control": "no-store"})

    async def metrics_text(self, request: Request) -> Response:
        try:
            body = await self.metrics.render()
        except (E.EngineError, grpc.RpcError) as exc:
            return error_response(exc)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    # ------------------------------------------------------------------ segments

    async def info(self, request: Request) -> Response:
        st = await self.call(self.client.stats)
        return _json({"target": self.target, "clock": st["clock"], "now_ms": st["now_ms"],
                      "shards": st["shards"], "users": st["users"], "segments": st["segments"],
                      "last_sequence": st["last_sequence"]})

    async def segments(self, request: Request) -> Response:
        return _json(await self.call(self.client.list_segments))

    async def segment(self, request: Request) -> Response:
        return _json(await self.call(self.client.get_segment, request.path_params["name"]))

    async def history(self, request: Request) -> Response:
        h = await self.call(self.client.segment_history, request.path_params["name"])
        return _json({"name": h.name, "interval_ms": h.interval_ms,
                      "retention_ms": h.retention_ms, "samples": [list(s) for s in h.samples]})

    async def preview(self, request: Request) -> Response:
        body = await _body(request)
        expression = str(body.get("expression", ""))
        sample = max(0, min(int(body.get("sample", PREVIEW_SAMPLE)), 100))
        size, ids = await self.call(self.client.preview_segment, expression, sample,
                                    str(body.get("name", "")))
        return _json({"ok": True, "size": size, "sample": ids})

    async def create(self, request: Request) -> Response:
        body = await _body(request)
        info = await self.call(self.client.create_segment, str(body.get("name", "")),
                               str(body.get("expression", "")), str(body.get("description", "")))
        self.feed.mark_dirty()
        return _json(info, 201)

    async def replace(self, request: Request) -> Response:
        body = await _body(request)
        desc = body.get("description")
        info = await self.call(self.client.replace_segment, request.path_params["name"],
                               str(body.get("expression", "")),
                               None if desc is None else str(desc))
        self.feed.mark_dirty()
        return _json(info)

    async def delete(self, request: Request) -> Response:
        info = await self.call(self.client.delete_segment, request.path_params["name"])
        self.feed.mark_dirty()
        return _json(info)

    # ------------------------------------------------------------------ users, models, goals

    async def user(self, request: Request) -> Response:
        user_id = request.query_params.get("id", "")
        if not user_id:
            return _json({"error": {"type": "ValueError", "message": "give ?id=USER_ID"}}, 400)
        return _json(await self.call(self.client.get_user, user_id))

    async def models(self, request: Request) -> Response:
        return _json(await self.call(self.client.list_models))

    async def model(self, request: Request) -> Response:
        return _json(await self.call(self.client.get_model, request.path_params["name"]))

    async def goals(self, request: Request) -> Response:
        return _json(await self.call(self.client.list_goals))

    async def goal(self, request: Request) -> Response:
        return _json(await self.call(self.client.get_goal, request.path_params["name"]))

    # ------------------------------------------------------------------ live sizes (SSE)

    async def live(self, request: Request) -> Response:
        feed = self.feed

        async def stream():
            q = feed.listen()
            try:
                yield "retry: 2000\n\n"
                while True:
                    try:
                        msg = await asyncio.wait_for(q.get(), KEEPALIVE_S)
                    except asyncio.TimeoutError:
                        yield ": keepalive\n\n"
                        continue
                    if msg is None:
                        return
                    yield f"event: sizes\ndata: {json.dumps(msg)}\n\n"
            finally:
                feed.unlisten(q)
        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


class _Failed(Exception):
    def __init__(self, response: Response):
        self.response = response


async def _body(request: Request) -> dict:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _Failed(_json({"error": {"type": "ValueError",
                                       "message": "the body must be a JSON object"}}, 400))
    if not isinstance(body, dict):
        raise _Failed(_json({"error": {"type": "ValueError",
                                       "message": "the body must be a JSON object"}}, 400))
    return body


def create_app(client, *, token: str | None = None, source=None, target: str = ""):
    """The console ASGI app over ``client``; ``source`` feeds ``/metrics`` (default: what
    GetStats tells, :class:`engine.web._prom.RemoteSource`). -> (asgi app, ConsoleApp)."""
    console = ConsoleApp(client, MetricsEndpoint(source or RemoteSource(client)), target)
    c = console
    routes = [
        Route("/", c.page),
        Route("/metrics", c.metrics_text),
        Route("/api/info", c.info),
        Route("/api/segments", c.segments, methods=["GET"]),
        Route("/api/segments", c.create, methods=["POST"]),
        Route("/api/segments/{name}", c.segment, methods=["GET"]),
        Route("/api/segments/{name}", c.replace, methods=["PUT"]),
        Route("/api/segments/{name}", c.delete, methods=["DELETE"]),
        Route("/api/segments/{name}/history", c.history),
        Route("/api/preview", c.preview, methods=["POST"]),
        Route("/api/user", c.user),
        Route("/api/models", c.models),
        Route("/api/models/{name}", c.model),
        Route("/api/goals", c.goals),
        Route("/api/goals/{name}", c.goal),
        Route("/api/live", c.live),
    ]

    async def failed(request: Request, exc: _Failed) -> Response:
        return exc.response

    app = Starlette(routes=routes, exception_handlers={_Failed: failed})
    return TokenGuard(app, token), console
