"""bench.latency's own logic: the knee of a curve and its plot (the measurement itself runs a
server and is not part of the default test run)."""

from __future__ import annotations

from bench.latency import KNEE_P99_MS, knee, plot


def _m(offered, achieved, p99, lost=0):
    return {"offered_events_per_s": offered, "events_per_s": achieved, "probes_lost": lost,
            "latency": {"p50_ms": p99 / 3, "p99_ms": p99}}


def test_knee_is_the_highest_load_achieved_within_the_latency_bound():
    curve = [_m(2_000, 2_010, 8), _m(20_000, 19_500, 30), _m(50_000, 49_000, KNEE_P99_MS + 1),
             _m(100_000, 60_000, 900)]
    assert knee(curve) == 20_000
    assert knee([_m(20_000, 18_000, 5)]) is None          # not achieved (< 95 %)
    assert knee([_m(20_000, 20_000, 5, lost=1)]) is None  # a probe's delta never came
    assert knee([_m(5_000, 5_000, 5), _m(20_000, 20_000, 9)]) == 20_000


def test_plot_writes_a_png(tmp_path):
    res = {"runs": [{"clock": "wall", "shards": 2, "segments": 21, "users": 1000,
                     "curve": [_m(2_000, 2_000, 9), _m(20_000, 20_000, 30)]}]}
    out = tmp_path / "latency.png"
    plot(res, str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
