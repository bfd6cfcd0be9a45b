"""A real gateway (PostgreSQL, broker) with one store per platform, and the sandbox's own
signing, shared by the ingest integration tests."""

from __future__ import annotations

import base64
import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from deploy.sandbox import platforms as wire
from deploy.sandbox.config import StoreConfig as SandboxStore
from services.ingest.main import SQL, lifespan
from services.ingest.settings import IngestSettings
from services.ingest.stores import Store, upsert_store
from shared import runtime
from shared.db import migrate

SECRETS = {
    "standard": "whsec_" + base64.b64encode(os.urandom(24)).decode(),
    "salla": "salla-" + os.urandom(8).hex(),
    "zid": "tasleem:" + os.urandom(8).hex(),
    "shopify": "shpss_" + os.urandom(8).hex(),
    "woocommerce": "wc-" + os.urandom(8).hex(),
}
ADMIN_TOKEN = "admin-" + os.urandom(8).hex()


def sandbox_store(platform: str) -> SandboxStore:
    return SandboxStore(
        id=f"{platform}-store",
        platform=platform,
        name=f"{platform} store",
        secret=SECRETS[platform],
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
                Store(s.id, s.platform, s.name, (s.secret,), sku_map={"p-1": "SKU-A"}),
            )
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def running_gateway(database: str, kafka: str, **overrides: Any) -> AsyncIterator[TestClient]:
    await register_stores(database)
    settings = IngestSettings(
        kafka_bootstrap=kafka,
        database_url=database,
        **{"store_cache_ttl_s": 0.2, **overrides},
    )
    app = web.Application(client_max_size=settings.max_body_bytes)
    rt = runtime.Runtime("ingest", settings, app)
    app.add_routes(runtime.admin_routes(rt))
    async with lifespan(rt), TestClient(TestServer(app)) as client:
        yield client


def sale(order_id: str, phone: str = "+966551234567") -> wire.Sale:
    return wire.Sale(
        order_id=order_id,
        lines=[{"sku": "p-1", "quantity": 2, "title": "Card", "price": "50.00"}],
        customer={"name": "Sara Q", "phone": phone, "email": "sara@example.com", "locale": "en"},
        total="100.00",
    )


async def deliver(
    client: TestClient, store: SandboxStore, webhook: wire.Webhook
) -> tuple[int, dict[str, Any]]:
    """POST a webhook as the platform would; (status, JSON reply)."""
    path = f"/webhooks/{store.platform}/{store.id}"
    if webhook.query:
        path += "?" + webhook.query
    headers = wire.delivery_headers(store, webhook)
    async with client.post(path, data=webhook.body, headers=headers) as reply:
        return reply.status, json.loads(await reply.read())
