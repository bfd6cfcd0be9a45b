"""`tasleem admin token`: admin API tokens, one per caller and scope."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from deploy.cli.run import SERVICES
from shared import admin_auth

app = typer.Typer(no_args_is_help=True, help="Admin API tokens: one per caller and scope.")
console = Console()


@app.command("token")
def admin_token(
    service: Annotated[str, typer.Option(help=" | ".join(SERVICES))],
    role: Annotated[str, typer.Option(help="read (GETs) or operate (everything)")],
    caller: Annotated[str, typer.Option(help="Who holds it: named in logs and audits.")],
) -> None:
    """Make a token for one caller on one service. Prints the token (hand it to the caller;
    it is not kept) and the entry to add to TASLEEM_<SERVICE>_ADMIN_TOKENS, which holds only
    its digest (deploy/k8s/README.md: the `tasleem-admin-tokens` Secret)."""
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
