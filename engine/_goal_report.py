"""``rtseg report goal NAME``: a goal's charts as one PNG (matplotlib, Agg).

Left: predicted against actual cumulative conversions of the test group, day by day since
the goal's creation. Right: conversion rate of test against control by day, with the uplift
and its 95 % interval (engine._goals) in the title. ``client`` is an ``engine.client.Client``
or an embedded ``Engine``: both have ``get_goal``.
"""

from __future__ import annotations

import os

DAY_MS = 86_400_000


def write_goal_report(client, name: str, out_path: str) -> str:
    """Write the PNG of goal ``name`` to ``out_path`` (directories made) -> the path."""
    return plot_goal(client.get_goal(name), out_path)


def plot_goal(goal, out_path: str) -> str:
    """The chart of one GoalInfo (engine._goals) -> ``out_path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = list(goal.days)
    x = [(d.day_start_ms - goal.created_ms) / DAY_MS + 1 for d in days]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(x, [d.predicted for d in days], "--", color="tab:blue", label="test, predicted")
    left.plot(x, [d.actual for d in days], "-o", ms=3, color="tab:blue", label="test, actual")
    left.plot(x, [d.predicted_control for d in days], "--", color="tab:orange",
              label="control, predicted")
    left.plot(x, [d.actual_control for d in days], "-o", ms=3, color="tab:orange",
              label="control, actual")
    left.set_xlabel("day since creation")
    left.set_ylabel("conversions (cumulative)")
    left.set_title(f"goal {goal.name}: {goal.target} by day "
                   f"{(goal.end_ms - goal.created_ms) / DAY_MS:g}\n"
                   f"forecast {goal.predicted:.0f}, actual {goal.actual} of {goal.test_size}")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    rate_t = [d.actual / goal.test_size if goal.test_size else 0.0 for d in days]
    rate_c = [d.actual_control / goal.control_size if goal.control_size else 0.0 for d in days]
    right.plot(x, rate_t, "-o", ms=3, color="tab:blue", label=f"test (n={goal.test_size})")
    right.plot(x, rate_c, "-o", ms=3, color="tab:orange", label=f"control (n={goal.control_size})")
    right.set_xlabel("day since creation")
    right.set_ylabel("conversion rate (cumulative)")
    better = "lower is better" if goal.minimize else "higher is better"
    right.set_title(f"uplift {goal.uplift:+.3f} [{goal.uplift_low:+.3f}, {goal.uplift_high:+.3f}] "
                    f"(95 %, {better})")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
