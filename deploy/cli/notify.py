"""`tasleem notify …`: preview a store's message, read an order's deliveries, resend an order's
codes, through the notifier's admin API (api.py: which notifier, which token)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from deploy.cli import api
from deploy.embedded import local

app = typer.Typer(no_args_is_help=True, help="Buyers' messages (notifier API).")
SERVICE = "notifier"
ORDER_KEY = Annotated[str, typer.Argument(help="{platform}:{store_id}:{order_id}")]


@app.command()
@api.handled
def preview(
    store_id: Annotated[
        str | None,
        typer.Option(
            help="Render with this store's templates and instructions, as the notifier "
            "knows them (default: ours)."
        ),
    ] = None,
    locale: Annotated[str | None, typer.Option(help="ar or en (default: the store's).")] = None,
    channel: Annotated[str, typer.Option(help="whatsapp, sms or email")] = "sms",
    store: Annotated[str | None, typer.Option(help="The store's name (default: its own).")] = None,
    product: Annotated[str, typer.Option(help="The product title.")] = "PlayStation 50 SAR",
    code: Annotated[list[str] | None, typer.Option(help="A sample code (repeatable).")] = None,
    url: api.URL = None,
    token: api.TOKEN = None,
    home: api.HOME = local.DEFAULT_HOME,
    as_json: api.JSON = False,
) -> None:
    """Render one message exactly as the buyer would read it (sample codes, not real ones)."""
    to = api.target(SERVICE, "read", url, token, home)
    params: dict[str, str | list[str]] = {"channel": channel, "product": product}
    for name, value in (("store_id", store_id), ("locale", locale), ("store", store)):
        if value:
            params[name] = value
    if code:
        params["code"] = code
    _, answer = api.call(to, "GET", "/admin/preview", params=params)
    if as_json:
        api.show_json(answer)
        return
    out = api.console
    known = "its own settings" if answer["store_known"] else "the default templates"
    out.print(f"{answer['channel']} ({answer['locale']}), {known}", highlight=False)
    if answer["channel"] == "whatsapp":
        out.print(f"template: {answer['template']} ({answer['locale']})", highlight=False)
        for number, value in enumerate(answer["params"], start=1):
            out.print(f"  {{{{{number}}}}} = {value}", markup=False, highlight=False)
        return
    if answer["channel"] == "email":
        out.print(f"Subject: {answer['subject']}\n", markup=False, highlight=False)
    out.print(answer["text"], markup=False, soft_wrap=True, highlight=False)
    if answer["channel"] == "email":
        out.print("\n" + answer["html"], markup=False, soft_wrap=True, highlight=False)


@app.command()
@api.handled
def deliveries(
    order_key: ORDER_KEY,
    url: api.URL = None,
    token: api.TOKEN = None,
    home: api.HOME = local.DEFAULT_HOME,
    as_json: api.JSON = False,
) -> None:
    """An order's deliveries part by part, every attempt, and the resends made (never a code)."""
    to = api.target(SERVICE, "read", url, token, home)
    _, answer = api.call(to, "GET", api.path("admin", "orders", order_key, "deliveries"))
    if as_json:
        api.show_json(answer)
        return
    parts = Table(title=f"Deliveries of {answer['order_key']}", box=box.SIMPLE_HEAD)
    for column in ("part", "status", "channel", "provider", "attempts", "reasons"):
        parts.add_column(column, overflow="fold")
    for p in answer["parts"]:
        parts.add_row(
            str(p["part"]),
            p["status"],
            p["channel"] or "",
            p["provider"] or "",
            str(p["attempts"]),
            "; ".join(p["reasons"]),
        )
    api.console.print(parts)
    if answer["resends"]:
        resends = Table(title="Resends", box=box.SIMPLE_HEAD)
        for column in ("when", "caller", "to", "reason", "outcome"):
            resends.add_column(column, overflow="fold")
        for r in answer["resends"]:
            to_whom = "the buyer" if not r["recipient_changed"] else (r["phone"] or r["email"])
            resends.add_row(
                str(r["requested_at"])[:19], r["caller"], to_whom, r["reason"] or "", r["outcome"]
            )
        api.console.print(resends)


@app.command()
@api.handled
def resend(
    order_key: ORDER_KEY,
    phone: Annotated[str | None, typer.Option(help="Corrected phone, E.164.")] = None,
    email: Annotated[str | None, typer.Option(help="Corrected email address.")] = None,
    reason: Annotated[
        str | None, typer.Option(help="Why (a ticket, the buyer's request): kept in the audit.")
    ] = None,
    url: api.URL = None,
    token: api.TOKEN = None,
    home: api.HOME = local.DEFAULT_HOME,
    as_json: api.JSON = False,
) -> None:
    """Send an order's codes again: to the buyer, or to a corrected phone number or address.
    Audited (your token's caller name, the original recipient and this one) and limited per
    order and per caller. Needs an operate token of the notifier. Exits 1 when a part failed."""
    to = api.target(SERVICE, "operate", url, token, home)
    status, answer = api.call(
        to,
        "POST",
        api.path("admin", "orders", order_key, "resend"),
        body={"phone": phone, "email": email, "reason": reason},
        ok=(200, 502),  # 502: carried out, and some part failed: shown, then exit 1
    )
    if as_json:
        api.show_json(answer)
    else:
        show_resend(answer)
    if status != 200:
        raise typer.Exit(api.ATTENTION)


def show_resend(answer: dict[str, Any]) -> None:
    recipient = answer["recipient"]
    whom = (
        "the buyer"
        if not answer["recipient_changed"]
        else (recipient.get("phone") or recipient.get("email"))
    )
    api.console.print(f"resent to {whom} (audit {answer['audit_id']})", highlight=False)
    for part in answer["parts"]:
        line = f"  part {part['part']}: {part['status']}"
        if part.get("channel"):
            line += f" by {part['channel']}" + (
                f" through {part['provider']}" if part.get("provider") else ""
            )
        if part.get("reasons"):
            line += f" ({'; '.join(part['reasons'])})"
        api.console.print(line, highlight=False, markup=False, soft_wrap=True)
