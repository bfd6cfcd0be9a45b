"""A crash between the allocation commit and the publish loses nothing: the sweeper relays it."""

import asyncio

import asyncpg
import pytest

from deploy.embedded.broker import client_settings
from services.allocator import handlers
from services.allocator.main import SQL
from services.allocator.outbox import Relay
from shared import kafka_clients
from shared.db import connect_and_migrate, migrate
from shared.events import CodeAllocated, CodeRevoked
from shared.kafka import ensure_topics, topic_specs
from shared.settings import ServiceSettings
from tests.integration.test_consumer_loop import read_all
from tests.integration.test_vault import import_codes, paid

pytestmark = pytest.mark.integration


async def test_rows_left_by_a_dead_writer_are_relayed_once(database, kafka, cipher):
    await ensure_topics(client_settings(kafka), topic_specs(partitions=2))
    pool = await connect_and_migrate(database, "allocator", SQL)
    producer = kafka_clients.producer(ServiceSettings(kafka_bootstrap=kafka))
    await producer.start()
    try:
        await import_codes(pool, cipher, "A", ["A-1", "A-2"])
        order = paid("outbox-1", ("A", 1))
        async with pool.acquire() as conn, conn.transaction():
            rows = (await handlers.allocate([order], conn)).rows
        assert rows  # committed, and then the writer "died" before publishing

        relay = Relay(pool, producer)
        assert await relay.sweep_once(min_age_s=60) == 0  # too young: its writer may be alive
        relayed = await relay.sweep_once(min_age_s=0)
        assert relayed >= len(rows)
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
        assert await relay.sweep_once(min_age_s=0) == 0
    finally:
        await producer.stop()
        await pool.close()
    records = await read_all(kafka, CodeAllocated.topic, 1)
    events = [CodeAllocated.model_validate_json(r.value) for r in records]
    assert [e.order_key for e in events if e.order_key == order.order_key] == [order.order_key]


async def test_rows_written_before_the_batched_outbox_are_still_relayed(database, kafka, tmp_path):
    """Upgrading with events still in the old one-row-per-event outbox loses none of them."""
    await ensure_topics(client_settings(kafka), topic_specs(partitions=2))
    before = tmp_path / "sql"
    before.mkdir()
    for path in sorted(SQL.glob("00[123]_*.sql")):
        (before / path.name).write_text(path.read_text())
    events = [
        CodeRevoked(
            event_id=f"upgrade-{i}", order_key=f"standard:s1:u{i}", code_ids=[i], reason="x"
        )
        for i in range(3)
    ]
    conn = await asyncpg.connect(database)
    try:
        await migrate(conn, "allocator", before)
        await conn.executemany(
            "INSERT INTO allocator.outbox (topic, key, payload) VALUES ($1, $2, $3)",
            [(e.topic, e.kafka_key(), e.to_bytes()) for e in events],
        )
        assert (await migrate(conn, "allocator", SQL))[:1] == [4]  # and any later ones
    finally:
        await conn.close()
    pool = await connect_and_migrate(database, "allocator", SQL)
    producer = kafka_clients.producer(ServiceSettings(kafka_bootstrap=kafka))
    await producer.start()
    try:
        assert await Relay(pool, producer).sweep_once(min_age_s=0) == 3
    finally:
        await producer.stop()
        await pool.close()
    records = await read_all(kafka, CodeRevoked.topic, 3)
    relayed = [CodeRevoked.model_validate_json(r.value) for r in records]
    assert sorted(e.event_id for e in relayed if e.event_id.startswith("upgrade-")) == [
        e.event_id for e in events
    ]


async def test_the_relay_publishes_in_the_background_and_leaves_failures_to_the_sweeper(
    database, kafka, cipher
):
    await ensure_topics(client_settings(kafka), topic_specs(partitions=2))
    pool = await connect_and_migrate(database, "allocator", SQL)
    closed = kafka_clients.producer(ServiceSettings(kafka_bootstrap=kafka))
    await closed.start()
    await closed.stop()  # sending through it fails at once
    producer = kafka_clients.producer(ServiceSettings(kafka_bootstrap=kafka))
    await producer.start()
    try:
        await import_codes(pool, cipher, "A", ["A-1", "A-2", "A-3"])
        orders = [paid("relay-1", ("A", 1)), paid("relay-2", ("A", 1))]

        async def allocated(order):
            async with pool.acquire() as conn, conn.transaction():
                return (await handlers.allocate([order], conn)).rows

        relay = Relay(pool, producer)
        await relay.sweep_once(min_age_s=0)  # the import's stock levels
        worker = asyncio.create_task(relay.run())
        await relay.submit(await allocated(orders[0]))
        relay.stop()
        await asyncio.wait_for(worker, 5)  # stopping finishes what was submitted
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 0

        failing = Relay(pool, closed)
        await failing.submit(await allocated(orders[1]))
        await failing.drain()  # logs the failure; the row stays for the sweeper
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 1
        assert await relay.sweep_once(min_age_s=0) == 1
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
    finally:
        await producer.stop()
        await pool.close()
    mine = {o.order_key.encode() for o in orders}
    seen: list[bytes] = []
    consumer = kafka_clients.reader(client_settings(kafka), CodeAllocated.topic)
    await consumer.start()
    try:
        async with asyncio.timeout(10):
            while set(seen) != mine:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    seen.extend(r.key for r in records if r.key in mine)
    finally:
        await consumer.stop()
    assert sorted(seen) == sorted(mine)  # each exactly once so far
