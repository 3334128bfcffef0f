"""A direct channel from the gateway to one shard actor, for its rounds.

Ray places the shard actors, starts, kills and restarts them, and carries every call but one:
``run``, the micro-batch round, which is the hot path (one message per shard per round). An
ordinary Ray actor call costs ~2.5 ms of round trip on an idle 2-core machine and 5 ms under
load, far more than the shard's own work for a round of a few hundred events; over one TCP
connection of its own a round costs a pickle, a send and a wake-up on each side.

* **Opening.** The gateway makes a random key and asks the actor (by a Ray call) to listen;
  the actor answers with the address it listens on (its node's address, a free port). The
  gateway connects, and both prove that they know the key (HMAC-SHA256 over a random
  challenge from each side) before anything is unpickled. A connection that proves nothing
  holds up no other (each handshake has its own thread and time limit), and the actor serves
  one proven connection at a time.
* **Order.** Messages are framed (8-byte length, then a pickle) and answered in the order they
  were sent, one at a time, exactly as Ray runs one caller's calls to an actor: rounds can be
  pipelined and every call to ``run`` goes over the channel once it is open.
* **Failures.** A shard that dies closes its end (its process exits), and every call waiting
  on the channel fails with :class:`ShardDown`: the gateway rebuilds the shard as it does when
  a Ray call finds the actor dead. TCP keepalive turns a vanished node (no close) into an error
  within ~15 s. An exception raised by ``run`` is sent back and raised to the caller.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import logging
import pickle
import secrets
import socket
import struct
import threading
from typing import Any, Callable

log = logging.getLogger("rtseg.channel")

_LENGTH = struct.Struct("!Q")
_CHALLENGE_BYTES = 32
_DIGEST_BYTES = hashlib.sha256().digest_size
HANDSHAKE_TIMEOUT_S = 10.0
MAX_HANDSHAKES = 64          # connections proving the key at once; more are closed at once
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_PROBES = 5, 3, 3


def new_key() -> bytes:
    return secrets.token_bytes(32)


def _proof(key: bytes, role: bytes, challenge: bytes) -> bytes:
    return hmac.new(key, role + challenge, hashlib.sha256).digest()


def _dumps(obj: Any) -> bytes:
    try:
        return pickle.dumps(obj, protocol=5)
    except (pickle.PicklingError, TypeError, AttributeError):
        from ray import cloudpickle       # closures in a payload (as a Ray call would take)

        return cloudpickle.dumps(obj, protocol=5)


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE_S), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
                        ("TCP_KEEPCNT", KEEPALIVE_PROBES)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


# ---------------------------------------------------------------------- the actor's end

def _recv_exactly(sock: socket.socket, n: int) -> bytearray | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            return None
        got += k
    return buf                 # pickle.loads takes it as it is: no copy of a large round


def _recv_message(sock: socket.socket) -> bytearray | None:
    head = _recv_exactly(sock, _LENGTH.size)
    if head is None:
        return None
    return _recv_exactly(sock, _LENGTH.unpack(head)[0])


class ChannelServer:
    """The actor's end: a thread that accepts the gateway's connection and answers each
    message ``steps`` with ``handler(steps)`` (or the exception it raised)."""

    def __init__(self, handler: Callable[[Any], Any], key: bytes, host: str):
        self._handler = handler
        self._key = key
        self._sock = socket.create_server((host, 0), backlog=4)
        self.address = (host, self._sock.getsockname()[1])
        self._closed = False
        self._handshakes = threading.BoundedSemaphore(MAX_HANDSHAKES)
        self._one_session = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name="rtseg-channel", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closed = True
        try:
            self._sock.close()
        except OSError:
            pass

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            if not self._handshakes.acquire(blocking=False):
                conn.close()                 # too many connections proving nothing at once
                continue
            threading.Thread(target=self._connection, args=(conn,), name="rtseg-channel-conn",
                             daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        """One accepted connection: its handshake (at most HANDSHAKE_TIMEOUT_S, without
        holding up other connections), then, with the key proven, its session."""
        try:
            conn.settimeout(HANDSHAKE_TIMEOUT_S)
            try:
                proven = self._handshake(conn)
            finally:
                self._handshakes.release()
            if proven:
                conn.settimeout(None)
                _tune(conn)
                with self._one_session:
                    self._session(conn)
        except OSError as exc:
            log.warning("shard channel: connection ended: %s", exc)
        finally:
            conn.close()

    def _handshake(self, conn: socket.socket) -> bool:
        mine = secrets.token_bytes(_CHALLENGE_BYTES)
        conn.sendall(mine)
        got = _recv_exactly(conn, _DIGEST_BYTES + _CHALLENGE_BYTES)
        if got is None or not hmac.compare_digest(got[:_DIGEST_BYTES], _proof(self._key, b"gateway", mine)):
            log.warning("shard channel: a connection without the key was refused")
            return False
        conn.sendall(_proof(self._key, b"shard", got[_DIGEST_BYTES:]))
        return True

    def _session(self, conn: socket.socket) -> None:
        while True:
            msg = _recv_message(conn)
            if msg is None:
                return
            try:
                reply = (True, self._handler(pickle.loads(msg)))
            except Exception as exc:  # noqa: BLE001 - goes back to the caller
                reply = (False, exc)
            try:
                data = _dumps(reply)
            except Exception as exc:  # noqa: BLE001 - an unpicklable result or error
                data = _dumps((False, RuntimeError(f"the shard's reply could not be sent: {exc!r}; "
                                                   f"it was {reply[1]!r:.500}")))
            if len(data) < 65536:
                conn.sendall(_LENGTH.pack(len(data)) + data)      # one segment
            else:
                conn.sendall(_LENGTH.pack(len(data)))
                conn.sendall(data)                                # no copy of a large reply


# ---------------------------------------------------------------------- the gateway's end

class ChannelClient:
    """The gateway's end, on its event loop: ``call(steps)`` -> a future of the reply."""

    def __init__(self, index: int, on_lost: Callable[[int, str], BaseException]):
        self.index = index
        self._on_lost = on_lost             # (index, why) -> the exception for waiting calls
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._waiting: collections.deque[asyncio.Future] = collections.deque()
        self._task: asyncio.Task | None = None
        self._lost: BaseException | None = None

    async def connect(self, address: tuple[str, int], key: bytes) -> None:
        host, port = address
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), HANDSHAKE_TIMEOUT_S)
        try:
            challenge = await asyncio.wait_for(reader.readexactly(_CHALLENGE_BYTES), HANDSHAKE_TIMEOUT_S)
            mine = secrets.token_bytes(_CHALLENGE_BYTES)
            writer.write(_proof(key, b"gateway", challenge) + mine)
            proof = await asyncio.wait_for(reader.readexactly(_DIGEST_BYTES), HANDSHAKE_TIMEOUT_S)
            if not hmac.compare_digest(proof, _proof(key, b"shard", mine)):
                raise ConnectionError("the shard's end did not prove the channel's key")
        except BaseException:
            writer.close()
            raise
        _tune(writer.get_extra_info("socket"))
        self._reader, self._writer = reader, writer
        self._task = asyncio.ensure_future(self._replies())

    @property
    def open(self) -> bool:
        return self._writer is not None and self._lost is None

    def call(self, payload: Any) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        if self._lost is not None:
            fut.set_exception(self._lost)
            return fut
        data = _dumps(payload)
        # buffered by the transport: never blocks the loop; a small message in one segment
        if len(data) < 65536:
            self._writer.write(_LENGTH.pack(len(data)) + data)
        else:
            self._writer.write(_LENGTH.pack(len(data)))
            self._writer.write(data)
        self._waiting.append(fut)
        return fut

    async def _replies(self) -> None:
        reader = self._reader
        try:
            while True:
                head = await reader.readexactly(_LENGTH.size)
                data = await reader.readexactly(_LENGTH.unpack(head)[0])
                ok, value = pickle.loads(data)
                fut = self._waiting.popleft()
                if fut.done():
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
        except asyncio.CancelledError:
            self._fail("the channel was closed by the gateway")
            raise
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            self._fail(f"its channel closed ({type(exc).__name__}: {exc})")
        except Exception as exc:  # noqa: BLE001 - an unreadable reply: the channel is unusable
            self._fail(f"its channel sent an unreadable reply ({type(exc).__name__}: {exc})")

    def _fail(self, why: str) -> None:
        if self._lost is None:
            self._lost = self._on_lost(self.index, why)
        while self._waiting:
            fut = self._waiting.popleft()
            if not fut.done():
                fut.set_exception(self._lost)
        if self._writer is not None:
            self._writer.close()

    def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        elif self._lost is None:
            self._fail("the channel was closed by the gateway")
