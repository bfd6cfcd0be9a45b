"""`tasleem stock …`: import codes, read stock levels, set a sku's code format, move codes
between accounts, through the allocator's admin API (api.py: which allocator, which token)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from deploy.cli import api
from deploy.embedded import local

app = typer.Typer(no_args_is_help=True, help="Manage the code vault's stock (allocator API).")
SERVICE = "allocator"
LEGACY_ACCOUNT = ":legacy"  # where codes from before accounts wait for their owner
ACCOUNT = Annotated[
    str, typer.Option(help="The merchant account (by default a store's id) whose stock this is.")
]
# the levels table: short headers, so that it stays whole in an 80-column terminal
LEVEL_COLUMNS = (
    ("sku", "sku"),
    ("available", "available"),
    ("reserved", "reserved"),
    ("sold", "sold"),
    ("backordered", "backorder"),
    ("expiring_soon", "expiring"),
    ("expired", "expired"),
    ("quarantined", "held"),
)


@app.command("import")
@api.handled
def import_file(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The stock file.")],
    account: ACCOUNT,
    sku: Annotated[str, typer.Option(help="The sku these codes are for.")],
    fmt: Annotated[
        str, typer.Option("--format", help="auto | lines (one code per line) | csv | json")
    ] = "auto",
    expires: Annotated[
        str | None,
        typer.Option(help="Expiry for lines that name none: ISO 8601, e.g. 2026-12-31."),
    ] = None,
    cost: Annotated[str | None, typer.Option(help="Unit cost for lines that name none.")] = None,
    batch: Annotated[str, typer.Option(help="Supplier or batch label.")] = "",
    url: api.URL = None,
    token: api.TOKEN = None,
    home: api.HOME = local.DEFAULT_HOME,
    as_json: api.JSON = False,
) -> None:
    """Encrypt and store codes in an account's stock; the file is streamed to the allocator.
    Duplicates (in the file or the vault), malformed lines and codes already expired are
    skipped and reported by line number, never shown."""
    to = api.target(SERVICE, "operate", url, token, home)
    params = {"account": account, "format": fmt}
    params |= {k: v for k, v in (("expires", expires), ("cost", cost), ("batch", batch)) if v}
    with file.open("rb") as source:
        # as long as the file takes to stream: no overall time limit
        _, report = api.call(
            to,
            "POST",
            api.path("admin", "stock", sku, "import"),
            params=params,
            data=source,
            timeout_s=None,
        )
    if as_json:
        api.show_json(report)
        return
    show_import(report)


def show_import(report: dict[str, Any]) -> None:
    say = functools.partial(api.console.print, highlight=False, markup=False, soft_wrap=True)
    say(
        f"{report['account']} / {report['sku']}: {report['added']} added, "
        f"{api.plural(report['duplicates'], 'duplicate')} skipped, "
        f"{api.plural(report['invalid_count'], 'line')} refused"
    )
    if report["duplicate_lines"]:
        say(f"  duplicates: line {', '.join(map(str, report['duplicate_lines']))}")
    for problem in report["invalid"]:
        say(f"  line {problem['line']}: {problem['reason']}")
    if report["truncated"]:
        say("  (the first lines of each kind only: --json has the counts)")


@app.command()
@api.handled
def levels(
    account: ACCOUNT,
    sku: Annotated[str | None, typer.Option(help="Only this sku.")] = None,
    expiring_days: Annotated[int, typer.Option(help="What counts as expiring soon.")] = 7,
    url: api.URL = None,
    token: api.TOKEN = None,
    home: api.HOME = local.DEFAULT_HOME,
    as_json: api.JSON = False,
) -> None:
    """An account's stock per sku: available, reserved, sold, backordered, expiring soon,
    expired and held (withdrawn from cancelled orders, never resold)."""
    to = api.target(SERVICE, "read", url, token, home)
    where = api.path("admin", "stock", sku) if sku else "/admin/stock"
    params = {"account": account, "expiring_days": str(expiring_days)}
    _, answer = api.call(to, "GET", where, params=params)
    if as_json:
        api.show_json(answer)
        return
    api.console.print(levels_table(answer))


def levels_table(answer: dict[str, Any]) -> Table:
    table = Table(
        title=f"Stock of {answer['account']}",
        caption=f"expiring: within {answer['expiring_days']} days; held: from cancelled orders",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
    for key, header in LEVEL_COLUMNS:
        if key == "sku":  # a long sku wraps inside its cell; the numbers never do
            table.add_column(header, overflow="fold", min_width=8)
        else:
            table.add_column(header, justify="right", no_wrap=True, min_width=len(header))
    for row in answer["skus"]:
        table.add_row(*(str(row[key]) for key, _ in LEVEL_COLUMNS))
    if not answer["skus"]:
        table.add_row("(none)", *[""] * (len(LEVEL_COLUMNS) - 1))
    return table


@app.command()
@api.handled
def rule(
    account: ACCOUNT,
    sku: Annotated[str, typer.Option(help="The sku.")],
    pattern: Annotated[
        str, typer.Option(help="A regular expression (RE2 syntax) every code must match.")
    ],
    url: api.URL = None,
    token: api.TOKEN = None,
    home: api.HOME = local.DEFAULT_HOME,
    as_json: api.JSON = False,
) -> None:
    """Set the format every imported code of an account's sku must have. Rules are matched
    by RE2, in time linear in the code: no pattern can stall an import."""
    to = api.target(SERVICE, "operate", url, token, home)
    _, answer = api.call(
        to,
        "PUT",
        api.path("admin", "skus", sku, "rule"),
        params={"account": account},
        body={"code_pattern": pattern},
    )
    if as_json:
        api.show_json(answer)
        return
    api.console.print(
        f"{answer['account']} / {answer['sku']}: codes must match {answer['code_pattern']}",
        highlight=False,
        markup=False,
    )


@app.command()
@api.handled
def move(
    sku: Annotated[str, typer.Option(help="The sku.")],
    to_account: Annotated[str, typer.Option("--to", help="The account that owns these codes.")],
    source: Annotated[
        str, typer.Option("--from", help="The account holding them now.")
    ] = LEGACY_ACCOUNT,
    url: api.URL = None,
    token: api.TOKEN = None,
    home: api.HOME = local.DEFAULT_HOME,
    as_json: api.JSON = False,
) -> None:
    """Hand an account's available codes of a sku to another account: the codes held in
    ':legacy' since accounts came in (migration 005) go to their owner this way."""
    to = api.target(SERVICE, "operate", url, token, home)
    _, answer = api.call(
        to,
        "POST",
        api.path("admin", "stock", sku, "move"),
        params={"account": to_account, "from": source},
    )
    if as_json:
        api.show_json(answer)
        return
    api.console.print(
        f"{api.plural(answer['moved'], 'available code')} of {answer['sku']} "
        f"moved from {answer['from']} to {answer['to']}",
        highlight=False,
        markup=False,
    )
