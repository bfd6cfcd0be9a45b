"""`tasleem stores …`: add, change, list, rotate the secret of, and remove stores.

Changes go straight to the registry table (a running gateway sees them within its cache TTL,
5 s) and are then published on `store.config`. Secrets are read from a hidden prompt or an
environment variable, never echoed; listings show fingerprints only. Secrets and API
credentials are sealed before they are written, under the vault keys (TASLEEM_VAULT_KEYS, or
the embedded stack's own).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import asyncpg
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from deploy.embedded import local
from services.ingest import store_changes
from services.ingest.errors import StoreMisconfigured
from services.ingest.fields import valid_store_id
from services.ingest.stores import Store, StoreRegistry, remove_store, upsert_store
from shared import kafka_clients
from shared.codecrypt import SecretSealer, VaultKeyError
from shared.events import validation_summary
from shared.kafka import publish

app = typer.Typer(no_args_is_help=True, help="Manage the store registry of the ingest gateway.")
console = Console()
HOME = Annotated[Path, typer.Option(help="The embedded stack's folder (when no env is set).")]
SECRET = Annotated[
    str | None,
    typer.Option(
        help="The webhook secret (Zid: username:password). Prompted for, hidden, when omitted.",
        envvar="TASLEEM_STORE_SECRET",
        show_envvar=True,
    ),
]
SKU_MAP = Annotated[
    str | None, typer.Option(help='Platform sku -> internal sku, as JSON: {"p-1": "SKU-A"}.')
]
CHANNELS = Annotated[
    str | None, typer.Option(help="Delivery channels in order, comma-separated: whatsapp,sms.")
]
TEMPLATES = Annotated[str | None, typer.Option(help="Message templates by name, as JSON.")]
ACCOUNT = Annotated[
    str | None,
    typer.Option(help="The merchant account whose codes the store sells (default: its id)."),
]
MAX_LINES = Annotated[int | None, typer.Option(help="Lines allowed in one order (default 50).")]
MAX_UNITS = Annotated[int | None, typer.Option(help="Units allowed in one order (default 100).")]
PLATFORM_STORE_ID = Annotated[
    str | None, typer.Option(help="The platform's id of the store (Salla: the merchant id).")
]
API_CREDENTIAL = Annotated[
    str | None,
    typer.Option(
        help="Zid: the orders API credential, '<Authorization token>:<X-Manager-Token>' "
        "(each order is confirmed through it). Prompted for, hidden, when a Zid store is added.",
        envvar="TASLEEM_STORE_API_CREDENTIAL",
        show_envvar=True,
    ),
]


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]{message}[/red]")
    return typer.Exit(2)


def _sealer(home: Path) -> SecretSealer:
    try:
        return SecretSealer.from_keys(local.vault_keys(home).vault_keys)
    except (local.NoStack, VaultKeyError) as exc:
        raise _fail(str(exc)) from None


async def _registry(home: Path) -> StoreRegistry:
    try:
        dsn = local.database_url(home)
    except local.NoStack as exc:
        raise _fail(str(exc)) from None
    sealer = _sealer(home)
    pool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=1, server_settings={"search_path": "ingest"}
    )
    return StoreRegistry(pool, sealer)


async def _change(home: Path, store_id: str, edit: Callable[[Store | None], Store]) -> Store | None:
    """Read the store, apply `edit`, save, publish store.config; returns the saved store."""
    registry = await _registry(home)
    try:
        try:
            existing = await registry.fresh(store_id)
        except StoreMisconfigured as exc:
            raise _fail(f"{exc.detail}: remove the store and add it again") from None
        store = edit(existing)
        if store is None:
            return None
        await upsert_store(registry.pool, store, registry.sealer)
    finally:
        await registry.pool.close()
    await _publish(home, store)
    return store


async def _publish(home: Path, store: Store) -> None:
    producer = None
    try:
        producer = kafka_clients.producer(local.kafka_settings(home))
        await producer.start()
    except Exception as exc:  # the change is saved: say so, and how to finish it
        console.print(
            f"[yellow]saved, but store.config was not published ({type(exc).__name__}); "
            "the gateway publishes every store again when it starts[/yellow]"
        )
        if producer is not None:
            await producer.stop()
        return
    try:
        await publish(producer, [store_changes.config_event(store)], "cli")
    finally:
        await producer.stop()


def _json_option(text: str | None, name: str) -> dict[str, str] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        raise _fail(f"--{name} must be JSON") from None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _fail(f"--{name} must be a JSON object of strings")
    return value


def _change_from(
    platform: str | None,
    name: str | None,
    secret: str | None,
    locale: str | None,
    channels: str | None,
    sku_map: str | None,
    templates: str | None,
    salla_strategy: str | None,
    **tenancy: str | int | None,
) -> store_changes.StoreChange:
    try:
        return store_changes.StoreChange.model_validate(
            {
                **tenancy,
                "platform": platform,
                "name": name,
                "secrets": [secret] if secret else None,
                "locale": locale,
                "channels": channels.split(",") if channels else None,
                "sku_map": _json_option(sku_map, "sku-map"),
                "templates": _json_option(templates, "templates"),
                "salla_strategy": salla_strategy,
            }
        )
    except ValidationError as exc:  # named fields only: its text would echo a secret
        raise _fail(validation_summary(exc)) from None


def _apply(
    store_id: str, change: store_changes.StoreChange, must_exist: bool
) -> Callable[[Store | None], Store]:
    def edit(existing: Store | None) -> Store:
        if must_exist and existing is None:
            raise _fail(f"no store {store_id!r}: add it first")
        if not must_exist and existing is not None:
            raise _fail(f"store {store_id!r} exists: use `tasleem stores update`")
        try:
            return store_changes.apply(store_id, existing, change)
        except store_changes.InvalidChange as exc:
            raise _fail(str(exc)) from None

    return edit


def _show(store: Store) -> None:
    typer.echo(json.dumps(store_changes.shown(store), ensure_ascii=False))


@app.command()
def add(
    store_id: Annotated[str, typer.Argument(help="The id in the webhook URL.")],
    platform: Annotated[str, typer.Option(help="standard | salla | zid | shopify | woocommerce")],
    name: Annotated[str, typer.Option(help="The store's name, as buyers know it.")],
    secret: SECRET = None,
    locale: Annotated[str, typer.Option(help="The buyers' default language: ar | en.")] = "ar",
    channels: CHANNELS = None,
    sku_map: SKU_MAP = None,
    templates: TEMPLATES = None,
    salla_strategy: Annotated[
        str | None, typer.Option(help="Salla only: signature | token.")
    ] = None,
    account: ACCOUNT = None,
    max_lines: MAX_LINES = None,
    max_units: MAX_UNITS = None,
    platform_store_id: PLATFORM_STORE_ID = None,
    api_credential: API_CREDENTIAL = None,
    home: HOME = local.DEFAULT_HOME,
) -> None:
    """Register a store; a running gateway accepts its webhooks within seconds."""
    secret = secret or typer.prompt("webhook secret", hide_input=True)
    if platform in store_changes.CONFIRMED_BY_API and not api_credential:
        api_credential = typer.prompt(
            "orders API credential (<Authorization token>:<X-Manager-Token>)", hide_input=True
        )
    change = _change_from(
        platform,
        name,
        secret,
        locale,
        channels,
        sku_map,
        templates,
        salla_strategy,
        account=account,
        max_lines=max_lines,
        max_units=max_units,
        platform_store_id=platform_store_id,
        api_credential=api_credential,
    )
    store = asyncio.run(_change(home, store_id, _apply(store_id, change, must_exist=False)))
    assert store is not None
    _show(store)


@app.command()
def update(
    store_id: str,
    name: Annotated[str | None, typer.Option()] = None,
    locale: Annotated[str | None, typer.Option()] = None,
    channels: CHANNELS = None,
    sku_map: SKU_MAP = None,
    templates: TEMPLATES = None,
    salla_strategy: Annotated[str | None, typer.Option()] = None,
    account: ACCOUNT = None,
    max_lines: MAX_LINES = None,
    max_units: MAX_UNITS = None,
    platform_store_id: PLATFORM_STORE_ID = None,
    api_credential: API_CREDENTIAL = None,
    home: HOME = local.DEFAULT_HOME,
) -> None:
    """Change a store's settings (webhook secrets: use rotate-secret; a new API credential:
    TASLEEM_STORE_API_CREDENTIAL, not on the command line, where shells keep it)."""
    change = _change_from(
        None,
        name,
        None,
        locale,
        channels,
        sku_map,
        templates,
        salla_strategy,
        account=account,
        max_lines=max_lines,
        max_units=max_units,
        platform_store_id=platform_store_id,
        api_credential=api_credential,
    )
    store = asyncio.run(_change(home, store_id, _apply(store_id, change, must_exist=True)))
    assert store is not None
    _show(store)


@app.command("rotate-secret")
def rotate_secret(store_id: str, secret: SECRET = None, home: HOME = local.DEFAULT_HOME) -> None:
    """Put a new secret first; the previous one is still accepted until the next rotation."""
    new_secret = secret or typer.prompt("new webhook secret", hide_input=True)

    def edit(existing: Store | None) -> Store:
        if existing is None:
            raise _fail(f"no store {store_id!r}")
        try:
            return store_changes.rotate(existing, new_secret)
        except store_changes.InvalidChange as exc:
            raise _fail(str(exc)) from None

    store = asyncio.run(_change(home, store_id, edit))
    assert store is not None
    _show(store)


@app.command("list")
def list_stores(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    home: HOME = local.DEFAULT_HOME,
) -> None:
    """Every store, secrets shown as fingerprints."""

    async def main() -> list[Store]:
        registry = await _registry(home)
        try:
            return await registry.all()
        finally:
            await registry.pool.close()

    stores = asyncio.run(main())
    if as_json:
        for store in stores:
            _show(store)
        return
    table = Table(title="Stores")
    columns = ("id", "platform", "name", "locale", "channels", "secrets", "API", "skus mapped")
    for column in columns:
        table.add_column(column)
    for s in stores:
        shown = store_changes.shown(s)
        table.add_row(
            s.store_id,
            s.platform,
            s.name,
            s.locale,
            ",".join(s.channels),
            " ".join(shown["secrets"]),
            shown["api_credential"] or "",
            str(len(s.sku_map)),
        )
    console.print(table)


@app.command()
def remove(store_id: str, home: HOME = local.DEFAULT_HOME) -> None:
    """Stop accepting a store's webhooks."""

    async def main() -> bool:
        try:
            dsn = local.database_url(home)
        except local.NoStack as exc:
            raise _fail(str(exc)) from None
        conn = await asyncpg.connect(dsn, server_settings={"search_path": "ingest"})
        try:
            return await remove_store(conn, store_id)
        finally:
            await conn.close()

    if not valid_store_id(store_id) or not asyncio.run(main()):
        raise _fail(f"no store {store_id!r}")
    typer.echo(json.dumps({"status": "removed", "store_id": store_id}))
