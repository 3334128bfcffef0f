"""``rtseg mcp``: the MCP server, driven by the ``mcp`` SDK's own client over stdio (and once
over streamable HTTP) against a real ``rtseg serve`` (real Ray, real gRPC).

The first tests need no server: they check, in process, that every worked example in the tool
descriptions is accepted by the engine's parser and checker.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
from mcp import Client as McpClient
from mcp.client.stdio import StdioServerParameters, stdio_client

from engine.expr import compile_expression
from engine.mcp import EXAMPLES, EXPRESSION_GUIDE, READ_TOOLS, WRITE_TOOLS, build_server
from tests.test_server_support import TOKEN, start_server

T0 = 1_700_000_000_000
RETENTION_30D_MS = 30 * 86_400_000
REPO = Path(__file__).resolve().parents[1]
EXAMPLE_LINE = re.compile(r"^- `(.+)`: ", re.MULTILINE)
LINE_COL = re.compile(r"\b\d+:\d+: ")


class _NoServer:
    """Stands in for engine.client.Client where no call is made."""

    target = "nowhere:0"


def _run(fn, *args):
    return anyio.run(fn, *args)


async def _descriptions(allow_write: bool) -> dict[str, str]:
    async with McpClient(build_server(_NoServer(), allow_write=allow_write)) as c:
        return {t.name: t.description or "" for t in (await c.list_tools()).tools}


# ----------------------------------------------------------------------------- descriptions


def test_every_example_in_the_descriptions_compiles():
    tools = _run(_descriptions, True)
    for name in ("preview_segment", "create_segment"):
        examples = EXAMPLE_LINE.findall(tools[name])
        assert 4 <= len(examples) <= 6, name
        assert examples == [expr for expr, _ in EXAMPLES]
        for expr in examples:
            compile_expression(expr, retention_ms=RETENTION_30D_MS, allow_predictive=True)


def test_the_guide_covers_the_language():
    for needle in ("count(E, W)", "sum(E.p, W)", "avg/min/max", "since(E)", "sequence(",
                   "where", "between", " in [", "not", "trait.NAME", 'segment("NAME")',
                   'score("MODEL")', 'bucket("MODEL")', 'likely("MODEL", P)', "rfm_tier",
                   "48h", "line:col"):
        assert needle in EXPRESSION_GUIDE, needle


def test_write_tools_exist_only_when_allowed():
    assert set(_run(_descriptions, False)) == set(READ_TOOLS)
    assert set(_run(_descriptions, True)) == set(READ_TOOLS) | set(WRITE_TOOLS)


# ----------------------------------------------------------------------------- a live server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from engine.client import Client

    srv = start_server(tmp_path_factory, "--shards", "1", "--clock", "event", "--token", TOKEN)
    with Client(srv.target, TOKEN, timeout_s=120) as c:
        c.ingest([{"user_id": f"u{i}", "type": "view", "timestamp_ms": T0 + i,
                   "properties": {"product_id": f"p{i % 2}"}} for i in range(6)]
                 + [{"user_id": "u0", "type": "purchase", "timestamp_ms": T0 + 10, "value": 42.0}])
        c.set_traits("u0", {"country": "TR"})
        c.create_segment("viewers", "count(view, 1d) >= 1", "saw something")
    yield srv
    assert srv.stop() == 0, srv.stderr_tail()


def _mcp_env() -> dict[str, str]:
    """The token comes from the environment, as an assistant's MCP config would set it."""
    return {"RTSEG_TOKEN": TOKEN}


def _stdio(target: str, errlog, *flags: str):
    params = StdioServerParameters(command=sys.executable,
                                   args=["-m", "engine.cli", "mcp", "--target", target, *flags],
                                   env=_mcp_env(), cwd=str(REPO))
    return stdio_client(params, errlog=errlog)


def _session(server, tmp_path, body, *flags: str):
    """Run ``body(client)`` in an MCP session with a fresh ``rtseg mcp`` over stdio."""
    log_path = tmp_path / "mcp.stderr"

    async def main(errlog):
        with anyio.fail_after(180):
            async with McpClient(_stdio(server.target, errlog, *flags)) as c:
                return await body(c)

    try:
        with open(log_path, "w") as errlog:
            return _run(main, errlog)
    except BaseException:
        print(log_path.read_text() if log_path.exists() else "", file=sys.stderr)
        raise


def _text(result) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


def _data(result) -> dict:
    assert not result.is_error, _text(result)
    return result.structured_content if result.structured_content is not None \
        else json.loads(_text(result))


@pytest.mark.ray
def test_read_only_session(server, tmp_path):
    async def body(c):
        names = {t.name for t in (await c.list_tools()).tools}
        assert names == set(READ_TOOLS)

        seg = _data(await c.call_tool("get_segment", {"name": "viewers"}))
        assert (seg["name"], seg["expression"], seg["description"], seg["size"]) == \
            ("viewers", "count(view, 1d) >= 1", "saw something", 6)
        listed = _data(await c.call_tool("list_segments", {}))
        assert [s["name"] for s in listed["segments"]] == ["viewers"]

        preview = _data(await c.call_tool("preview_segment", {
            "expression": 'count(view, 1d) >= 1 and trait.country == "TR"'}))
        assert preview == {"size": 1, "sample_user_ids": ["u0"]}
        preview = _data(await c.call_tool("preview_segment", {
            "expression": "count(view where product_id == \"p0\", 1d) >= 1", "sample": 2}))
        assert preview["size"] == 3 and len(preview["sample_user_ids"]) == 2

        user = _data(await c.call_tool("get_user", {"user_id": "u0"}))
        assert user["known"] is True and user["segments"] == ["viewers"]
        assert user["traits"] == {"country": "TR"}
        history = _data(await c.call_tool("segment_history", {"name": "viewers"}))
        assert history["name"] == "viewers" and history["interval_ms"] > 0
        assert _data(await c.call_tool("list_models", {})) == {"models": []}
        assert _data(await c.call_tool("list_goals", {})) == {"goals": []}

        missing = await c.call_tool("get_segment", {"name": "nope"})
        assert missing.is_error and "nope" in _text(missing)

        # a write tool is not even callable without --allow-write
        refused = await c.call_tool("create_segment", {"name": "sneaky",
                                                       "expression": "count(view, 1d) >= 1"})
        assert refused.is_error
        again = await c.call_tool("get_segment", {"name": "sneaky"})
        assert again.is_error

    _session(server, tmp_path, body)


@pytest.mark.ray
def test_invalid_expression_is_a_tool_error_with_line_and_column(server, tmp_path):
    async def body(c):
        bad = await c.call_tool("preview_segment", {"expression": "count(view, 48) >= 1"})
        assert bad.is_error
        assert "1:13: expected a duration" in _text(bad)
        typed = await c.call_tool("create_segment", {
            "name": "typed", "expression": 'count(view, 1d) == "x"'})
        assert typed.is_error and LINE_COL.search(_text(typed)), _text(typed)
        multi = await c.call_tool("preview_segment", {
            "expression": "count(view, 1d) >= 1\n  and since(purchase) >"})
        assert multi.is_error and re.search(r"\b2:\d+: ", _text(multi)), _text(multi)

    _session(server, tmp_path, body, "--allow-write")


@pytest.mark.ray
def test_write_tools_with_allow_write(server, tmp_path):
    from engine.client import Client

    async def body(c):
        names = {t.name for t in (await c.list_tools()).tools}
        assert names == set(READ_TOOLS) | set(WRITE_TOOLS)
        made = _data(await c.call_tool("create_segment", {
            "name": "buyers", "expression": "count(purchase, 7d) >= 1",
            "description": "bought this week"}))
        assert (made["name"], made["size"], made["version"]) == ("buyers", 1, 1)
        dup = await c.call_tool("create_segment", {"name": "buyers",
                                                   "expression": "count(purchase, 7d) >= 1"})
        assert dup.is_error and "buyers" in _text(dup)
        replaced = _data(await c.call_tool("replace_segment", {
            "name": "buyers", "expression": "sum(purchase.value, 7d) > 100"}))
        assert (replaced["version"], replaced["size"]) == (2, 0)
        assert replaced["description"] == "bought this week"
        gone = _data(await c.call_tool("delete_segment", {"name": "buyers"}))
        assert gone["name"] == "buyers"

    _session(server, tmp_path, body, "--allow-write")
    with Client(server.target, TOKEN) as direct:
        assert [s.name for s in direct.list_segments()] == ["viewers"]


# ----------------------------------------------------------------------------- streamable HTTP

SERVING = re.compile(r"rtseg mcp serving on (http://\S+)")


def _wait_for_url(proc: subprocess.Popen, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([proc.stderr], [], [], 0.5)
        if ready:
            m = SERVING.search(proc.stderr.readline() or "")
            if m:
                return m.group(1)
    raise RuntimeError(f"rtseg mcp --http did not start (exit {proc.poll()})")


@pytest.mark.ray
def test_streamable_http_smoke(server):
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    env = {k: v for k, v in os.environ.items() if not k.startswith("RTSEG_")}
    env.update(_mcp_env())
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "mcp", "--target", server.target,
                             "--http", "--port", "0"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=REPO, start_new_session=True)
    try:
        url = _wait_for_url(proc, 120)

        async def main():
            with anyio.fail_after(120):
                async with httpx2.AsyncClient() as anonymous:
                    r = await anonymous.post(url, json={"jsonrpc": "2.0", "id": 1,
                                                        "method": "tools/list"})
                    assert r.status_code == 401
                headers = {"Authorization": f"Bearer {TOKEN}"}
                async with (httpx2.AsyncClient(headers=headers) as http,
                            McpClient(streamable_http_client(url, http_client=http)) as c):
                    names = {t.name for t in (await c.list_tools()).tools}
                    assert names == set(READ_TOOLS)
                    seg = _data(await c.call_tool("get_segment", {"name": "viewers"}))
                    assert seg["size"] == 6

        _run(main)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        proc.stderr.close()
