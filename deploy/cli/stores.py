"""`tasleem stores …`: add, change, list, rotate the secret of, and remove stores, through the
ingest gateway's admin API (api.py: which gateway, which token).

The gateway saves a change in its registry, seals secrets and API credentials under its vault
keys and publishes the store's settings on `store.config`. Secrets are read from a hidden
prompt or an environment variable, never echoed; the gateway answers with fingerprints only.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from deploy.cli import api
from deploy.embedded import local

app = typer.Typer(no_args_is_help=True, help="Manage the ingest gateway's stores (ingest API).")
SERVICE = "ingest"
CONFIRMED_BY_API = ("zid",)  # platforms whose orders the gateway confirms through their API
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
STORE_ID = Annotated[str, typer.Argument(help="The id in the webhook URL.")]


def _json_option(text: str | None, name: str) -> dict[str, str] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        raise api.Failed(f'--{name} must be JSON, e.g. {{"p-1": "SKU-A"}}') from None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise api.Failed(f"--{name} must be a JSON object of strings")
    return value


def _change(**fields: Any) -> dict[str, Any]:
    """The fields given, as the gateway's PUT /admin/stores/{id} takes them."""
    channels, sku_map, templates = (fields.pop(k) for k in ("channels", "sku_map", "templates"))
    secret = fields.pop("secret", None)
    body = {k: v for k, v in fields.items() if v is not None}
    if secret:
        body["secrets"] = [secret]
    if channels:
        body["channels"] = [c.strip() for c in channels.split(",")]
    for name, value in (("sku_map", sku_map), ("templates", templates)):
        if (parsed := _json_option(value, name.replace("_", "-"))) is not None:
            body[name] = parsed
    return body


def _exists(to: api.Target, store_id: str) -> bool:
    status, _ = api.call(to, "GET", api.path("admin", "stores", store_id), ok=(200, 404))
    return status == 200


def _save(to: api.Target, store_id: str, body: dict[str, Any], as_json: bool) -> None:
    _, store = api.call(to, "PUT", api.path("admin", "stores", store_id), body=body)
    _show(store, as_json)


def _show(store: dict[str, Any], as_json: bool) -> None:
    if as_json:
        api.show_json(store)
        return
    api.console.print(
        f"store {store['store_id']} ({store['platform']}, {store['name']}) saved", highlight=False
    )
    api.console.print(stores_table([store]))


@app.command()
@api.handled
def add(
    store_id: STORE_ID,
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
    url: api.URL = None,
    token: api.TOKEN = None,
    home: api.HOME = local.DEFAULT_HOME,
    as_json: api.JSON = False,
) -> None:
    """Register a store; the gateway accepts its webhooks within seconds."""
    to = api.target(SERVICE, "operate", url, token, home)
    if _exists(to, store_id):
        raise api.Failed(f"store {store_id!r} exists: use `tasleem stores update`")
    secret = secret or typer.prompt("webhook secret", hide_input=True)
    if platform in CONFIRMED_BY_API and not api_credential:
        api_credential = typer.prompt(
            "orders API credential (<Authorization token>:<X-Manager-Token>)", hide_input=True
        )
    body = _change(
        platform=platform,
        name=name,
        secret=secret,
        locale=locale,
        channels=channels,
        sku_map=sku_map,
        templates=templates,
        salla_strategy=salla_strategy,
        account=account,
        max_lines=max_lines,
        max_units=max_units,
        platform_store_id=platform_store_id,
        api_credential=api_credential,
    )
    _save(to, store_id, body, as_json)


@app.command()
@api.handled
def update(
    store_id: STORE_ID,
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
    url: api.URL = None,
    token: api.TOKEN = None,
    home: api.HOME = local.DEFAULT_HOME,
    as_json: api.JSON = False,
) -> None:
    """Change a store's settings (webhook secrets: use rotate-secret; a new API credential:
    TASLEEM_STORE_API_CREDENTIAL, not on the command line, where shells keep it)."""
    to = api.target(SERVICE, "operate", url, token, home)
    if not _exists(to, store_id):
        raise api.Failed(f"no store {store_id!r}: add it first")
    body = _change(
        name=name,
        locale=locale,
        channels=channels,
        sku_map=sku_map,
        templates=templates,
        salla_strategy=salla_strategy,
        account=account,
        max_lines=max_lines,
        max_units=max_units,
        platform_store_id=platform_store_id,
        api_credential=api_credential,
    )
    _save(to, store_id, body, as_json)


@app.command("rotate-secret")
@api.handled
def rotate_secret(
    store_id: STORE_ID,
    secret: SECRET = None,
    url: api.URL = None,
    token: api.TOKEN = None,
    home: api.HOME = local.DEFAULT_HOME,
    as_json: api.JSON = False,
) -> None:
    """Put a new secret first; the previous one is still accepted until the next rotation."""
    to = api.target(SERVICE, "operate", url, token, home)
    new_secret = secret or typer.prompt("new webhook secret", hide_input=True)
    _, store = api.call(
        to,
        "POST",
        api.path("admin", "stores", store_id, "rotate-secret"),
        body={"secret": new_secret},
    )
    _show(store, as_json)


@app.command("list")
@api.handled
def list_stores(
    url: api.URL = None,
    token: api.TOKEN = None,
    home: api.HOME = local.DEFAULT_HOME,
    as_json: api.JSON = False,
) -> None:
    """Every store, secrets shown as fingerprints."""
    to = api.target(SERVICE, "read", url, token, home)
    _, answer = api.call(to, "GET", "/admin/stores")
    if as_json:
        api.show_json(answer)
        return
    api.console.print(stores_table(answer["stores"], title="Stores"))


def stores_table(stores: list[dict[str, Any]], title: str | None = None) -> Table:
    """Stores for people, whole at 80 columns: six columns, the buyers' language beside the
    name, a secret (and Zid's API credential) by the first 8 hex digits of its fingerprint
    (enough to tell them apart; --json has every field)."""
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    widest_id = max((len(s["store_id"]) for s in stores), default=2)
    table.add_column("id", overflow="fold", min_width=min(widest_id, 12), max_width=20)
    table.add_column("platform", no_wrap=True, min_width=11)
    table.add_column("name (lang)", overflow="fold", min_width=6, max_width=16)
    table.add_column("channels", no_wrap=True, min_width=8)
    table.add_column("secrets", no_wrap=True, min_width=12)
    table.add_column("skus", justify="right", no_wrap=True, min_width=4)
    for s in stores:
        secrets = [short(f) for f in s["secrets"]]
        if s["api_credential"]:
            secrets.append("api " + short(s["api_credential"]))
        table.add_row(
            s["store_id"],
            s["platform"],
            f"{s['name']} ({s['locale']})",
            "\n".join(s["channels"]),
            "\n".join(secrets),
            str(len(s["sku_map"])),
        )
    return table


def short(fingerprint: str) -> str:
    return fingerprint.partition(":")[2][:8] or fingerprint[:8]


@app.command()
@api.handled
def remove(
    store_id: STORE_ID,
    url: api.URL = None,
    token: api.TOKEN = None,
    home: api.HOME = local.DEFAULT_HOME,
    as_json: api.JSON = False,
) -> None:
    """Stop accepting a store's webhooks."""
    to = api.target(SERVICE, "operate", url, token, home)
    _, answer = api.call(to, "DELETE", api.path("admin", "stores", store_id))
    if as_json:
        api.show_json(answer)
        return
    api.console.print(f"store {store_id} removed", highlight=False, markup=False)
