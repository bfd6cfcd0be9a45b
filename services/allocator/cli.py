"""`tasleem stock …`: import codes, read stock levels, set a sku's code format, per account."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, cast

import asyncpg
import typer
from rich.console import Console
from rich.table import Table

from deploy.embedded import local
from services.allocator import handlers, importing, rekey, stock, vault
from shared.codecrypt import CodeCipher
from shared.events import Stock

app = typer.Typer(no_args_is_help=True, help="Manage the code vault's stock.")
vault_app = typer.Typer(no_args_is_help=True, help="Look after the code vault's keys.")
console = Console()
HOME = Annotated[Path, typer.Option(help="The embedded stack's folder (when no env is set).")]


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]{message}[/red]")
    return typer.Exit(2)


async def _connect(home: Path) -> asyncpg.Connection:
    try:
        dsn = local.database_url_of("allocator", home)
    except local.NoStack as exc:
        raise _fail(str(exc)) from None
    return await asyncpg.connect(dsn, server_settings={"search_path": "allocator"})


ACCOUNT = Annotated[
    str, typer.Option(help="The merchant account (by default a store's id) whose stock this is.")
]


def _stock(account: str, sku: str) -> Stock:
    for value, what in ((account, "--account"), (sku, "--sku")):
        if not value or importing.CONTROL.search(value) or len(value) > 128:
            raise _fail(f"{what} must be 1 to 128 characters, without control characters")
    return Stock(account, sku)


@app.command("import")
def import_file(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The stock file.")],
    account: ACCOUNT,
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
    """Encrypt and store codes in an account's stock, reading the file as it goes; duplicates
    (in the file or the vault) are skipped and reported by line number, never shown."""
    target = _stock(account, sku)
    if fmt not in importing.FORMATS:
        raise _fail("--format must be auto, lines, csv or json")
    try:
        unit_cost = importing.cost_of(cost)
    except ValueError as exc:
        raise _fail(f"--cost: {exc}") from None
    try:
        cipher = CodeCipher.from_settings(local.vault_keys(home))
    except local.NoStack as exc:
        raise _fail(str(exc)) from None

    async def main() -> vault.ImportReport:
        conn = await _connect(home)
        try:
            with file.open("rb") as source:
                async with conn.transaction():
                    pattern = await vault.code_pattern(conn, target)
                    report = await vault.import_stock(
                        conn,
                        cipher,
                        target,
                        importing.read(source, cast(importing.Format, fmt), pattern),
                        source=f"import:{file.name}",
                        expires_at=expires,
                        cost=unit_cost,
                        batch=batch,
                    )
                    # fills backorders; the allocator relays these events from its outbox
                    await handlers.distribute(conn, [target], report_levels=True)
            return report
        finally:
            await conn.close()

    try:
        report = asyncio.run(main())
    except (importing.UnreadableFile, importing.BadRule) as exc:
        raise _fail(str(exc)) from None
    typer.echo(json.dumps({"account": account, "sku": sku, **report.as_dict()}))


@app.command()
def levels(
    account: ACCOUNT,
    sku: Annotated[str | None, typer.Option(help="Only this sku.")] = None,
    expiring_days: Annotated[int, typer.Option(help="What counts as expiring soon.")] = 7,
    home: HOME = local.DEFAULT_HOME,
) -> None:
    """An account's stock per sku: available, reserved, sold, backordered, expiring soon."""
    if not 0 <= expiring_days <= 3650:
        raise _fail("--expiring-days is 0 to 3650")

    async def main() -> list[stock.SkuStock]:
        conn = await _connect(home)
        try:
            return await stock.stock_report(conn, account, expiring_days, sku)
        finally:
            await conn.close()

    rows = asyncio.run(main())
    table = Table(title=f"Stock of {account}")
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
    account: ACCOUNT,
    sku: Annotated[str, typer.Option(help="The sku.")],
    pattern: Annotated[
        str, typer.Option(help="A regular expression (RE2 syntax) every code must match.")
    ],
    home: HOME = local.DEFAULT_HOME,
) -> None:
    """Set the format every imported code of an account's sku must have. Rules are matched
    by RE2, in time linear in the code: no pattern can stall an import."""
    target = _stock(account, sku)
    try:
        importing.compile_rule(pattern)
    except importing.BadRule as exc:
        raise _fail(str(exc)) from None

    async def main() -> None:
        conn = await _connect(home)
        try:
            await vault.set_code_pattern(conn, target, pattern)
        finally:
            await conn.close()

    asyncio.run(main())
    typer.echo(json.dumps({"account": account, "sku": sku, "code_pattern": pattern}))


@app.command()
def move(
    sku: Annotated[str, typer.Option(help="The sku.")],
    to: Annotated[str, typer.Option("--to", help="The account that owns these codes.")],
    source: Annotated[
        str, typer.Option("--from", help="The account holding them now.")
    ] = vault.LEGACY_ACCOUNT,
    home: HOME = local.DEFAULT_HOME,
) -> None:
    """Hand an account's available codes of a sku to another account: the codes held in
    ':legacy' since accounts came in (migration 005) go to their owner this way."""
    target = _stock(to, sku)

    async def main() -> int:
        conn = await _connect(home)
        try:
            async with conn.transaction():
                moved = await vault.move_stock(conn, Stock(source, sku), to)
                await handlers.distribute(conn, [target], report_levels=True)
            return moved
        finally:
            await conn.close()

    moved = asyncio.run(main())
    typer.echo(json.dumps({"sku": sku, "from": source, "to": to, "moved": moved}))


@vault_app.command("rekey")
def rekey_codes(
    batch: Annotated[int, typer.Option(min=1, max=10_000, help="Codes per transaction.")] = 1000,
    home: HOME = local.DEFAULT_HOME,
) -> None:
    """Re-encrypt every code under the first key of TASLEEM_VAULT_KEYS, so that a key after
    it can be retired once this reports no codes left under another key. In batches; safe
    to stop and run again; prints counts, never a code."""
    try:
        cipher = CodeCipher.from_settings(local.vault_keys(home))
    except (local.NoStack, ValueError) as exc:
        raise _fail(str(exc)) from None

    async def main() -> rekey.RekeyReport:
        conn = await _connect(home)
        try:
            return await rekey.rekey(conn, cipher, batch)
        finally:
            await conn.close()

    report = asyncio.run(main())
    typer.echo(json.dumps(report.as_dict()))
    if report.remaining_old:
        raise typer.Exit(1)  # not every code can be opened: the old key is still needed
