"""Run the benchmarks: `python -m bench [name ...]`; results go to bench/results/<time>.json."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import pkgutil
import time
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.common import BenchResult
from deploy.embedded.broker import EMBEDDED_ENV

RESULTS = Path(__file__).parent / "results"


def available() -> list[str]:
    return sorted(
        m.name.removeprefix("bench_")
        for m in pkgutil.iter_modules([str(Path(__file__).parent)])
        if m.name.startswith("bench_")
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help=f"which benchmarks (default all): {available()}")
    args = parser.parse_args()
    # every bench runs on the embedded broker (its services inherit this environment)
    os.environ.update(EMBEDDED_ENV)
    console = Console()
    results: list[BenchResult] = []
    for name in args.names or available():
        module = importlib.import_module(f"bench.bench_{name}")
        console.rule(f"bench: {name}")
        results.append(asyncio.run(module.run(console)))
    table = Table(title="Benchmarks (this machine, this run)")
    for column in ("bench", "measure", "value", "target", "met", "note"):
        table.add_column(column)
    for result in results:
        for m in result.measurements:
            met = m.met()
            table.add_row(
                result.bench,
                m.name,
                f"{m.value:,.1f} {m.unit}",
                m.target,
                "" if met is None else ("[green]yes[/green]" if met else "[red]NO[/red]"),
                m.note,
            )
    console.print(table)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps([asdict(r) for r in results], indent=2, default=str))
    console.print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
