"""`tasleem vault rekey`: the allocator re-seals its codes under its active key (allocator API)."""

from __future__ import annotations

from typing import Annotated

import typer

from deploy.cli import api
from deploy.embedded import local

app = typer.Typer(no_args_is_help=True, help="Look after the code vault's keys (allocator API).")


@app.command("rekey")
@api.handled
def rekey_codes(
    batch: Annotated[int, typer.Option(min=1, max=10_000, help="Codes per transaction.")] = 1000,
    url: api.URL = None,
    token: api.TOKEN = None,
    home: api.HOME = local.DEFAULT_HOME,
    as_json: api.JSON = False,
) -> None:
    """Have the allocator re-encrypt every code under the first key of its TASLEEM_VAULT_KEYS,
    so that a key after it can be retired once this reports no codes left under another key.
    In batches; safe to stop and run again; prints counts, never a code. Exits 1 while codes
    remain that no key opens (the old key is still needed)."""
    to = api.target("allocator", "operate", url, token, home)
    # as long as the vault is big: one transaction per batch, no overall time limit
    _, report = api.call(
        to, "POST", "/admin/vault/rekey", params={"batch": str(batch)}, timeout_s=None
    )
    if as_json:
        api.show_json(report)
    else:
        api.console.print(
            f"{api.plural(report['rekeyed'], 'code')} re-sealed under key {report['key_id']} in "
            f"{api.plural(report['batches'], 'batch')}; {report['remaining_old']} left under "
            "another key",
            highlight=False,
            markup=False,
        )
        if report["undecryptable"]:
            ids = ", ".join(map(str, report["undecryptable_code_ids"]))
            api.console.print(
                f"{api.plural(report['undecryptable'], 'code')} open under no key (code ids {ids})",
                highlight=False,
            )
    if report["remaining_old"]:
        raise typer.Exit(api.ATTENTION)
