"""``rtseg mcp``: an MCP server (the official ``mcp`` SDK) in front of a running rtseg server.

An AI assistant lists and inspects segments, previews an expression's reach, looks users up,
reads size history, models and goals; with ``allow_write`` it also creates, replaces and
deletes segments. Every call goes through ``engine.client.Client`` (gRPC), so the MCP server
holds no state of its own and can run anywhere the gRPC server is reachable.

>>> from engine.client import Client                                # doctest: +SKIP
>>> from engine.mcp import build_server
>>> build_server(Client("127.0.0.1:50051"), allow_write=True).run()  # doctest: +SKIP

The tool descriptions carry :data:`EXPRESSION_GUIDE`, a compact summary of
spec/EXPRESSIONS.md with :data:`EXAMPLES` (a test checks that each one compiles).
"""

from __future__ import annotations

import dataclasses
import hmac
import math
import socket
import sys
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import Field

__all__ = ["EXAMPLES", "EXPRESSION_GUIDE", "READ_TOOLS", "WRITE_TOOLS", "build_server", "serve"]

DEFAULT_HTTP_HOST, DEFAULT_HTTP_PORT, HTTP_PATH = "127.0.0.1", 8000, "/mcp"
DEFAULT_CALL_TIMEOUT_S = 60.0   # of each gRPC call, unless --timeout
DEFAULT_SAMPLE = 10
MAX_SAMPLE = 1000
DEFAULT_HISTORY_POINTS = 200

READ_TOOLS = ("list_segments", "get_segment", "preview_segment", "get_user", "segment_history",
              "list_models", "get_model", "list_goals", "get_goal")
WRITE_TOOLS = ("create_segment", "replace_segment", "delete_segment")

# (expression, what it selects). Every one must compile against a 30d retention with
# predictive functions allowed (tests/test_mcp.py checks the ones in the descriptions).
EXAMPLES: tuple[tuple[str, str], ...] = (
    ("count(view_product, 48h) >= 3 and count(purchase, 48h) == 0",
     "viewed products 3+ times in the last 2 days and bought nothing"),
    ("since(add_to_cart) >= 15m and since(checkout) > since(add_to_cart)",
     "abandoned cart: added to cart 15+ minutes ago and has not checked out since"),
    ("count(purchase where discount > 0, 30d) / count(purchase, 30d) >= 0.5",
     "discount-sensitive: half or more of the last 30 days' purchases were discounted"),
    ('trait.country == "TR" and trait.plan in ["pro", "team"] and not segment("vip")',
     "Turkish pro/team users who are not in the vip segment"),
    ('top_count(view_product.product_id, 7d) >= 3 and sequence(add_to_cart, checkout_start, 1d)',
     "viewed one product 3+ times in a week and started checkout after adding to cart today"),
    ('likely("purchase_7d", 0.8) or bucket("churn_14d") == "high"',
     "model purchase_7d predicts a purchase at 80 % precision, or churn_14d scores high"),
)

EXPRESSION_GUIDE = """\
SEGMENT EXPRESSIONS. One condition (true/false at the top level) over a user's events, \
traits, model scores and other segments.
Syntax: event types, properties and traits are names [A-Za-z_][A-Za-z0-9_:-]*; any other name \
is double-quoted: count("Add to Cart", 1d). Strings use double quotes ("TR"). Keywords and \
functions are lowercase. Durations are a whole number and a unit, no space: 250ms 30s 15m 48h \
7d 2w (write 90m, not 1.5h); a duration is a number of milliseconds. Distances (near only): \
500m 5km 3mi. # starts a comment.
Operators, loosest first: or; and; not; comparisons == != < <= > >=, x in [lit, ...], \
x not in [...], x between lo and hi (inclusive); + -; * /; unary -. One comparison per group \
(a < b and b < c, never a < b < c); parenthesise when in doubt.
Events (E an event type, E.p a property, E.value the event's number, W a window; a window is \
the last W up to now and must not exceed the server's retention, 30d by default): \
count(E, W); sum(E.p, W); avg/min/max(E.p, W) (null if none); distinct(E.p, W); \
top_count(E.p, W) (most events sharing one value of p); active_days(E, W) (distinct UTC days); \
affinity(E.p, W) (most frequent value, compare with a string); since(E) / since_first(E) (ms \
since the latest / earliest event, +inf if none: since(purchase) > 14d); \
sequence(E1, E2, ..., W) (these events in this order within W). Any event argument takes a \
filter on its own properties: count(purchase where value > 50 and category in ["shoes", \
"bags"], 30d), sum(purchase.value where exists(coupon), 7d).
Traits: trait.NAME (string, number or bool; null if unset); exists(trait.NAME); \
since(trait.NAME) / until(trait.NAME) for traits holding ms timestamps \
(until(trait.trial_end) between 0 and 3d); near(LAT, LON, DIST) uses the traits lat and lon.
Segments: segment("NAME") is membership of an existing segment.
Population and models: rfm_r/rfm_f/rfm_m(E, W) quintile 1..5 (5 best); rfm_tier(E, W) in \
["champions", "loyal", "potential_loyalist", "new_customer", "promising", "need_attention", \
"about_to_sleep", "at_risk", "cannot_lose", "hibernating", "lost"] (give W: the default 365d \
exceeds a 30d retention); score("MODEL") probability 0..1; bucket("MODEL") == "high" | \
"medium" | "low"; likely("MODEL", P) true when the score reaches the threshold of precision P \
(list_models / get_model show the models and their curves).
Values: a comparison with null (a missing value) counts as false; comparing a string with a \
number is an error; division by zero gives null.
Errors come back as "line:col: message": fix the text at that column and try again.
Examples:
""" + "".join(f"- `{expr}`: {meaning}\n" for expr, meaning in EXAMPLES)

INSTRUCTIONS = """\
Tools over a live rtseg engine: real-time behavioural segments of users. To build a segment, \
write an expression (the language is in the preview_segment description), check its reach with \
preview_segment, then save it with create_segment when write tools are enabled. Sizes are live; \
segment_history gives sizes over time; get_user shows one user's segments, traits and scores."""

_READ = ToolAnnotations(read_only_hint=True, open_world_hint=False)

Name = Annotated[str, Field(description="the segment's name")]
Expression = Annotated[str, Field(description="a segment expression (see the language above)")]


def _plain(obj: Any) -> Any:
    """Dataclasses, tuples, numpy scalars -> JSON-ready Python values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):   # numpy scalar
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None     # JSON has no NaN or infinity (an unmeasured AUC, say)
    return obj


def _segment(info) -> dict[str, Any]:
    return _plain(info)


def _thin(samples: list, max_points: int) -> list:
    """At most ``max_points`` evenly spaced samples, always the newest."""
    n = len(samples)
    if max_points <= 0 or n <= max_points:
        return samples
    if max_points == 1:
        return samples[-1:]
    step = (n - 1) / (max_points - 1)
    return [samples[round(i * step)] for i in range(max_points)]


_MODEL_SUMMARY = ("name", "version", "algorithm", "auc", "target", "target_segment", "churn",
                  "horizon_ms", "rows", "positives", "base_rate", "trained_ms", "bucket_high",
                  "bucket_medium")
_GOAL_SUMMARY_SKIP = ("days",)


class _Tools:
    """The tools' bodies: each calls the client and turns engine errors into tool errors
    whose text is the server's message (``line:col: ...`` for expressions)."""

    def __init__(self, client):
        self.client = client

    def call(self, method: str, *args, **kwargs):
        import grpc

        from engine.errors import EngineError

        try:
            return getattr(self.client, method)(*args, **kwargs)
        except EngineError as err:
            raise ToolError(str(err)) from err
        except grpc.RpcError as err:
            code = err.code().name if hasattr(err, "code") else "ERROR"
            details = err.details() if hasattr(err, "details") else str(err)
            raise ToolError(f"{code}: {details} (rtseg server {self.client.target})") from err


def build_server(client, *, allow_write: bool = False, name: str = "rtseg") -> MCPServer:
    """An MCP server whose tools call ``client`` (an ``engine.client.Client``). The write
    tools exist only with ``allow_write``: without it they are neither listed nor callable."""
    server = MCPServer(name, instructions=INSTRUCTIONS, log_level="WARNING")
    t = _Tools(client)

    def tool(description: str, annotations: ToolAnnotations = _READ):
        return server.tool(description=description, annotations=annotations)

    @tool("Every segment with its expression, description, live size (number of members), "
          "version and creation time (created_ms, ms since the epoch).")
    def list_segments() -> dict[str, Any]:
        return {"segments": [_segment(s) for s in t.call("list_segments")]}

    @tool("One segment: its expression, description, live size, version and created_ms. "
          "Unknown names are an error.")
    def get_segment(name: Name) -> dict[str, Any]:
        return _segment(t.call("get_segment", name))

    @tool("How many users an expression selects right now, and a sample of their ids, without "
          "saving anything. Use it to check an expression and its reach before create_segment."
          "\n\n" + EXPRESSION_GUIDE)
    def preview_segment(
        expression: Expression,
        sample: Annotated[int, Field(ge=0, le=MAX_SAMPLE,
                                     description="how many member ids to return")] = DEFAULT_SAMPLE,
    ) -> dict[str, Any]:
        size, ids = t.call("preview_segment", expression, sample)
        return {"size": size, "sample_user_ids": ids}

    @tool("One user: whether the engine knows them, the segments they are in (sorted), their "
          "traits and their model scores (model name -> probability).")
    def get_user(user_id: Annotated[str, Field(description="the user's id")]) -> dict[str, Any]:
        return _plain(t.call("get_user", user_id))

    @tool("A segment's size over time: samples of (time_ms, size), oldest first, taken every "
          "interval_ms and kept for retention_ms. Long histories are thinned to max_points "
          "evenly spaced samples (the newest always included).")
    def segment_history(
        name: Name,
        max_points: Annotated[int, Field(ge=1, le=100_000, description="at most this many "
                                         "samples")] = DEFAULT_HISTORY_POINTS,
    ) -> dict[str, Any]:
        h = t.call("segment_history", name)
        samples = _thin(list(h.samples), max_points)
        return {"name": h.name, "interval_ms": h.interval_ms, "retention_ms": h.retention_ms,
                "total_samples": len(h.samples),
                "samples": [{"time_ms": int(ts), "size": int(sz)} for ts, sz in samples]}

    @tool("Every predictive model (latest versions): what it predicts (target within horizon_ms, "
          "churn, or a lookalike of target_segment), its algorithm, validation AUC and training "
          'time. Segments use a model with score("m"), bucket("m") and likely("m", P).')
    def list_models() -> dict[str, Any]:
        reports = t.call("list_models")
        return {"models": [{k: _plain(getattr(r, k, None)) for k in _MODEL_SUMMARY}
                           for r in reports]}

    @tool("One model's full report: target, horizon, features, validation figures, bucket "
          "cut-offs and the precision/recall curve (each point: threshold, precision, recall, "
          'size). likely("m", P) needs a curve point whose precision reaches P.')
    def get_model(name: Annotated[str, Field(description="the model's name")]) -> dict[str, Any]:
        return _plain(t.call("get_model", name).to_dict())

    @tool("Every goal (a target event for a segment's members until end_ms, with a control "
          "group): predicted against actual conversions and the uplift so far.")
    def list_goals() -> dict[str, Any]:
        return {"goals": [{k: v for k, v in _plain(g).items() if k not in _GOAL_SUMMARY_SKIP}
                          for g in t.call("list_goals")]}

    @tool("One goal: segment, target, end, control fraction, predicted and actual conversions "
          "of the test and control groups, uplift with its interval, and the daily progress.")
    def get_goal(name: Annotated[str, Field(description="the goal's name")]) -> dict[str, Any]:
        return _plain(t.call("get_goal", name))

    if allow_write:
        @tool("Create a segment and start maintaining it: every known user is evaluated "
              "(members get ENTER deltas) and membership then follows events and time. Fails "
              "if the name exists (use replace_segment). Preview the expression first."
              "\n\n" + EXPRESSION_GUIDE,
              ToolAnnotations(read_only_hint=False, destructive_hint=False,
                              idempotent_hint=False, open_world_hint=False))
        def create_segment(
            name: Name, expression: Expression,
            description: Annotated[str, Field(description="what the segment is for")] = "",
        ) -> dict[str, Any]:
            return _segment(t.call("create_segment", name, expression, description))

        @tool("Give an existing segment a new expression (its version goes up; users who "
              "enter or leave get deltas). The description is kept unless given. The "
              "expression language is the one described in create_segment and "
              "preview_segment; errors come back as line:col: message.",
              ToolAnnotations(read_only_hint=False, destructive_hint=True,
                              idempotent_hint=True, open_world_hint=False))
        def replace_segment(
            name: Name, expression: Expression,
            description: Annotated[str | None, Field(description="a new description "
                                                     "(omit to keep the current one)")] = None,
        ) -> dict[str, Any]:
            return _segment(t.call("replace_segment", name, expression, description))

        @tool("Delete a segment: stop maintaining it (its members get EXIT deltas). Refused "
              "while other segments use it through segment(\"NAME\").",
              ToolAnnotations(read_only_hint=False, destructive_hint=True,
                              idempotent_hint=False, open_world_hint=False))
        def delete_segment(name: Name) -> dict[str, Any]:
            return _segment(t.call("delete_segment", name))

    return server


class _BearerAuth:
    """ASGI wrapper: every HTTP request must carry ``Authorization: Bearer TOKEN``."""

    def __init__(self, app, token: str):
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            got = dict(scope.get("headers") or ()).get(b"authorization", b"")
            if not hmac.compare_digest(got, self._expected):
                from starlette.responses import JSONResponse

                response = JSONResponse(
                    {"error": "unauthenticated: send Authorization: Bearer <the server's token>"},
                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def serve(client, *, allow_write: bool = False, http: bool = False,
          host: str = DEFAULT_HTTP_HOST, port: int = DEFAULT_HTTP_PORT,
          token: str | None = None) -> None:
    """Serve the tools over stdio (the default) or streamable HTTP at ``http://HOST:PORT/mcp``.

    Over HTTP, when ``token`` is given (the rtseg server's token) every request must carry it
    as a bearer token too. The line ``rtseg mcp serving on URL`` on stderr says it listens
    (``port`` 0 picks a free port).
    """
    server = build_server(client, allow_write=allow_write)
    if not http:
        server.run("stdio")
        return
    import anyio
    import uvicorn

    app = server.streamable_http_app(streamable_http_path=HTTP_PATH, host=host)
    if token:
        app = _BearerAuth(app, token)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)   # connections wait in the backlog until uvicorn accepts them
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    print(f"rtseg mcp serving on http://{shown}:{bound}{HTTP_PATH}", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    anyio.run(lambda: uvicorn.Server(config).serve(sockets=[sock]))
