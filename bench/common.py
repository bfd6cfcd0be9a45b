"""What the benchmarks share: percentiles, and the result shape the runner prints and saves."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
