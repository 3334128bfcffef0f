"""The web console and ``/metrics`` (Starlette + uvicorn, assets in ``static/``).

``create_app(client, token=...)`` is the ASGI app over an ``engine.client.Client``;
``run_console(target, token)`` serves it apart from the server (``rtseg console``), and
``rtseg serve`` starts it beside gRPC (``start_in_server``). See docs/console.md.
"""

from __future__ import annotations

__all__ = ["create_app", "run_console", "start_in_server", "ConsoleServer", "READY_LINE"]


def __getattr__(name: str):
    if name == "create_app":
        from engine.web._app import create_app

        return create_app
    if name in ("run_console", "start_in_server", "ConsoleServer", "READY_LINE"):
        from engine.web import _server

        return getattr(_server, name)
    raise AttributeError(name)
