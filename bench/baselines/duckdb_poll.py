"""Baseline (d): the warehouse approach. DuckDB holds the retained events; a poller recomputes
every segment with SQL. One full refresh is the freshness such a poller can offer at best.

``SEGMENT_SQL`` covers the one-segment workload and the segments of the 20 that read events
only and translate to SQL without changing their meaning (windows are ``(now - W, now]``,
``since`` is ``now - last``, division by zero and comparisons with null are false):
``DUCKDB_SEGMENTS`` lists them. The other ten read traits, geography, other segments,
``sequence`` or ``since_first`` and are left to rtseg and the pure-Python baseline.
"""

from __future__ import annotations

import time
from typing import Iterable

import numpy as np

from bench.baselines import BaselineRun, batch_now
from bench.workload import ONE_SEGMENT_NAME, Batch

DAY_MS = 86_400_000
HOUR_MS = 3_600_000

# name -> SELECT of the member user ids; {now} is substituted, e_w views are made per window.
SEGMENT_SQL: dict[str, str] = {
    ONE_SEGMENT_NAME: """
        SELECT user_id FROM events
        WHERE ts > {now} - 48 * {h} AND type IN ('view_product', 'purchase')
        GROUP BY user_id
        HAVING count(*) FILTER (WHERE type = 'view_product') >= 3
           AND count(*) FILTER (WHERE type = 'purchase') = 0""",
    "product_fixated": """
        SELECT user_id FROM (
            SELECT user_id, max(n) AS top FROM (
                SELECT user_id, product_id, count(*) AS n FROM events
                WHERE ts > {now} - 5 * {d} AND type = 'view_product' AND product_id IS NOT NULL
                GROUP BY user_id, product_id)
            GROUP BY user_id) t
        WHERE top >= 3 AND user_id NOT IN (
            SELECT user_id FROM events WHERE ts > {now} - 5 * {d} AND type = 'checkout')""",
    "big_spenders": """
        SELECT user_id FROM events WHERE ts > {now} - 30 * {d} AND type = 'purchase'
        GROUP BY user_id HAVING sum(value) >= 400""",
    "high_aov": """
        SELECT user_id FROM events WHERE ts > {now} - 30 * {d} AND type = 'purchase'
        GROUP BY user_id HAVING sum(value) / count(*) > 100""",
    "discount_sensitive": """
        SELECT user_id FROM events WHERE ts > {now} - 30 * {d} AND type = 'purchase'
        GROUP BY user_id
        HAVING count(*) FILTER (WHERE discount > 0) / count(*) >= 0.5 AND count(*) >= 2""",
    "highly_engaged": """
        SELECT user_id FROM events WHERE ts > {now} - 14 * {d} AND type = 'app_open'
        GROUP BY user_id HAVING count(DISTINCT ts // {d}) >= 6""",
    "category_hoppers": """
        SELECT user_id FROM events
        WHERE ts > {now} - 7 * {d} AND type = 'view_product' AND category IS NOT NULL
        GROUP BY user_id HAVING count(DISTINCT category) >= 5""",
    "price_spread": """
        SELECT user_id FROM events WHERE ts > {now} - 30 * {d} AND type = 'purchase'
        GROUP BY user_id HAVING max(value) > 3 * min(value)""",
    "lapsed_buyers": """
        SELECT user_id FROM events WHERE ts > {now} - 30 * {d} AND type = 'purchase'
        GROUP BY user_id HAVING {now} - max(ts) > 7 * {d} AND count(*) >= 2""",
    "vip": """
        SELECT user_id FROM events WHERE ts > {now} - 30 * {d} AND type = 'purchase'
        GROUP BY user_id
        HAVING sum(value) >= 500 OR count(*) FILTER (WHERE value >= 150) >= 2
            OR {now} - max(ts) FILTER (WHERE value >= 300) <= {d}""",
    "shoe_affinity": """
        SELECT user_id FROM (
            SELECT user_id, category,
                   row_number() OVER (PARTITION BY user_id
                                      ORDER BY n DESC, last_ts DESC, last_pos DESC) AS r
            FROM (SELECT user_id, category, count(*) AS n, max(ts) AS last_ts,
                         max(struct_pack(t := ts, p := pos)).p AS last_pos
                  FROM events
                  WHERE ts > {now} - 14 * {d} AND type = 'view_product' AND category IS NOT NULL
                  GROUP BY user_id, category))
        WHERE r = 1 AND category = 'shoes'""",
}
DUCKDB_SEGMENTS = tuple(SEGMENT_SQL)


def duckdb_available() -> tuple[bool, str]:
    try:
        import duckdb
    except ImportError:
        return False, "duckdb is not installed (pip install -e '.[bench]')"
    return True, f"duckdb {duckdb.__version__}"


class DuckDBPoller:
    """Events appended as they come (columnar, one INSERT per batch), segments recomputed by
    ``refresh()``."""

    def __init__(self, retention_ms: int = 30 * DAY_MS, threads: int = 1, segments=None):
        import duckdb

        self.retention_ms = retention_ms
        self.con = duckdb.connect(":memory:", config={"threads": threads})
        self.con.execute("""CREATE TABLE events (pos BIGINT, user_id VARCHAR, type VARCHAR,
                            ts BIGINT, value DOUBLE, product_id VARCHAR, category VARCHAR,
                            discount DOUBLE)""")
        self.segments = {k: SEGMENT_SQL[k] for k in (segments or DUCKDB_SEGMENTS)}
        self.now_ms = 0
        self.events = 0
        self.load_s = 0.0

    def load(self, batches: Iterable[Batch], start_ms: int = 0) -> None:
        for b, now in batch_now(batches, start_ms):
            t0 = time.perf_counter()
            self.append(b)
            self.now_ms = max(self.now_ms, now)
            self.load_s += time.perf_counter() - t0

    def append(self, b: Batch) -> None:
        disc = b.properties.get("discount")
        d = np.full(len(b), np.nan)
        has = np.zeros(len(b), dtype=bool)
        if disc is not None:
            has = np.array([isinstance(x, float) for x in disc.tolist()], dtype=bool)
            d[has] = np.array([x for x in disc.tolist() if isinstance(x, float)], dtype=np.float64)
        cols = {"pos": np.arange(self.events, self.events + len(b), dtype=np.int64),
                "user_id": b.user_id, "type": b.type, "ts": b.timestamp_ms, "value": b.value,
                "product_id": b.properties.get("product_id", np.full(len(b), None, dtype=object)),
                "category": b.properties.get("category", np.full(len(b), None, dtype=object)),
                "discount": d, "has_discount": has}
        self.con.register("incoming", cols)
        self.con.execute("""INSERT INTO events SELECT pos, user_id, type, ts, value, product_id,
                            category, CASE WHEN has_discount THEN discount END FROM incoming""")
        self.con.unregister("incoming")
        self.events += len(b)

    def forget_old(self) -> None:
        """Retention: drop what a retention-bound store no longer holds."""
        self.con.execute(f"DELETE FROM events WHERE ts <= {self.now_ms - self.retention_ms}")

    def sql(self, name: str) -> str:
        return self.segments[name].format(now=f"{int(self.now_ms)}::BIGINT", d=f"{DAY_MS}::BIGINT",
                                          h=f"{HOUR_MS}::BIGINT")

    def refresh(self) -> tuple[dict[str, set[str]], dict[str, float]]:
        """Every segment recomputed at ``now``: (members, seconds per segment)."""
        out, times = {}, {}
        for name in self.segments:
            t0 = time.perf_counter()
            rows = self.con.execute(self.sql(name)).fetchall()
            times[name] = time.perf_counter() - t0
            out[name] = {r[0] for r in rows}
        return out, times

    def close(self) -> None:
        self.con.close()


def run(batches: Iterable[Batch], start_ms: int = 0, segments=None, threads: int = 1,
        repeats: int = 3) -> tuple[BaselineRun, dict[str, set[str]]]:
    """Load, then time full refreshes (best of ``repeats``). The run's members are those of
    the one segment; the second value has every segment's."""
    from bench.baselines import skipped

    ok, why = duckdb_available()
    if not ok:
        return skipped("duckdb", why), {}
    p = DuckDBPoller(threads=threads, segments=segments)
    try:
        p.load(batches, start_ms)
        t0 = time.perf_counter()
        p.forget_old()
        forget_s = time.perf_counter() - t0
        best_total, best_times, members = None, {}, {}
        for _ in range(max(1, repeats)):
            members, times = p.refresh()
            total = sum(times.values())
            if best_total is None or total < best_total:
                best_total, best_times = total, times
        retained = int(p.con.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        p.close()
    one = members.get(ONE_SEGMENT_NAME, set())
    res = BaselineRun("duckdb", p.events, p.load_s, one, p.now_ms, extra={
        "variant": f"{why}, {threads} thread(s), in-memory table, columnar INSERT per batch",
        "load_s": round(p.load_s, 3), "retention_delete_s": round(forget_s, 3),
        "retained_events": retained,
        "refresh_ms_one_segment": round(best_times.get(ONE_SEGMENT_NAME, 0.0) * 1000, 2),
        "refresh_ms_all": round(best_total * 1000, 2),
        "refresh_ms_by_segment": {k: round(v * 1000, 2) for k, v in best_times.items()},
        "segments": list(p.segments),
        "members_by_segment": {k: len(v) for k, v in members.items()}})
    return res, members
