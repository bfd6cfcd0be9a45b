"""The ingest gateway: store webhooks in, `order.paid` / `order.cancelled` out."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaProducer

from services.ingest import admin, metrics, store_changes, zid
from services.ingest.openapi import openapi
from services.ingest.platforms import PlatformApis
from services.ingest.receipts.views import RECEIPTS, ReceiptGateway
from services.ingest.receipts.views import ROUTES as RECEIPT_ROUTES
from services.ingest.receipts.views import init_series as init_receipt_series
from services.ingest.settings import IngestSettings
from services.ingest.stores import StoreRegistry, seal_at_rest
from services.ingest.views import PLATFORM_APIS, PRODUCER, REGISTRY, SETTINGS, webhook
from shared import kafka_clients, runtime
from shared.admin_auth import admin_guard
from shared.codecrypt import SecretSealer
from shared.db import connect_and_migrate, ping
from shared.kafka import publish

SQL = Path(__file__).parent / "sql"


@dataclass(frozen=True)
class KafkaClients(kafka_clients.ClientSet):
    """Every Kafka client the gateway makes, built (not started) in one place."""

    producer: AIOKafkaProducer  # orders, store settings and delivery receipts


def kafka(settings: IngestSettings) -> KafkaClients:
    return KafkaClients(producer=kafka_clients.producer(settings))


@contextlib.asynccontextmanager
async def lifespan(rt: runtime.Runtime) -> AsyncIterator[None]:
    settings = rt.settings
    assert isinstance(settings, IngestSettings)
    metrics.init_series()
    init_receipt_series()
    sealer = SecretSealer.from_keys(settings.vault_keys)  # no keys: no start (VaultKeyError)
    # closed in reverse order of opening, each one only if it was opened
    async with contextlib.AsyncExitStack() as resources:
        pool = await connect_and_migrate(
            settings.database_url, "ingest", SQL, max_size=settings.db_pool_max
        )
        resources.push_async_callback(pool.close)
        zid_orders = zid.OrdersApi(settings.zid_api_base_url, settings.zid_api_timeout_s)
        resources.push_async_callback(zid_orders.close)
        clients = kafka(settings)
        resources.push_async_callback(clients.close)
        producer = clients.producer
        await producer.start()
        await seal_at_rest(pool, sealer)
        registry = StoreRegistry(pool, sealer, settings.store_cache_ttl_s)
        stores = await registry.all()
        await publish(producer, [store_changes.config_event(s) for s in stores], "ingest")
        rt.app[REGISTRY] = registry
        rt.app[PRODUCER] = producer
        rt.app[SETTINGS] = settings
        rt.app[PLATFORM_APIS] = PlatformApis(zid=zid_orders)
        rt.app.middlewares.append(
            admin_guard("ingest", settings.ingest_admin_tokens.get_secret_value())
        )
        rt.app.router.add_post("/webhooks/{platform}/{store_id}", webhook)
        rt.app.router.add_get("/openapi.json", openapi)
        rt.app[RECEIPTS] = receipts = ReceiptGateway(
            producer,
            settings,
            settings.gateway_public_url or f"http://{settings.admin_host}:{settings.admin_port}",
            settings.publish_timeout_s,
            settings.max_body_bytes,
        )
        resources.push_async_callback(receipts.close)
        rt.app.add_routes(RECEIPT_ROUTES)
        rt.app.add_routes(admin.routes)
        rt.add_check("database", lambda: ping(pool))
        rt.add_check("broker", lambda: bool(producer.client.cluster.brokers()))
        yield


def main() -> int:
    settings = IngestSettings()
    return runtime.run("ingest", settings, lifespan, client_max_size=settings.max_body_bytes)


if __name__ == "__main__":
    raise SystemExit(main())
