"""The allocator's inventory-level reporter on a real PostgreSQL and broker: levels are
coalesced, but a stock that runs short is reported at once, since a buyer waits for the
restocker to hear of it."""

import asyncio
import time
import uuid

import pytest
from aiokafka import TopicPartition

from deploy.embedded.broker import client_settings
from services.allocator import handlers
from services.allocator.levels import LevelReporter
from services.allocator.main import SQL
from shared import kafka_clients
from shared.db import connect_and_migrate
from shared.events import InventoryLevel, Stock
from shared.kafka import ensure_topics, topic_specs
from shared.settings import ServiceSettings
from tests.integration.test_vault import import_codes, paid

pytestmark = pytest.mark.integration


async def _levels_of(consumer, sku: str, limit_s: float) -> list[InventoryLevel]:
    found: list[InventoryLevel] = []
    deadline = time.monotonic() + limit_s
    while not found and time.monotonic() < deadline:
        for records in (await consumer.getmany(timeout_ms=50)).values():
            levels = [InventoryLevel.model_validate_json(r.value) for r in records]
            found.extend(level for level in levels if level.sku == sku)
    return found


async def test_a_stock_that_runs_short_is_reported_at_once(database, kafka, cipher):
    await ensure_topics(client_settings(kafka), topic_specs(partitions=2))
    pool = await connect_and_migrate(database, "allocator", SQL, max_size=4)
    producer = kafka_clients.producer(ServiceSettings(kafka_bootstrap=kafka))
    reader = kafka_clients.reader(client_settings(kafka))
    await producer.start()
    await reader.start()
    sku = f"SKU-{uuid.uuid4().hex[:6]}"
    # a long interval: only the short stock's wake-up can report within the test's wait
    reporter = LevelReporter(pool, producer, interval_s=60, refresh_s=3600)
    tps = [TopicPartition(InventoryLevel.topic, p) for p in range(2)]
    reader.assign(tps)
    await reader.seek_to_end(*tps)
    for tp in tps:
        await reader.position(tp)
    await import_codes(pool, cipher, sku, ["ONE-CODE"])
    running = asyncio.create_task(reporter.run())
    try:
        # the reporter's first round reports every stock; after it, only the interval or a
        # short stock makes it report again
        [first] = await _levels_of(reader, sku, 20.0)
        assert first.available == 1

        async with pool.acquire() as conn, conn.transaction():
            served = await handlers.allocate([paid("o-1", (sku, 1))], conn)
        reporter.record(served.touched, served.sold, served.short)
        assert served.short == set()
        # a stock that merely moved waits for the interval
        assert await _levels_of(reader, sku, 1.0) == []

        async with pool.acquire() as conn, conn.transaction():
            short = await handlers.allocate([paid("o-2", (sku, 2))], conn)
        assert short.short == {Stock("s1", sku)}
        reporter.record(short.touched, short.sold, short.short)
        [level] = await _levels_of(reader, sku, 2.0)
        assert (level.available, level.backordered) == (0, 2)
        assert level.sold_since_last == 1  # the coalesced sale of the first order rides along
    finally:
        reporter.stop()
        await running
        await reader.stop()
        await producer.stop()
        await pool.close()
