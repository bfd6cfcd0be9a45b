"""The `tasleem` command: run the stack, a demo surge, a service, or import stock."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from deploy import dlq
from deploy.embedded import local
from services.allocator import cli as stock_cli
from services.ingest import cli as stores_cli
from services.notifier import cli as notify_cli

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
app.add_typer(stock_cli.app, name="stock")
app.add_typer(stock_cli.vault_app, name="vault")
app.add_typer(stores_cli.app, name="stores")
app.add_typer(notify_cli.app, name="notify")
app.add_typer(dlq.app, name="dlq")
admin_app = typer.Typer(no_args_is_help=True, help="Admin API tokens: one per caller and scope.")
app.add_typer(admin_app, name="admin")
console = Console()

HOME = Annotated[Path, typer.Option(help="Where the embedded stack keeps its data and logs.")]
SERVICES = ("ingest", "allocator", "notifier", "restocker")


@app.command()
def up(
    home: HOME = Path(".tasleem"),
    demo_orders: Annotated[int, typer.Option(help="Send a surge of N orders once up.")] = 0,
    demo_rate: Annotated[float, typer.Option(help="Orders per second for the surge.")] = 200,
    partitions: Annotated[int, typer.Option(help="Partitions per topic.")] = 4,
) -> None:
    """Start the whole system on this machine and keep it up until Ctrl-C."""
    from deploy.embedded.stack import Stack, StackError, StackOptions

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    stack = Stack(StackOptions(home=home, partitions=partitions))

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
        supervisor = asyncio.create_task(stack.supervise())
        if demo_orders:
            from deploy import demo

            result = await demo.surge(info, demo_orders, demo_rate, console=console)
            demo.report(console, result, await _inbox_count(info["sandbox"]))
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


@app.command()
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
        return surge_demo.report(console, result, await _inbox_count(info["sandbox"]))

    raise typer.Exit(0 if asyncio.run(main()) else 1)


@admin_app.command("token")
def admin_token(
    service: Annotated[str, typer.Option(help=" | ".join(SERVICES))],
    role: Annotated[str, typer.Option(help="read (GETs) or operate (everything)")],
    caller: Annotated[str, typer.Option(help="Who holds it: named in logs and audits.")],
) -> None:
    """Make a token for one caller on one service. Prints the token (hand it to the caller;
    it is not kept) and the entry to add to TASLEEM_<SERVICE>_ADMIN_TOKENS, which holds only
    its digest (deploy/k8s/README.md: the `tasleem-admin-tokens` Secret)."""
    from shared import admin_auth

    if service not in SERVICES or role not in admin_auth.ROLES:
        raise typer.BadParameter(f"--service {' | '.join(SERVICES)}, --role read | operate")
    token = admin_auth.new_token()
    try:
        entry = admin_auth.entry(caller, "operate" if role == "operate" else "read", token)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    console.print(f"token (for {caller} only):  {token}", soft_wrap=True, highlight=False)
    console.print(
        f"TASLEEM_{service.upper()}_ADMIN_TOKENS entry:  {entry}", soft_wrap=True, highlight=False
    )


@app.command()
def run(service: Annotated[str, typer.Argument(help=" | ".join(SERVICES))]) -> None:
    """Run one service in the foreground (the container entry point)."""
    if service not in SERVICES:
        raise typer.BadParameter(f"one of {', '.join(SERVICES)}")
    module = __import__(f"services.{service}.main", fromlist=["main"])
    raise typer.Exit(module.main())


async def _inbox_count(sandbox: str) -> int | None:
    import aiohttp

    try:
        async with aiohttp.ClientSession() as session, session.get(f"{sandbox}/inbox") as resp:
            return len((await resp.json())["messages"])
    except (aiohttp.ClientError, KeyError, ValueError):
        return None


if __name__ == "__main__":
    app()
