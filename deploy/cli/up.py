"""`tasleem up`: the whole system on this machine (deploy/embedded), until Ctrl-C."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Annotated

import aiohttp
import typer
from rich.console import Console

console = Console()
HOME = Annotated[Path, typer.Option(help="Where the embedded stack keeps its data and logs.")]


def up(
    home: HOME = Path(".tasleem"),
    demo_orders: Annotated[int, typer.Option(help="Send a surge of N orders once up.")] = 0,
    demo_rate: Annotated[float, typer.Option(help="Orders per second for the surge.")] = 200,
    partitions: Annotated[int, typer.Option(help="Partitions per topic.")] = 4,
    replicas: Annotated[
        str,
        typer.Option(
            help="Processes per consumer stage in one group, e.g. notifier=2,allocator=2 "
            "(at most one per partition)."
        ),
    ] = "",
) -> None:
    """Start the whole system on this machine and keep it up until Ctrl-C."""
    from deploy.embedded.stack import Stack, StackError, StackOptions, parse_replicas

    try:
        per_stage = parse_replicas(replicas)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--replicas") from None
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    stack = Stack(StackOptions(home=home, partitions=partitions, replicas=per_stage))

    async def main() -> int:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        try:
            with console.status("starting PostgreSQL, the broker, the sandbox and four services"):
                info = await stack.start()
        except StackError as exc:
            console.print(f"[red]the stack did not start:[/red] {exc}")
            return 1
        console.print(f"[green]stack is up[/green]: {home / 'stack.json'}")
        for name in ("ingest", "sandbox", "allocator", "notifier", "restocker", "kafka"):
            console.print(f"  {name:<10} {info[name]}")
        for stage, count in per_stage.items():
            console.print(f"  {stage} × {min(count, partitions)} processes in one consumer group")
        supervisor = asyncio.create_task(stack.supervise())
        if demo_orders:
            from deploy import demo

            result = await demo.surge(info, demo_orders, demo_rate, console=console)
            demo.report(console, result, await inbox_count(info["sandbox"]))
        console.print("[bold]running; Ctrl-C stops every process[/bold]")
        await stopping.wait()
        supervisor.cancel()
        return 0

    try:
        code = asyncio.run(main())
    finally:
        with console.status("stopping"):
            stack.stop()
        console.print("stopped")
    raise typer.Exit(code)


async def inbox_count(sandbox: str) -> int | None:
    try:
        async with aiohttp.ClientSession() as session, session.get(f"{sandbox}/inbox") as resp:
            return len((await resp.json())["messages"])
    except (aiohttp.ClientError, KeyError, ValueError):
        return None
