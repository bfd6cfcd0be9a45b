"""The ingest gateway: store webhooks in, `order.paid` / `order.cancelled` out."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from services.ingest.settings import IngestSettings
from services.ingest.stores import StoreRegistry
from services.ingest.views import PRODUCER, REGISTRY, SETTINGS, standard_webhook
from shared import runtime
from shared.db import connect_and_migrate, ping
from shared.events import StoreConfig, event_id_for
from shared.kafka import make_producer, publish

SQL = Path(__file__).parent / "sql"


@contextlib.asynccontextmanager
async def lifespan(rt: runtime.Runtime) -> AsyncIterator[None]:
    settings = rt.settings
    assert isinstance(settings, IngestSettings)
    pool = await connect_and_migrate(
        settings.database_url, "ingest", SQL, max_size=settings.db_pool_max
    )
    producer = make_producer(settings)
    await producer.start()
    try:
        registry = StoreRegistry(pool, settings.store_cache_ttl_s)
        await publish(producer, [_store_config(s) for s in await registry.all()], "ingest")
        rt.app[REGISTRY] = registry
        rt.app[PRODUCER] = producer
        rt.app[SETTINGS] = settings
        rt.app.router.add_post("/webhooks/standard/{store_id}", standard_webhook)
        rt.add_check("database", lambda: ping(pool))
        rt.add_check("broker", lambda: bool(producer.client.cluster.brokers()))
        yield
    finally:
        await producer.stop()
        await pool.close()


def _store_config(store) -> StoreConfig:
    return StoreConfig(
        event_id=event_id_for("store.config", store.store_id, store.name, store.channels),
        store_id=store.store_id,
        platform=store.platform,
        name=store.name,
        locale=store.locale,
        channels=list(store.channels),
    )


def main() -> int:
    settings = IngestSettings()
    return runtime.run("ingest", settings, lifespan, client_max_size=settings.max_body_bytes)


if __name__ == "__main__":
    raise SystemExit(main())
