"""Running the console: uvicorn on the caller's event loop (inside ``rtseg serve``, beside the
gRPC server) or on its own (``rtseg console --target``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys

import uvicorn

log = logging.getLogger("rtseg.console")

READY_LINE = "rtseg console on"
SHUTDOWN_GRACE_S = 2.0


class _Uvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        # the host (rtseg serve, or run_console) owns SIGINT/SIGTERM and stops us
        yield


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one); OSError when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class ConsoleServer:
    """The console app served by uvicorn in the running event loop."""

    def __init__(self, asgi_app, console, host: str = "127.0.0.1", port: int = 8080):
        self.asgi_app = asgi_app
        self.console = console
        self.host = host
        self.port = port
        self._server: _Uvicorn | None = None
        self._task: asyncio.Task | None = None
        self.owned_client = None                 # closed by stop()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Listen (raises OSError when the port is taken), then serve in the background."""
        sock = bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.asgi_app, lifespan="off", log_level="warning",
                                access_log=False, timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
        self._server = _Uvicorn(config)
        self._task = asyncio.ensure_future(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()              # its startup error
                raise OSError(f"the console did not start on {self.url}")
            await asyncio.sleep(0.01)
        print(f"{READY_LINE} {self.url}", flush=True)

    async def stop(self) -> None:
        await self.console.feed.close()          # ends the open event streams
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, SHUTDOWN_GRACE_S + 3)
            except (asyncio.TimeoutError, asyncio.CancelledError, Exception) as exc:  # noqa: BLE001
                log.warning("console shutdown: %s", exc)
        if self.owned_client is not None:
            self.owned_client.close()


async def start_in_server(config, gateway, grpc_port: int) -> ConsoleServer | None:
    """Inside ``rtseg serve``: the console on ``--console-host:--console-port`` through a
    client of this server, ``/metrics`` from the gateway itself. A port already taken is a
    warning, never the gRPC service's failure. -> the server (None when not started)."""
    from engine.client import Client
    from engine.web._app import create_app
    from engine.web._prom import GatewaySource

    host = config.host if config.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    target = f"{host}:{grpc_port}"
    client = Client(target, config.token, tls_ca=config.tls_cert)
    app, console = create_app(client, token=config.token, source=GatewaySource(gateway),
                              target=target)
    srv = ConsoleServer(app, console, config.console_host, config.console_port)
    try:
        await srv.start()
    except OSError as exc:
        log.warning("the web console is not served: %s:%s: %s (gRPC serves on; move it with "
                    "--console-port or turn it off with --no-console)",
                    config.console_host, config.console_port, exc.strerror or exc)
        client.close()
        return None
    srv.owned_client = client
    return srv


def run_console(target: str, token: str | None = None, *, host: str = "127.0.0.1",
                port: int = 8080, tls_ca: str | None = None) -> int:
    """Blocking entry point of ``rtseg console``: the console of a server elsewhere."""
    from engine.client import Client
    from engine.web._app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        with Client(target, token, tls_ca=tls_ca) as client:
            app, console = create_app(client, token=token, target=target)
            srv = ConsoleServer(app, console, host, port)
            try:
                await srv.start()
            except OSError as exc:
                print(f"rtseg console: cannot listen on {host}:{port}: {exc.strerror or exc}",
                      file=sys.stderr)
                return 1
            try:
                await stop.wait()
            finally:
                await srv.stop()
        return 0
    return asyncio.run(main())
