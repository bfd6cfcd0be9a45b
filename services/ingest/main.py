"""The ingest gateway: store webhooks in, `order.paid` / `order.cancelled` out."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaProducer

from services.ingest import admin, metrics, store_changes
from services.ingest.openapi import openapi
from services.ingest.settings import IngestSettings
from services.ingest.stores import StoreRegistry
from services.ingest.views import PRODUCER, REGISTRY, SETTINGS, webhook
from shared import kafka_clients, runtime
from shared.admin_auth import admin_guard
from shared.db import connect_and_migrate, ping
from shared.kafka import publish

SQL = Path(__file__).parent / "sql"


@dataclass(frozen=True)
class KafkaClients(kafka_clients.ClientSet):
    """Every Kafka client the gateway makes, built (not started) in one place."""

    producer: AIOKafkaProducer  # orders and store settings


def kafka(settings: IngestSettings) -> KafkaClients:
    return KafkaClients(producer=kafka_clients.producer(settings))


@contextlib.asynccontextmanager
async def lifespan(rt: runtime.Runtime) -> AsyncIterator[None]:
    settings = rt.settings
    assert isinstance(settings, IngestSettings)
    metrics.init_series()
    pool = await connect_and_migrate(
        settings.database_url, "ingest", SQL, max_size=settings.db_pool_max
    )
    clients = kafka(settings)
    producer = clients.producer
    try:
        await producer.start()
        registry = StoreRegistry(pool, settings.store_cache_ttl_s)
        stores = await registry.all()
        await publish(producer, [store_changes.config_event(s) for s in stores], "ingest")
        rt.app[REGISTRY] = registry
        rt.app[PRODUCER] = producer
        rt.app[SETTINGS] = settings
        rt.app.middlewares.append(admin_guard(settings.ingest_admin_token.get_secret_value()))
        rt.app.router.add_post("/webhooks/{platform}/{store_id}", webhook)
        rt.app.router.add_get("/openapi.json", openapi)
        rt.app.add_routes(admin.routes)
        rt.add_check("database", lambda: ping(pool))
        rt.add_check("broker", lambda: bool(producer.client.cluster.brokers()))
        yield
    finally:
        await clients.close()
        await pool.close()


def main() -> int:
    settings = IngestSettings()
    return runtime.run("ingest", settings, lifespan, client_max_size=settings.max_body_bytes)


if __name__ == "__main__":
    raise SystemExit(main())
