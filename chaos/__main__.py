"""Run the chaos scenarios: `python -m chaos [name ...]`; the table goes to chaos/results/.

Sizes come from the environment so a quick run is one line:
TASLEEM_CHAOS_ORDERS (3000), TASLEEM_CHAOS_RATE (100 orders/s), TASLEEM_CHAOS_FORGED (10000),
TASLEEM_CHAOS_OUTAGE_S (scales the 15 s broker pause and 30 s outages; default 1.0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from chaos.harness import Outcome, Settings, run_scenario, scratch_home
from chaos.scenarios import ALL, BY_NAME

RESULTS = Path(__file__).parent / "results"


def settings_from_env() -> Settings:
    scale = float(os.environ.get("TASLEEM_CHAOS_OUTAGE_S", "1.0"))
    return Settings(
        orders=int(os.environ.get("TASLEEM_CHAOS_ORDERS", "3000")),
        rate=float(os.environ.get("TASLEEM_CHAOS_RATE", "100")),
        forged=int(os.environ.get("TASLEEM_CHAOS_FORGED", "10000")),
        broker_pause_s=15.0 * scale,
        whatsapp_down_s=30.0 * scale,
        supplier_fault_s=30.0 * scale,
    )


def table(outcomes: list[Outcome]) -> Table:
    out = Table(title="Chaos (this machine, this run)")
    for column in ("scenario", "orders", "acked", "delivered", "duplicates", "lost", "failed"):
        out.add_column(column, justify="right" if column != "scenario" else "left")
    out.add_column("recover", justify="right")
    out.add_column("drain", justify="right")
    out.add_column("result")
    for o in outcomes:
        out.add_row(
            o.scenario,
            str(o.orders),
            str(o.acknowledged),
            str(o.delivered),
            str(o.duplicates),
            str(o.lost),
            str(o.failed),
            "-" if o.recover_s is None else f"{o.recover_s:.1f} s",
            f"{o.drain_s:.1f} s",
            "[green]ok[/green]" if o.ok else "[red]FAILED[/red]",
        )
    return out


def explain(console: Console, outcomes: list[Outcome]) -> None:
    for o in outcomes:
        console.print(f"[bold]{o.scenario}[/bold] ({o.title}): restarts {o.restarts}, {o.notes}")
        for problem in o.problems:
            console.print(f"  [red]-[/red] {problem}")
        for line in o.evidence:
            console.print(f"    {line}")


async def run_all(names: list[str], settings: Settings, console: Console) -> list[Outcome]:
    outcomes = []
    for name in names:
        scenario = BY_NAME[name]
        console.rule(f"chaos: {scenario.title}")
        home = scratch_home(name)
        try:
            outcome = await run_scenario(scenario, settings, home)
        except Exception as exc:  # a scenario that could not run is a failed scenario
            logging.exception("scenario %s", name)
            outcome = Outcome(
                scenario=name,
                title=scenario.title,
                orders=0,
                acknowledged=0,
                delivered=0,
                duplicates=0,
                lost=0,
                failed=0,
                recover_s=None,
                drain_s=0.0,
                ok=False,
                problems=[f"did not run: {type(exc).__name__}: {exc}"],
                restarts={},
            )
        console.print(table([outcome]))
        explain(console, [outcome])
        console.print(f"logs: {home / 'logs'}")
        outcomes.append(outcome)
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help=f"scenarios (default all): {list(BY_NAME)}")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # the supervisor logs each restart with the log tail of the dead service: the outcome
    # counts restarts and the logs stay on disk, so keep the table readable
    logging.getLogger("deploy.embedded.stack").setLevel(logging.CRITICAL)
    console = Console(width=None if sys.stdout.isatty() else 150)  # a log file keeps every column
    settings = settings_from_env()
    console.print(f"settings: {settings}")
    outcomes = asyncio.run(run_all(args.names or [s.name for s in ALL], settings, console))
    console.print(table(outcomes))
    explain(console, outcomes)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(
        json.dumps(
            {"settings": asdict(settings), "outcomes": [asdict(o) for o in outcomes]}, indent=2
        )
    )
    console.print(f"results: {path}")
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
