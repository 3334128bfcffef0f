"""Charts for ``rtseg report``: PNG files drawn with matplotlib (Agg, no display needed)."""

from __future__ import annotations

import datetime as dt

DPI = 110
SIZE_IN = (9.0, 4.2)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def segment_history_figure(history):
    """A figure of ``history`` (``SegmentHistory``): size over time, UTC dates on the x axis."""
    import matplotlib.dates as mdates
    from matplotlib.ticker import MaxNLocator, StrMethodFormatter

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=SIZE_IN, dpi=DPI)
    times = [dt.datetime.fromtimestamp(t / 1000, tz=dt.UTC) for t, _ in history.samples]
    sizes = [s for _, s in history.samples]
    if times:
        # a gap of more than one interval (the clock jumped, or sampling was off) is left
        # open rather than drawn as if the size had been measured in between
        xs, ys = _with_gaps(history.samples, history.interval_ms)
        ax.plot(xs, ys, color="#1f77b4", linewidth=1.6)
        ax.plot(times, sizes, "o", color="#1f77b4", markersize=2.5 if len(times) > 60 else 4)
        locator = mdates.AutoDateLocator(tz=dt.UTC)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=dt.UTC))
        top = max(sizes)
        ax.set_ylim(0, top * 1.08 if top else 1)
    else:
        ax.text(0.5, 0.5, "no samples yet", ha="center", va="center", transform=ax.transAxes,
                color="#666666")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    ax.set_xlabel("time (UTC)")
    ax.set_ylabel("members")
    every = f"every {_duration(history.interval_ms)}" if history.interval_ms else "sampling off"
    ax.set_title(f"segment {history.name!r}: size over time ({len(sizes)} samples, {every})",
                 fontsize=11)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def write_segment_report(client, name: str, out_path: str) -> dict:
    """Fetch the segment's size history through ``client`` and write it as a PNG chart
    -> {"segment", "samples", "out"}."""
    history = client.segment_history(name)
    fig = segment_history_figure(history)
    try:
        fig.savefig(out_path, format="png")
    finally:
        _pyplot().close(fig)
    first = history.samples[0][0] if history.samples else None
    last = history.samples[-1][0] if history.samples else None
    return {"segment": name, "samples": len(history.samples), "first_ms": first, "last_ms": last,
            "out": str(out_path)}


def _with_gaps(samples, interval_ms: int):
    xs, ys = [], []
    prev = None
    for t, size in samples:
        if prev is not None and interval_ms and t - prev > interval_ms:
            xs.append(dt.datetime.fromtimestamp((prev + interval_ms / 2) / 1000, tz=dt.UTC))
            ys.append(float("nan"))
        xs.append(dt.datetime.fromtimestamp(t / 1000, tz=dt.UTC))
        ys.append(size)
        prev = t
    return xs, ys


def _duration(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"
