"""RFM inside a shard: the population's metrics for the gateway (or the embedded engine) to
compute boundaries from, and the boundaries themselves, constants of the plan
(engine/_rfm.py has the rule). Mixed into ``ShardCore``."""

from __future__ import annotations

import numpy as np

from . import _rfm as R
from ._deltas import CAUSE_TIME, DeltaBatch
from ._plan import build_value_plan


class ShardRfm:
    """The RFM part of ``ShardCore`` (mixed in)."""

    rfm: dict

    def _init_rfm(self) -> None:
        self.rfm = {}                       # key -> 12 boundaries ([] for an empty population)

    # ------------------------------------------------------------------ schema (ShardSchema)
    def rfm_bounds(self, key: str) -> list[float]:
        return self.rfm.get(key, [])

    # ------------------------------------------------------------------ values
    def rfm_values(self, nodes: dict, now_ms: int) -> dict[str, np.ndarray]:
        """Per key (``nodes``: key -> an rfm call of it), the ``(count, since, sum)`` rows of
        this shard's users in that key's population (engine/_rfm.population_metrics)."""
        keys = sorted(nodes)
        if not keys:
            return {}
        rows = self._known_rows()
        plan = build_value_plan(R.value_trees(nodes), self)
        values = self._values_of(plan, rows, now_ms)
        # kept for set_rfm right after (the same barrier): it needs the same values per row
        self._rfm_cache = (self._rfm_token(now_ms), keys, rows, values)
        return {k: R.population_metrics(values[:, 3 * i: 3 * i + 3]) for i, k in enumerate(keys)}

    def _rfm_token(self, now_ms: int) -> tuple:
        """What the values of ``rfm_values`` depend on: the clock, the events, the users."""
        return (int(now_ms), int(self.events_accepted), int(self.nrows),
                int(np.count_nonzero(self.known[: self.nrows])), int(self.counters[1]))

    def _cached_values(self, keys: list, now_ms: int):
        cache, self._rfm_cache = getattr(self, "_rfm_cache", None), None
        if cache is None or cache[0] != self._rfm_token(now_ms) or not set(keys) <= set(cache[1]):
            return None
        token, ckeys, rows, values = cache
        cols = [3 * ckeys.index(k) + j for k in keys for j in range(3)]
        return rows, values[:, cols]

    # ------------------------------------------------------------------ boundaries
    def set_rfm(self, payload: dict, now_ms: int) -> DeltaBatch:
        """New boundaries (an RFM frame's payload): the plan is rebuilt and the segments that
        read the changed keys are evaluated again (cause TIME: the population moved), for the
        users ``_moved_rows`` finds, not for everyone."""
        changed = {k for k, b in payload["bounds"].items() if list(b) != self.rfm.get(k)}
        old = {k: self.rfm.get(k, []) for k in changed}
        for key, b in payload["bounds"].items():
            self.rfm[key] = [float(x) for x in b]
        if not changed:
            return DeltaBatch()
        self.plan = self._rebuild()
        users = {d.name for d in self.defs.values() if changed & set(R.keys_in(d.ast))}
        if not users:
            return DeltaBatch()
        nodes = {k: n for k, n in R.nodes_by_key([self.defs[u].ast for u in users]).items() if k in changed}
        rows = self._moved_rows(nodes, old, now_ms)
        if not len(rows):
            return DeltaBatch()
        deps = set().union(*(self._dependents(u) for u in users)) - users
        order = [self.plan.index(n) for n in self.plan.names if n in users or n in deps]
        force = np.array([self.plan.names[i] in users for i in order], np.bool_)
        return self._evaluate(None, None, None, None, now_ms, CAUSE_TIME,
                              order=np.array(order, np.int64), force=force, rows=rows)

    def _moved_rows(self, nodes: dict, old: dict, now_ms: int) -> np.ndarray:
        """The known rows that new boundaries can affect: a score (R, F or M) of a changed key
        differs between the old and the new boundaries, or the next recency boundary the
        user's ``since`` will cross comes sooner (its timer, set with the old boundaries,
        would be late). Every other row evaluates exactly as before, and its timer fires no
        later than its next change (early is harmless), so skipping it changes nothing."""
        keys = sorted(nodes)
        cached = self._cached_values(keys, now_ms)
        if cached is not None:
            rows, values = cached
        else:
            rows = self._known_rows()
            if not len(rows) or not nodes:
                return rows
            values = self._values_of(build_value_plan(R.value_trees(nodes), self), rows, now_ms)
        moved = np.zeros(len(rows), np.bool_)
        for i, key in enumerate(keys):
            cnt, since, spend = values[:, 3 * i], values[:, 3 * i + 1], values[:, 3 * i + 2]
            inside = cnt > 0
            a, b = old.get(key, []), self.rfm.get(key, [])
            if not (R.finite(a) and R.finite(b)):
                moved |= inside                    # from or to no boundaries: every scored user
                continue
            spend = np.where(np.isfinite(spend), spend, 0.0)
            a, b = np.asarray(a), np.asarray(b)
            for lo, hi, v, up in ((0, 4, since, False), (4, 8, cnt, True), (8, 12, spend, True)):
                moved |= inside & (_scores(v, a[lo:hi], up) != _scores(v, b[lo:hi], up))
            moved |= inside & (_next_above(since, b[0:4]) < _next_above(since, a[0:4]))
        return rows[moved]


def _scores(v: np.ndarray, bounds: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """engine._rfm.score over an array."""
    if higher_is_better:
        return 1 + (v[:, None] >= bounds[None, :]).sum(axis=1)
    return 1 + (v[:, None] <= bounds[None, :]).sum(axis=1)


def _next_above(since: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """The smallest recency boundary at or above each ``since`` (+inf if none): where the
    user's recency score drops next as time passes."""
    b = np.where(bounds[None, :] >= since[:, None], bounds[None, :], np.inf)
    return b.min(axis=1)
