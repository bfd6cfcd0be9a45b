"""CPU of the stack's parts, read from outside with psutil: the user + system seconds each named
part of the process tree has used, so a phase's cost is the difference of two readings.

A part is a root pid and, for PostgreSQL, every backend under the postmaster (summed). A
backend that exits during a phase takes its CPU with it; the services hold pooled connections,
so that loss is small. A process that is not ours to wait for (the load generator) is followed
by `Tracked`, which keeps its last reading, since a process that has exited cannot be read.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

from bench.common import cpu_seconds


@dataclass
class Reading:
    """CPU seconds per part at one wall time."""

    at: float
    seconds: dict[str, float]

    def minus(self, before: Reading) -> dict[str, float]:
        """CPU seconds each part used since `before` (a part new since then counts from 0)."""
        return {
            name: max(used - before.seconds.get(name, 0.0), 0.0)
            for name, used in self.seconds.items()
        }


@dataclass
class Parts:
    """The parts to read: name → (pid, whether its children count)."""

    pids: Callable[[], dict[str, tuple[int | None, bool]]]
    extra: dict[str, Callable[[], float]] = field(default_factory=dict)

    def read(self) -> Reading:
        seconds = {
            name: cpu_seconds(pid, children=children)
            for name, (pid, children) in self.pids().items()
        }
        seconds.update({name: f() for name, f in self.extra.items()})
        return Reading(time.time(), seconds)


def own_cpu_seconds() -> float:
    """This process's CPU seconds (the bench itself: the bare relay runs in it)."""
    times = os.times()
    return times.user + times.system


class Tracked:
    """The CPU seconds of a process that exits on its own, read every `period_s` until then:
    at most one period of its last moments is missed (for the load generator, its wait for
    the last answers)."""

    def __init__(self, pid: int, period_s: float = 0.2):
        self.pid = pid
        self.period_s = period_s
        self.seconds = 0.0
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            process = psutil.Process(self.pid)
            while True:
                times = process.cpu_times()
                self.seconds = times.user + times.system
                await asyncio.sleep(self.period_s)
        except psutil.Error:
            return  # it exited: the last reading stands

    async def stop(self) -> float:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return self.seconds


def per_order_ms(used: dict[str, float], orders: int) -> dict[str, float]:
    """CPU milliseconds per order for each part."""
    return {name: 1000 * s / max(orders, 1) for name, s in used.items()}


def core_percent(used: dict[str, float], seconds: float) -> dict[str, float]:
    """The share of one core each part used over `seconds` of wall time, in %."""
    return {name: 100 * s / max(seconds, 1e-9) for name, s in used.items()}
