"""The served engine: gRPC gateway, Ray shard actors, micro-batching, subscriptions, scaling.

``serve(config)`` runs ``rtseg serve``; ``run_server`` is its asyncio form. Importing this
package does not import Ray or start anything.
"""

from __future__ import annotations

__all__ = ["serve", "run_server", "Gateway"]


def __getattr__(name: str):
    if name in ("serve", "run_server"):
        from engine.server import _app

        return getattr(_app, name)
    if name == "Gateway":
        from engine.server._gateway import Gateway

        return Gateway
    raise AttributeError(name)
