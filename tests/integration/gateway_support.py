"""A real gateway (PostgreSQL, broker) with one store per platform, and the sandbox playing
those stores (Zid's orders API included, which the gateway asks), shared by the ingest
integration tests."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import weakref
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from deploy.embedded.processes import free_port
from deploy.sandbox import platforms as wire
from deploy.sandbox.app import init_app
from deploy.sandbox.config import SandboxConfig
from deploy.sandbox.config import StoreConfig as SandboxStore
from services.ingest.main import SQL, lifespan
from services.ingest.settings import IngestSettings
from services.ingest.stores import Store, upsert_store
from shared import admin_auth, runtime
from shared.codecrypt import SecretSealer, generate_key_settings
from shared.db import migrate

SECRETS = {
    "standard": "whsec_" + base64.b64encode(os.urandom(24)).decode(),
    "salla": "salla-" + os.urandom(8).hex(),
    "zid": "tasleem:" + os.urandom(8).hex(),
    "shopify": "shpss_" + os.urandom(8).hex(),
    "woocommerce": "wc-" + os.urandom(8).hex(),
}
ADMIN_TOKEN = "admin-" + os.urandom(8).hex()
# what the Zid store's orders API takes: `<Authorization token>:<X-Manager-Token>`
ZID_API_CREDENTIAL = f"zid-auth-{os.urandom(8).hex()}:zid-manager-{os.urandom(8).hex()}"
# the gateway seals store secrets under these (TASLEEM_VAULT_KEYS)
VAULT_KEYS = generate_key_settings()["TASLEEM_VAULT_KEYS"]
SEALER = SecretSealer.from_keys(SecretStr(VAULT_KEYS))


def sandbox_store(platform: str) -> SandboxStore:
    return SandboxStore(
        id=f"{platform}-store",
        platform=platform,
        name=f"{platform} store",
        secret=SECRETS[platform],
        api_credential=ZID_API_CREDENTIAL if platform == "zid" else None,
    )


SANDBOX_STORES = [sandbox_store(p) for p in SECRETS]


async def register_stores(database: str) -> None:
    conn = await asyncpg.connect(database)
    try:
        await migrate(conn, "ingest", SQL)
        await conn.execute("SET search_path TO ingest")
        for s in SANDBOX_STORES:
            await upsert_store(
                conn,
                Store(
                    s.id,
                    s.platform,
                    s.name,
                    (s.secret,),
                    sku_map={"p-1": "SKU-A"},
                    api_credential=s.api_credential or "",
                ),
                SEALER,
            )
    finally:
        await conn.close()


_SANDBOXES: weakref.WeakKeyDictionary[TestClient, TestClient] = weakref.WeakKeyDictionary()


@contextlib.asynccontextmanager
async def running_gateway(database: str, kafka: str, **overrides: Any) -> AsyncIterator[TestClient]:
    """The gateway, and the sandbox playing SANDBOX_STORES towards it (`sandbox_of`)."""
    await register_stores(database)
    if "ingest_admin_token" in overrides:  # the tests' operator token, as a scoped entry
        token = overrides.pop("ingest_admin_token")
        overrides["ingest_admin_tokens"] = admin_auth.entry("tests", "operate", token)
    gateway_port, sandbox_port = free_port(), free_port()
    defaults = {
        "store_cache_ttl_s": 0.2,
        "vault_keys": VAULT_KEYS,
        "zid_api_base_url": f"http://127.0.0.1:{sandbox_port}/zid/v1",
    }
    settings = IngestSettings(
        kafka_bootstrap=kafka, database_url=database, **{**defaults, **overrides}
    )
    app = web.Application(client_max_size=settings.max_body_bytes)
    rt = runtime.Runtime("ingest", settings, app)
    app.add_routes(runtime.admin_routes(rt))
    sandbox_app = init_app(
        SandboxConfig(gateway=f"http://127.0.0.1:{gateway_port}", stores=SANDBOX_STORES)
    )
    async with (
        lifespan(rt),
        TestClient(TestServer(app, port=gateway_port)) as client,
        TestClient(TestServer(sandbox_app, port=sandbox_port)) as sandbox,
    ):
        _SANDBOXES[client] = sandbox
        yield client


def sandbox_of(gateway: TestClient) -> TestClient:
    """The sandbox that plays the stores of `running_gateway` (and answers as Zid's API)."""
    return _SANDBOXES[gateway]


def sale(order_id: str, phone: str = "+966551234567") -> wire.Sale:
    return wire.Sale(
        order_id=order_id,
        lines=[{"sku": "p-1", "quantity": 2, "title": "Card", "price": "50.00"}],
        customer={"name": "Sara Q", "phone": phone, "email": "sara@example.com", "locale": "en"},
        total="100.00",
    )


async def zid_takes(sandbox: TestClient, store: SandboxStore, webhook: wire.Webhook) -> None:
    """The Zid store takes the order this webhook is about (so Zid's API knows it), under the
    sandbox store whose API credential `store` has."""
    shop = next(s for s in SANDBOX_STORES if s.api_credential == store.api_credential)
    order = json.loads(webhook.body)
    if not order.get("products"):
        return  # not a new order (a status change): the store has it already, or never had
    mobile = order["customer"]["mobile"]
    taken = {
        "order_id": str(order["id"]),
        "lines": [
            {"sku": p["sku"], "quantity": p["quantity"], "title": p["name"], "price": p["price"]}
            for p in order["products"]
        ],
        "customer": {
            "name": order["customer"]["name"],
            "phone": f"+{mobile}" if mobile else None,
            "email": order["customer"]["email"],
        },
        "send": False,
    }
    async with sandbox.post(f"/stores/{shop.id}/orders", json=taken) as reply:
        assert reply.status == 200, await reply.text()


async def deliver(
    client: TestClient, store: SandboxStore, webhook: wire.Webhook, *, zid_knows: bool = True
) -> tuple[int, dict[str, Any]]:
    """POST a webhook as the platform would; (status, JSON reply). A paid Zid order is one the
    Zid store has taken (its API, which the gateway asks, knows it) unless `zid_knows` is false."""
    if store.platform == "zid" and zid_knows and b'"payment_status":"paid"' in webhook.body:
        await zid_takes(sandbox_of(client), store, webhook)
    path = f"/webhooks/{store.platform}/{store.id}"
    if webhook.query:
        path += "?" + webhook.query
    headers = wire.delivery_headers(store, webhook)
    async with client.post(path, data=webhook.body, headers=headers) as reply:
        return reply.status, json.loads(await reply.read())
