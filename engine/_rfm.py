"""RFM scores: quintile boundaries over the whole population, and the scores they give.

``rfm_r/rfm_f/rfm_m/rfm_tier(E [, W])`` (EXPRESSIONS.md) score a user against boundaries that
are computed over every user with at least one ``E`` in ``W``, on every shard together. The
boundaries are data, not code: each *source* (the event with its filter, and the window) has
12 numbers, 4 per score, that every shard's plan reads as constants. They are recomputed on a
schedule (``--rfm-interval``, default 60 s of the engine clock) and on demand; between two
computations a user's scores still move with its own events and with time, against the
boundaries last computed.

How a score is given (the one rule, for ties too). For a metric where higher is better
(frequency = ``count(E, W)``, monetary = ``sum(E.value, W)``, recency = ``-since(E)``), with
the population's values sorted ascending as ``v[0..n-1]``, the boundaries are
``b_k = v[floor(k * n / 5)]`` for k = 1..4 and a user's score is ``1 + #{k : value >= b_k}``.
Equal values always share a score, and a value equal to a boundary goes to the upper
quintile; with n distinct values each score holds n/5 users (rounded). Recency boundaries are
reported and stored as ms since the last event (``-b_k``; a user scores when ``since <= B_k``).

This module is the engine-independent part: keys, the values a shard reports, the boundary
computation, and the state an engine or a gateway keeps. The kernel side is ``OP_RFM`` in
``kernels._eval``; the compiler side is ``_plan._Compiler.rfm``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .expr import ast as A

# kernel modes of OP_RFM (engine/kernels/_eval.py)
RFM_R, RFM_F, RFM_M, RFM_TIER = 0, 1, 2, 3
MODES = {"rfm_r": RFM_R, "rfm_f": RFM_F, "rfm_m": RFM_M, "rfm_tier": RFM_TIER}
N_BOUNDS = 12                      # recency 4, frequency 4, monetary 4
DEFAULT_INTERVAL = "60s"

# The usual RFM map (EXPRESSIONS.md): TIERS[(r - 1) * 5 + (f - 1)] is the tier of scores r, f.
_TIER_OF = {
    "champions": [(5, f) for f in (4, 5)],
    "loyal": [(r, f) for r in (3, 4) for f in (4, 5)],
    "potential_loyalist": [(r, f) for r in (4, 5) for f in (2, 3)],
    "new_customer": [(5, 1)],
    "promising": [(4, 1)],
    "need_attention": [(3, 3)],
    "about_to_sleep": [(3, f) for f in (1, 2)],
    "at_risk": [(r, f) for r in (1, 2) for f in (3, 4)],
    "cannot_lose": [(r, 5) for r in (1, 2)],
    "hibernating": [(2, f) for f in (1, 2)],
    "lost": [(1, f) for f in (1, 2)],
}
TIERS: tuple[str, ...] = tuple(
    next(name for name, cells in _TIER_OF.items() if (r, f) in cells)
    for r in range(1, 6) for f in range(1, 6))
TIER_NAMES = tuple(_TIER_OF)


def tier_of(r: int, f: int) -> str:
    return TIERS[(r - 1) * 5 + (f - 1)]


def source_of(node: A.Rfm) -> A.EventSource:
    """The event (with its filter) an rfm call reads, without a property."""
    return A.EventSource(node.source.event, None, node.source.filter)


def key_of(node: A.Rfm) -> str:
    """The boundaries' key of an rfm call: its window and its source's text. Calls that differ
    only in the function (r, f, m, tier) share one key."""
    from .expr._unparse import _source

    return f"{int(node.window_ms)}:{_source(source_of(node))}"


def split_key(key: str) -> tuple[int, str]:
    window, _, source = key.partition(":")
    return int(window), source


def keys_in(tree) -> list[str]:
    from .expr import walk

    return sorted({key_of(n) for n in walk(tree) if isinstance(n, A.Rfm)})


def value_trees(key_nodes: dict[str, A.Rfm]) -> list:
    """Per key, three numeric expressions: ``count(E, W)``, ``since(E)``, ``sum(E.value, W)``
    (in key order), as a shard's value plan computes them."""
    trees = []
    for key in sorted(key_nodes):
        n = key_nodes[key]
        src = source_of(n)
        val = A.EventSource(src.event, "value", src.filter)
        trees += [A.Aggregate("count", src, n.window_ms), A.Since(src), A.Aggregate("sum", val, n.window_ms)]
    return trees


def nodes_by_key(trees) -> dict[str, A.Rfm]:
    """One representative rfm node per key over expression trees."""
    from .expr import walk

    out: dict[str, A.Rfm] = {}
    for tree in trees:
        for n in walk(tree):
            if isinstance(n, A.Rfm):
                out.setdefault(key_of(n), n)
    return out


def population_metrics(values: np.ndarray) -> np.ndarray:
    """A shard's ``(count, since, sum)`` rows (NaN as null) -> the rows of the users in the
    population (count > 0), as float64[m, 3] with a null sum as 0."""
    values = np.asarray(values, np.float64).reshape(-1, 3)
    keep = values[:, 0] > 0
    out = values[keep].copy()
    out[:, 2] = np.where(np.isfinite(out[:, 2]), out[:, 2], 0.0)
    return out


def quintile_bounds(v: np.ndarray) -> list[float]:
    """``b_k = v_sorted[floor(k n / 5)]`` for k = 1..4 (higher is better); [] for n = 0."""
    n = len(v)
    if n == 0:
        return []
    idx = [k * n // 5 for k in range(1, 5)]
    part = np.partition(np.asarray(v, np.float64), sorted(set(idx)))
    return [float(part[i]) for i in idx]


def compute_bounds(metrics: np.ndarray) -> tuple[list[float], int]:
    """Boundaries (12 numbers, or [] when nobody is in the population) of one key from the
    population's ``(count, since, sum)`` rows over every shard."""
    metrics = np.asarray(metrics, np.float64).reshape(-1, 3)
    n = len(metrics)
    if n == 0:
        return [], 0
    recency = [-b for b in quintile_bounds(-metrics[:, 1])]
    return recency + quintile_bounds(metrics[:, 0]) + quintile_bounds(metrics[:, 2]), n


def score(value: float, bounds: list[float], higher_is_better: bool = True) -> int:
    """The score of one value against 4 boundaries (the rule above; recency: since in ms
    against recency boundaries with ``higher_is_better=False``)."""
    if higher_is_better:
        return 1 + sum(1 for b in bounds if value >= b)
    return 1 + sum(1 for b in bounds if value <= b)


@dataclass
class RfmState:
    """What an engine (or a gateway) keeps about RFM: the boundaries every shard has, and when
    they were computed. ``bounds[key]`` is 12 numbers, or [] for an empty population."""

    bounds: dict[str, list[float]] = field(default_factory=dict)
    population: dict[str, int] = field(default_factory=dict)
    computed_ms: dict[str, int] = field(default_factory=dict)
    last_ms: int | None = None           # engine clock of the last scheduled computation

    def apply(self, payload: dict, now_ms: int) -> None:
        """An RFM frame's payload ``{"bounds": {key: [12]}, "population": {key: n}}``."""
        for key, b in payload["bounds"].items():
            self.bounds[key] = [float(x) for x in b]
            self.population[key] = int(payload.get("population", {}).get(key, 0))
            self.computed_ms[key] = int(now_ms)
        if payload.get("scheduled", True):
            self.start_interval(now_ms)

    def start_interval(self, now_ms: int) -> None:
        """A scheduled computation happened at ``now_ms`` (or would have, had a segment read a
        source): the next one is due an interval later."""
        self.last_ms = int(now_ms)

    def due(self, now_ms: int, interval_ms: int, keys) -> bool:
        """A scheduled computation is due at ``now_ms``. The schedule ticks every interval
        whether or not a segment reads a source: a tick without sources does nothing but
        start the next interval (so ``keys``, the sources in use or a function giving them,
        is looked at once an interval, not at every operation: finding them walks every
        segment's expression)."""
        if not interval_ms or (self.last_ms is not None and now_ms - self.last_ms < interval_ms):
            return False
        if keys() if callable(keys) else keys:
            return True
        self.start_interval(now_ms)
        return False

    def missing(self, keys) -> list[str]:
        return [k for k in keys if k not in self.bounds]

    def to_dict(self) -> dict:
        return {"bounds": self.bounds, "population": self.population, "computed_ms": self.computed_ms,
                "last_ms": self.last_ms}

    @staticmethod
    def from_dict(d: dict | None) -> "RfmState":
        d = d or {}
        return RfmState({k: [float(x) for x in v] for k, v in (d.get("bounds") or {}).items()},
                        {k: int(v) for k, v in (d.get("population") or {}).items()},
                        {k: int(v) for k, v in (d.get("computed_ms") or {}).items()},
                        d.get("last_ms"))

    def report(self, keys=None) -> list[dict]:
        """One dict per key (the RfmBoundaries message)."""
        out = []
        for key in sorted(self.bounds if keys is None else keys):
            b = self.bounds.get(key, [])
            window, source = split_key(key)
            out.append({"source": source, "window_ms": window, "population": self.population.get(key, 0),
                        "recency": b[0:4], "frequency": b[4:8], "monetary": b[8:12],
                        "computed_ms": self.computed_ms.get(key, 0)})
        return out


def bounds_payload(key_metrics: dict[str, list[np.ndarray]], scheduled: bool) -> dict:
    """An RFM frame's payload from each key's population rows gathered over the shards."""
    bounds, population = {}, {}
    for key, parts in key_metrics.items():
        m = np.concatenate([np.asarray(p, np.float64).reshape(-1, 3) for p in parts]) if parts \
            else np.zeros((0, 3))
        b, n = compute_bounds(m)
        bounds[key] = b
        population[key] = n
    return {"bounds": bounds, "population": population, "scheduled": bool(scheduled)}


def finite(b: list[float]) -> bool:
    return len(b) == N_BOUNDS and all(math.isfinite(x) for x in b)
