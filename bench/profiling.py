"""Where a service spends its time under load: py-spy samples of a running pid, summarised.

py-spy reads the process from outside (no code change, no restart); the raw output is folded
stacks, one line per distinct stack with its sample count, which flamegraph tools and
speedscope.app open as they are.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections import Counter
from pathlib import Path

RATE = 50  # samples per second


def available() -> str | None:
    """py-spy from the same virtualenv as this Python (its bin/ is often not on PATH), else PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


async def record(pid: int, seconds: float, out: Path) -> asyncio.subprocess.Process | None:
    """Start sampling `pid` for `seconds` into `out` (folded stacks); None without py-spy."""
    binary = available()
    if binary is None:
        return None
    return await asyncio.create_subprocess_exec(
        binary,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(seconds)),
        "--format",
        "raw",
        "--rate",
        str(RATE),
        "--nonblocking",  # do not pause the service to read it: the numbers stay honest
        "--output",
        str(out),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


def summary(folded: Path, top: int = 12) -> list[tuple[str, float]]:
    """The functions holding the most samples anywhere on the stack, as shares of the samples;
    the entry-point chain every sample shares (over 90%) is left out."""
    inclusive: Counter[str] = Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        for frame in {_short(f) for f in stack.split(";")}:
            inclusive[frame] += n
    if not total:
        return []
    shares = [(frame, n / total) for frame, n in inclusive.most_common()]
    return [("(samples)", float(total)), *[fs for fs in shares if fs[1] < 0.9][:top]]


def _short(frame: str) -> str:
    """`handle (services/allocator/handlers.py:42)` → `handle (allocator/handlers.py)`."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    return f"{name} ({'/'.join(parts[-2:])})" if path else name
