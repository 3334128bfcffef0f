"""Work on a frozen state while the state goes on changing: a function run in the background.

``start(fn)`` runs ``fn()`` and hands back a ``Job`` to poll (``done``) and take the result
from (``result``). Where ``os.fork`` exists the function runs in a **forked child process**:
the child sees the parent's memory exactly as it was at the fork (copy on write: a page the
parent changes afterwards is copied for the parent, the child keeps the old one), so the
parent may go on changing its state at once, and the child's CPU is a separate, lower-
priority process (``CHILD_NICE``) that the scheduler puts behind the parent's work. The
result comes back pickled through a pipe. Without ``fork`` the function runs in a thread of
this process on what the caller copied for it (``ThreadJob``).

The child only runs ``fn`` and leaves with ``os._exit``: no ``atexit`` handler, no buffered
output of the parent's and no destructor runs twice. It dies with its parent (Linux
``PR_SET_PDEATHSIG``). The caller must fork while no other of its threads holds a lock the
child's ``fn`` needs (the shards fork holding their gate: no step and no read is running).
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
import traceback
from typing import Any, Callable

CHILD_NICE = 10          # the child's CPU share against a busy parent: ~10 % (weights 110 : 1024)
_READ_BYTES = 1 << 16


class BackgroundError(RuntimeError):
    """The background function raised, or its process ended without a result."""


def fork_available() -> bool:
    return hasattr(os, "fork") and sys.platform != "win32"


class Job:
    def done(self) -> bool:
        """Whether the function has finished (with a result or an error)."""
        raise NotImplementedError

    def result(self) -> Any:
        """The function's return value once ``done``; raises ``BackgroundError`` if it failed."""
        raise NotImplementedError


class ThreadJob(Job):
    def __init__(self, fn: Callable[[], Any]):
        self._box: dict = {}

        def run():
            try:
                self._box["value"] = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to result()
                self._box["error"] = f"{type(exc).__name__}: {exc}"
        self._thread = threading.Thread(target=run, name="rtseg-background", daemon=True)
        self._thread.start()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self) -> Any:
        self._thread.join()
        if "error" in self._box:
            raise BackgroundError(self._box["error"])
        return self._box["value"]


class ForkJob(Job):
    def __init__(self, fn: Callable[[], Any], nice: int = CHILD_NICE):
        parent = os.getpid()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:                                   # the child: never returns
            os.close(r)
            _run_child(fn, w, parent, nice)
        os.close(w)
        os.set_blocking(r, False)
        self.pid = pid
        self._fd: int | None = r
        self._buf = bytearray()
        self._status: int | None = None

    def _drain(self) -> bool:
        """Read what the child wrote so far -> whether its end of the pipe is closed."""
        while self._fd is not None:
            try:
                chunk = os.read(self._fd, _READ_BYTES)
            except BlockingIOError:
                return False
            if not chunk:
                os.close(self._fd)
                self._fd = None
                break
            self._buf += chunk
        return True

    def _reap(self, block: bool) -> bool:
        if self._status is None:
            try:
                pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
            except ChildProcessError:                  # reaped elsewhere (SIGCHLD ignored)
                self._status = 0
                return True
            if pid == 0:
                return False
            self._status = status
        return True

    def done(self) -> bool:
        return self._drain() and self._reap(block=False)

    def result(self) -> Any:
        while not self._drain():
            _wait_readable(self._fd)
        self._reap(block=True)
        try:
            kind, value = pickle.loads(bytes(self._buf))
        except Exception:  # noqa: BLE001 - no complete result: the child died
            raise BackgroundError(f"background process {self.pid} ended without a result "
                                  f"({_describe(self._status)})") from None
        if kind == "error":
            raise BackgroundError(value)
        return value

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None


def start(fn: Callable[[], Any], fork: bool = True) -> Job:
    """Run ``fn()`` in the background: in a forked child where possible, else in a thread."""
    return ForkJob(fn) if fork and fork_available() else ThreadJob(fn)


def _run_child(fn, w: int, parent: int, nice: int) -> None:
    code = 1
    try:
        _die_with_parent(parent)
        os.nice(nice)
        try:
            out = ("value", fn())
        except BaseException as exc:  # noqa: BLE001 - sent to the parent
            out = ("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        data = pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)
        view = memoryview(data)
        while view:
            view = view[os.write(w, view):]
        code = 0
    finally:
        os._exit(code)


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))   # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:                         # the parent died before the prctl
        os._exit(1)


def _wait_readable(fd: int) -> None:
    import select

    select.select([fd], [], [], 1.0)


def _describe(status: int | None) -> str:
    if status is None:
        return "status unknown"
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.WEXITSTATUS(status)}"
