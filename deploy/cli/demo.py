"""`tasleem demo`: a sale-day surge sent to a running stack, and what reached the buyers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from deploy.cli.up import HOME, console, inbox_count
from deploy.embedded import local


def demo(
    orders: Annotated[int, typer.Option(help="How many orders.")] = 1000,
    rate: Annotated[float, typer.Option(help="Orders per second.")] = 200,
    home: HOME = Path(".tasleem"),
) -> None:
    """Send a sale-day surge to a running stack and report what reached the buyers."""
    from deploy import demo as surge_demo

    try:
        info = local.stack_info(home)
    except local.NoStack as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None

    async def main() -> bool:
        result = await surge_demo.surge(info, orders, rate, console=console)
        return surge_demo.report(console, result, await inbox_count(info["sandbox"]))

    raise typer.Exit(0 if asyncio.run(main()) else 1)
