"""``rtseg serve``: Ray, the shard actors, the gateway and the gRPC server, wired together."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from engine._pb import pb
from engine.config import ServerConfig
from engine.server._actor import freeze_startup_objects
from engine.server._auth import BearerTokenInterceptor
from engine.server._gateway import Gateway
from engine.server._servicer import SegmentEngineServicer, add_to_server

log = logging.getLogger("rtseg.serve")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SegmentEngine"].full_name  # rtseg.v1.SegmentEngine
MAX_SEND_BYTES = 256 * 1024 * 1024
SHUTDOWN_GRACE_S = 3.0
READY_LINE = "rtseg serving on"


def init_ray(config: ServerConfig) -> bool:
    """Start an embedded local Ray (or join ``config.address``); False if already running."""
    import ray

    if ray.is_initialized():
        return False
    common = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    if config.address:
        ray.init(address=config.address, **common)
    else:
        # Ray's own metrics agent samples every worker process; on a small machine it took
        # ~10 % of the CPU under load. rtseg has its own metrics (GetStats, /metrics); set
        # RAY_enable_metrics_collection=1 to have Ray's back.
        os.environ.setdefault("RAY_enable_metrics_collection", "0")
        # Ray starts its workers (the shards) at nice 15: against any busy process at nice 0
        # (a client on the same machine, the gateway) they then get ~3 % of a core. rtseg's
        # default of 5 keeps the gateway ahead of them without starving them
        # (docs/architecture.md, "Ninth round of issue 11").
        os.environ["RAY_worker_niceness"] = str(config.shard_niceness)
        ray.init(address="local", num_cpus=os.cpu_count() or 1,
                 object_store_memory=config.object_store_mb * 1024 * 1024, **common)
    return True


def _credentials(config: ServerConfig):
    with open(config.tls_key, "rb") as f:
        key = f.read()
    with open(config.tls_cert, "rb") as f:
        cert = f.read()
    return grpc.ssl_server_credentials([(key, cert)])


async def run_server(config: ServerConfig, *, on_ready: Callable[[int], None] | None = None,
                     stop: asyncio.Event | None = None, install_signals: bool = True,
                     actor_factory: Callable | None = None) -> None:
    """Serve until ``stop`` is set (or SIGINT/SIGTERM); shuts down gracefully.

    ``actor_factory(index, core_kwargs)`` makes shard handles other than Ray actors (tests:
    ``LocalShard`` runs the shards in this process)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if install_signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - not main thread
                pass
    if config.data_dir:
        os.makedirs(config.data_dir, exist_ok=True)
    gateway = Gateway(config, actor_factory=actor_factory)

    interceptors = [BearerTokenInterceptor(config.token)] if config.token else []
    server = grpc.aio.server(interceptors=interceptors, options=[
        ("grpc.max_receive_message_length", config.max_message_mb * 1024 * 1024),
        ("grpc.max_send_message_length", MAX_SEND_BYTES),
        ("grpc.so_reuseport", 0),
    ])
    add_to_server(SegmentEngineServicer(gateway), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    if config.tls_cert:
        port = server.add_secure_port(config.listen, _credentials(config))
    else:
        port = server.add_insecure_port(config.listen)
    await server.start()
    # the port is open from here: NOT_SERVING (calls answer UNAVAILABLE) while the shards
    # start and the data dir is recovered
    for name in (SERVICE_NAME, ""):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        await gateway.start(config.shard_count)
    except BaseException:
        await server.stop(0)
        await gateway.stop()
        raise
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)

    def set_health(serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in (SERVICE_NAME, ""):
            asyncio.ensure_future(health_servicer.set(name, status))
    gateway.health_hook = set_health
    freeze_startup_objects()
    print(f"{READY_LINE} {config.host}:{port} (shards={config.shard_count}, clock={config.clock}"
          f"{', tls' if config.tls_cert else ''}{', token' if config.token else ''})",
          flush=True)
    console = None
    if not config.no_console:        # the web console and /metrics (engine.web)
        from engine.web import start_in_server

        console = await start_in_server(config, gateway, port)
    if on_ready is not None:
        on_ready(port)
    try:
        await stop.wait()
    finally:
        print("rtseg: shutting down", file=sys.stderr, flush=True)
        if console is not None:
            await console.stop()
        await health_servicer.enter_graceful_shutdown()
        await server.stop(SHUTDOWN_GRACE_S)
        await gateway.stop()


def serve(config: ServerConfig) -> int:
    """Blocking entry point of ``rtseg serve``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    started = init_ray(config)
    try:
        asyncio.run(run_server(config))
    finally:
        if started:
            import ray

            ray.shutdown()
    return 0
