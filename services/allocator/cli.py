"""`tasleem stock …`: import codes, read stock levels, set a sku's code format."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import asyncpg
import typer
from rich.console import Console
from rich.table import Table

from deploy.embedded import local
from services.allocator import handlers, importing, stock, vault
from shared.codecrypt import CodeCipher

app = typer.Typer(no_args_is_help=True, help="Manage the code vault's stock.")
console = Console()
HOME = Annotated[Path, typer.Option(help="The embedded stack's folder (when no env is set).")]


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]{message}[/red]")
    return typer.Exit(2)


async def _connect(home: Path) -> asyncpg.Connection:
    try:
        dsn = local.database_url(home)
    except local.NoStack as exc:
        raise _fail(str(exc)) from None
    return await asyncpg.connect(dsn, server_settings={"search_path": "allocator"})


@app.command("import")
def import_file(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The stock file.")],
    sku: Annotated[str, typer.Option(help="The sku these codes are for.")],
    fmt: Annotated[
        str, typer.Option("--format", help="auto | lines (one code per line) | csv | json")
    ] = "auto",
    expires: Annotated[
        datetime | None, typer.Option(help="Expiry for lines that name none (ISO 8601).")
    ] = None,
    cost: Annotated[str | None, typer.Option(help="Unit cost for lines that name none.")] = None,
    batch: Annotated[str, typer.Option(help="Supplier or batch label.")] = "",
    home: HOME = local.DEFAULT_HOME,
) -> None:
    """Encrypt and store codes; duplicates (in the file or the vault) are skipped and reported
    by line number, never shown."""
    if fmt not in ("auto", "lines", "csv", "json"):
        raise _fail("--format must be auto, lines, csv or json")
    try:
        cipher = CodeCipher.from_settings(local.vault_keys(home))
    except local.NoStack as exc:
        raise _fail(str(exc)) from None
    text = file.read_text()

    async def main() -> vault.ImportReport:
        conn = await _connect(home)
        try:
            parsed = importing.parse(text, fmt, await vault.code_pattern(conn, sku))  # type: ignore[arg-type]
            async with conn.transaction():
                report = await vault.import_stock(
                    conn,
                    cipher,
                    sku,
                    parsed,
                    source=f"import:{file.name}",
                    expires_at=expires,
                    cost=Decimal(cost) if cost else None,
                    batch=batch,
                )
                # fills backorders; the allocator relays these events from its outbox
                await handlers.distribute(conn, [sku], report_levels=True)
            return report
        finally:
            await conn.close()

    try:
        report = asyncio.run(main())
    except importing.UnreadableFile as exc:
        raise _fail(str(exc)) from None
    typer.echo(json.dumps({"sku": sku, **report.as_dict()}))


@app.command()
def levels(
    sku: Annotated[str | None, typer.Option(help="Only this sku.")] = None,
    expiring_days: Annotated[int, typer.Option(help="What counts as expiring soon.")] = 7,
    home: HOME = local.DEFAULT_HOME,
) -> None:
    """Stock per sku: available, reserved, sold, backordered, expiring soon."""

    async def main() -> list[stock.SkuStock]:
        conn = await _connect(home)
        try:
            return await stock.stock_report(conn, expiring_days, sku)
        finally:
            await conn.close()

    rows = asyncio.run(main())
    table = Table(title="Stock")
    columns = (
        "sku",
        "available",
        "reserved",
        "sold",
        "backordered",
        "expiring_soon",
        "expired",
        "quarantined",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "sku" else "right")
    for row in rows:
        table.add_row(*(str(getattr(row, c)) for c in columns))
    console.print(table)


@app.command()
def rule(
    sku: Annotated[str, typer.Option(help="The sku.")],
    pattern: Annotated[str, typer.Option(help="A regular expression every code must match.")],
    home: HOME = local.DEFAULT_HOME,
) -> None:
    """Set the format every imported code of a sku must have."""
    try:
        re.compile(pattern)
    except re.error as exc:
        raise _fail(f"not a regular expression: {exc}") from None

    async def main() -> None:
        conn = await _connect(home)
        try:
            await conn.execute(
                "INSERT INTO sku_rules (sku, code_pattern) VALUES ($1, $2) "
                "ON CONFLICT (sku) DO UPDATE SET code_pattern = excluded.code_pattern",
                sku,
                pattern,
            )
        finally:
            await conn.close()

    asyncio.run(main())
    typer.echo(json.dumps({"sku": sku, "code_pattern": pattern}))
