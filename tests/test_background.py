"""engine.durability.background: a function run on a frozen copy of the process (a fork), or
in a thread where there is no fork, with its result, its errors and its death reported."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from engine.durability import background as B

needs_fork = pytest.mark.skipif(not B.fork_available(), reason="this platform has no fork")


def _wait_done(job: B.Job, timeout_s: float = 60.0) -> None:
    import select
    import time

    end = time.monotonic() + timeout_s
    while not job.done():
        assert time.monotonic() < end, "the background job did not finish"
        fd = getattr(job, "_fd", None)
        if fd is not None:                 # wake up when the child writes or exits
            select.select([fd], [], [], 0.05)


@needs_fork
def test_the_child_sees_the_state_as_it_was_at_the_fork():
    state = np.arange(1_000_000, dtype=np.int64)
    job = B.start(lambda: (int(state.sum()), int(state[0]), os.getpid()))
    state[:] = -1                          # the parent goes on changing it at once
    total, first, pid = job.result()
    assert (total, first) == (499_999_500_000, 0)
    assert pid == job.pid != os.getpid()
    assert int(state.sum()) == -1_000_000


@needs_fork
def test_done_is_false_while_the_child_runs_and_a_large_result_comes_through():
    r, w = os.pipe()
    try:
        def fn():
            os.read(r, 1)                  # until the parent lets it go on
            return b"x" * 3_000_000        # far more than a pipe holds: read while polling

        job = B.start(fn)
        assert not job.done() and not job.done()
        os.write(w, b"g")
        _wait_done(job)
        assert job.result() == b"x" * 3_000_000
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("fork", [pytest.param(True, marks=needs_fork), False])
def test_an_error_in_the_function_is_raised_by_result(fork):
    def fn():
        raise ValueError("part 'shard-0' could not be written")

    job = B.start(fn, fork=fork)
    _wait_done(job)
    with pytest.raises(B.BackgroundError, match="ValueError: part 'shard-0' could not be written"):
        job.result()


@needs_fork
def test_a_child_that_dies_without_a_result_is_reported():
    job = B.start(lambda: os.kill(os.getpid(), signal.SIGKILL))
    _wait_done(job)
    with pytest.raises(B.BackgroundError, match=f"killed by signal {int(signal.SIGKILL)}"):
        job.result()


def test_without_fork_the_function_runs_in_a_thread():
    job = B.start(lambda: os.getpid(), fork=False)
    assert isinstance(job, B.ThreadJob)
    assert job.result() == os.getpid()
