"""What the benchmarks share: percentiles, and the result shape the runner prints and saves."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import psutil


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


@dataclass
class Measurement:
    """One line of the report: a figure, its unit, and the target it is judged against."""

    name: str
    value: float
    unit: str
    target: str = ""  # e.g. ">= 2000" or "<= 50"; empty when the figure is a reference
    note: str = ""

    def met(self) -> bool | None:
        if not self.target:
            return None
        op, _, bound = self.target.partition(" ")
        limit = float(bound)
        return self.value >= limit if op == ">=" else self.value <= limit


@dataclass
class BenchResult:
    bench: str
    measurements: list[Measurement] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, value: float, unit: str, target: str = "", note: str = "") -> None:
        self.measurements.append(Measurement(name, value, unit, target, note))


def process_family(pid: int | None, *, children: bool = True) -> list[psutil.Process]:
    """The process and (by default) every process it started — PostgreSQL's backends, say;
    empty when it is gone."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)] if children else [root]
    except (psutil.Error, TypeError):
        return []


def cpu_seconds(pid: int | None, *, children: bool = True) -> float:
    """User + system CPU seconds used so far by a process and its family."""
    total = 0.0
    for proc in process_family(pid, children=children):
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total
