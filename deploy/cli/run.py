"""`tasleem run <service>`: one service in the foreground (the container entry point)."""

from __future__ import annotations

from typing import Annotated

import typer

SERVICES = ("ingest", "allocator", "notifier", "restocker")


def run(service: Annotated[str, typer.Argument(help=" | ".join(SERVICES))]) -> None:
    """Run one service in the foreground (the container entry point)."""
    if service not in SERVICES:
        raise typer.BadParameter(f"one of {', '.join(SERVICES)}")
    module = __import__(f"services.{service}.main", fromlist=["main"])
    raise typer.Exit(module.main())
