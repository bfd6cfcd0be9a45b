"""The `tasleem` command: run the stack, a demo surge or a service; operate a running one.

Each command group is a module here. The operator commands (stock, vault, stores, notify) are
clients of the services' admin APIs and import no service (api.py: target, token, errors);
dlq reads the broker; up, demo and run start things.
"""

from __future__ import annotations

import typer

from deploy.cli import admin, demo, dlq, notify, run, stock, stores, up, vault
from deploy.cli.run import SERVICES

__all__ = ["SERVICES", "app"]

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.split("\n")[0])
app.command()(up.up)
app.command()(demo.demo)
app.command()(run.run)
app.add_typer(stock.app, name="stock")
app.add_typer(vault.app, name="vault")
app.add_typer(stores.app, name="stores")
app.add_typer(notify.app, name="notify")
app.add_typer(dlq.app, name="dlq", help="Dead letters: list, read and replay them (broker).")
app.add_typer(admin.app, name="admin")
