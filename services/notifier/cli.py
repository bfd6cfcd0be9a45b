"""`tasleem notify`: preview a buyer's message, resend an order's codes to a corrected address."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote

import aiohttp
import typer
from rich.console import Console

from deploy.embedded import local
from services.notifier import messages
from shared.events import StoreConfig

app = typer.Typer(no_args_is_help=True, help=__doc__)
console = Console()


@app.command()
def preview(
    locale: Annotated[str, typer.Option(help="ar or en")] = "ar",
    channel: Annotated[str, typer.Option(help="whatsapp, sms or email")] = "sms",
    store: Annotated[str, typer.Option(help="The store's name.")] = "متجر الألعاب",
    product: Annotated[str, typer.Option(help="The product title.")] = "PlayStation 50 SAR",
    code: Annotated[list[str] | None, typer.Option(help="A sample code (repeatable).")] = None,
    config: Annotated[
        Path | None, typer.Option(help="A StoreConfig JSON file with the store's templates.")
    ] = None,
) -> None:
    """Render one message exactly as the buyer would read it (sample codes, not real ones)."""
    if locale not in ("ar", "en") or channel not in ("whatsapp", "sms", "email"):
        console.print("[red]--locale is ar or en; --channel is whatsapp, sms or email[/red]")
        raise typer.Exit(2)
    settings = StoreConfig.model_validate_json(config.read_text()) if config else None
    lang: Literal["ar", "en"] = "ar" if locale == "ar" else "en"
    instructions = (settings.instructions.get(lang) if settings else None) or messages.INSTRUCTIONS[
        lang
    ]
    content = messages.Content(store, product, lang, code or ["XXXX-XXXX-XXXX"], instructions)
    if channel == "whatsapp":
        params = messages.whatsapp_params(content)
        console.print(f"template: {messages.DEFAULT_WHATSAPP_TEMPLATE} ({lang})")
        for number, value in enumerate(params, start=1):
            console.print(f"  {{{{{number}}}}} = {value}")
        return
    if channel == "email":
        console.print(f"Subject: {messages.subject(content, settings)}\n")
        console.print(messages.text(content, "email", settings), markup=False, soft_wrap=True)
        console.print("\n" + messages.html_body(content, settings), markup=False, soft_wrap=True)
        return
    console.print(messages.text(content, "sms", settings), markup=False, soft_wrap=True)


@app.command()
def resend(
    order_key: Annotated[str, typer.Argument(help="{platform}:{store_id}:{order_id}")],
    phone: Annotated[str | None, typer.Option(help="Corrected phone, E.164.")] = None,
    email: Annotated[str | None, typer.Option(help="Corrected email address.")] = None,
    reason: Annotated[
        str | None, typer.Option(help="Why (a ticket, the buyer's request): kept in the audit.")
    ] = None,
    url: Annotated[str | None, typer.Option(help="The notifier's admin URL.")] = None,
    home: Annotated[Path, typer.Option(help="The embedded stack's home.")] = Path(".tasleem"),
) -> None:
    """Send an order's codes again: to the buyer, or to a corrected phone number or address.
    Audited (your token's caller name, the original recipient and this one) and limited per
    order and per caller. The token: TASLEEM_NOTIFIER_ADMIN_TOKEN (an `operate` token of the
    notifier), else the local stack's `admin/notifier-operate.token`."""
    token = os.environ.get("TASLEEM_NOTIFIER_ADMIN_TOKEN", "")
    if url is None:
        stack = home / "stack.json"
        if not stack.exists():
            console.print("[red]no --url and no running stack (start one with `tasleem up`)[/red]")
            raise typer.Exit(2)
        url = json.loads(stack.read_text())["notifier"]
        token = token or local.admin_token(home, "notifier", "operate")

    async def call() -> tuple[int, dict[str, object]]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{url.rstrip('/')}/admin/orders/{quote(order_key, safe=':')}/resend",
                json={"phone": phone, "email": email, "reason": reason},
                headers={"Authorization": f"Bearer {token}"},
            ) as resp,
        ):
            return resp.status, await resp.json(content_type=None)

    status, body = asyncio.run(call())
    console.print_json(data=body)
    if status != 200:
        raise typer.Exit(1)
