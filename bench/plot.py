"""The pipeline bench's picture: throughput per stage and paid→sent percentiles per second."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt

from bench.common import percentile
from bench.follow import Flow


def draw(flow: Flow, phases: dict[str, tuple[float, float]], path: Path) -> None:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    last = max((max(c, default=0) for c in flow.per_second.values()), default=0)
    seconds = list(range(last + 1))
    for stage, counts in flow.per_second.items():
        top.plot(seconds, [counts.get(s, 0) for s in seconds], label=f"{stage} /s", lw=1)
    top.set_ylabel("events per second")
    top.set_title("Throughput per stage (order.paid, code.allocated, message.sent)")

    by_second: dict[int, list[float]] = defaultdict(list)
    for lat in flow.latencies:  # by when the order was paid, so a phase's tail stays in it
        by_second[int(lat.paid_at - flow.started)].append(lat.ms)
    xs = sorted(s for s in by_second if s >= 0)
    for q, style in ((0.5, "-"), (0.95, "--"), (0.99, ":")):
        bottom.plot(xs, [percentile(by_second[s], q) for s in xs], style, label=f"p{q * 100:g}")
    bottom.set_yscale("log")
    bottom.set_ylabel("paid → sent (ms, log)")
    bottom.set_xlabel("seconds since the bench started (latency by the second the order was paid)")
    bottom.set_title("paid → sent latency percentiles")

    for n, (name, (start, end)) in enumerate(phases.items()):
        for axis in (top, bottom):
            axis.axvspan(start - flow.started, end - flow.started, alpha=0.08, color=f"C{n + 4}")
        top.annotate(name, (start - flow.started, 0), xytext=(2, 2), textcoords="offset points")
    for axis in (top, bottom):
        axis.legend(loc="upper right", fontsize="small")
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
