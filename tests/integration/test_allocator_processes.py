"""Allocators as separate processes in one consumer group, on a real database and broker:
racing each other, and one of them killed mid-surge."""

import asyncio
import random
import signal
import sys
from collections import defaultdict

import asyncpg
import pytest

from deploy.embedded.broker import EmbeddedBroker, client_settings
from deploy.embedded.processes import ManagedProcess, free_port
from services.allocator.main import SQL
from shared import kafka_clients
from shared.db import connect_and_migrate
from shared.events import CodeAllocated, OrderPaid
from shared.kafka import ensure_topics, publish, topic_specs
from shared.settings import ServiceSettings
from tests.conftest import _wait_for_port
from tests.integration.test_vault import import_codes, paid

pytestmark = pytest.mark.integration
SKUS = ("A", "B", "C")


@pytest.fixture
async def broker(tmp_path):
    broker = EmbeddedBroker(free_port(), tmp_path / "broker.log")
    broker.start()
    try:
        await _wait_for_port(broker.port)
        await ensure_topics(client_settings(broker.bootstrap), topic_specs(partitions=4))
        yield broker.bootstrap
    finally:
        broker.stop()


def allocator(n: int, database: str, kafka: str, vault_env: dict, tmp_path) -> ManagedProcess:
    return ManagedProcess(
        f"allocator-{n}",
        [sys.executable, "-m", "services.allocator.main"],
        log_path=tmp_path / f"allocator-{n}.log",
        env={
            "TASLEEM_DATABASE_URL": database,
            "TASLEEM_KAFKA_BOOTSTRAP": kafka,
            "TASLEEM_ADMIN_PORT": str(free_port()),
            "TASLEEM_KAFKA_MAX_BATCH": "100",
            **vault_env,
        },
    )


def surge(count: int, seed: int) -> list[OrderPaid]:
    rng = random.Random(seed)
    return [
        paid(
            f"o{i}", *[(sku, rng.choice((1, 1, 2))) for sku in rng.sample(SKUS, rng.choice((1, 2)))]
        )
        for i in range(count)
    ]


async def wait_until_allocated(pool: asyncpg.Pool, orders: int, procs, limit_s: float = 120):
    async with asyncio.timeout(limit_s):
        while True:
            done = await pool.fetchval("SELECT count(*) FROM orders")
            left = await pool.fetchval("SELECT count(*) FROM outbox")
            if done >= orders and left == 0:
                return
            for p in procs:
                assert p.running() or p.proc.returncode is not None, p.tail()
            await asyncio.sleep(0.25)


async def allocations(kafka: str) -> list[CodeAllocated]:
    consumer = kafka_clients.reader(client_settings(kafka), CodeAllocated.topic)
    await consumer.start()
    found = []
    try:
        while batch := await consumer.getmany(timeout_ms=1500):
            for records in batch.values():
                found.extend(CodeAllocated.model_validate_json(r.value) for r in records)
    finally:
        await consumer.stop()
    return found


async def check_exactly_once(pool: asyncpg.Pool, kafka: str, orders: list[OrderPaid]) -> None:
    """No code twice, no unit twice, every order complete or backordered, and the events on
    `code.allocated` say exactly what the database says."""
    units = await pool.fetch("SELECT order_key, sku, code_id FROM units")
    per_order: dict[str, int] = defaultdict(int)
    for unit in units:
        per_order[unit["order_key"]] += 1
    assert per_order == {o.order_key: sum(line.quantity for line in o.lines) for o in orders}
    codes = [u["code_id"] for u in units if u["code_id"] is not None]
    assert len(codes) == len(set(codes)), "a code went to two units"

    events = {e.event_id: e for e in await allocations(kafka)}  # redelivery = same event id
    owner: dict[int, str] = {}
    by_order: dict[str, set[int]] = defaultdict(set)
    for event in events.values():
        for code in event.codes:
            assert owner.setdefault(code.code_id, event.order_key) == event.order_key
            by_order[event.order_key].add(code.code_id)
    in_db: dict[str, set[int]] = defaultdict(set)
    for unit in units:
        if unit["code_id"] is not None:
            in_db[unit["order_key"]].add(unit["code_id"])
    assert by_order == in_db, "code.allocated disagrees with the vault"
    starved = await pool.fetch(
        """
        SELECT DISTINCT u.sku FROM units u
        WHERE u.code_id IS NULL AND EXISTS (
            SELECT 1 FROM codes c WHERE c.sku = u.sku AND c.status = 'available')
        """
    )
    assert not starved, "a unit waits while its sku still has codes"
    parts = defaultdict(set)
    for event in events.values():
        assert event.part not in parts[event.order_key], "two different events for one part"
        parts[event.order_key].add(event.part)


async def test_racing_allocator_processes_never_give_a_code_twice(
    database, broker, cipher, vault_env, tmp_path
):
    pool = await connect_and_migrate(database, "allocator", SQL)
    procs = [allocator(n, database, broker, vault_env, tmp_path) for n in range(3)]
    producer = kafka_clients.producer(ServiceSettings(kafka_bootstrap=broker))
    try:
        for sku in SKUS:
            await import_codes(pool, cipher, sku, [f"{sku}-{i:05d}" for i in range(1100)])
        for p in procs:
            p.start()
        orders = surge(3000, seed=1)  # ~3,700 units of 3,300 codes: some must wait
        await producer.start()
        for start in range(0, len(orders), 500):
            await publish(producer, orders[start : start + 500])
        await wait_until_allocated(pool, len(orders), procs)
        await check_exactly_once(pool, broker, orders)
        assert await pool.fetchval("SELECT count(*) FROM units WHERE code_id IS NULL") > 0
    finally:
        await producer.stop()
        for p in procs:
            p.stop()
        await pool.close()


async def test_an_allocator_killed_mid_surge_loses_and_repeats_nothing(
    database, broker, cipher, vault_env, tmp_path
):
    pool = await connect_and_migrate(database, "allocator", SQL)
    procs = [allocator(n, database, broker, vault_env, tmp_path) for n in range(2)]
    producer = kafka_clients.producer(ServiceSettings(kafka_bootstrap=broker))
    try:
        for sku in SKUS:
            await import_codes(pool, cipher, sku, [f"{sku}-{i:05d}" for i in range(2600)])
        for p in procs:
            p.start()
        orders = surge(3000, seed=2)
        await producer.start()
        await publish(producer, orders[:1000])
        async with asyncio.timeout(60):
            while await pool.fetchval("SELECT count(*) FROM orders") < 300:
                await asyncio.sleep(0.05)
        procs[0].signal(signal.SIGKILL)  # mid-batch, no goodbye
        await publish(producer, orders[1000:])
        procs[0].proc.wait(5)
        procs[0].start()  # restarted, as the supervisor or Kubernetes would
        await wait_until_allocated(pool, len(orders), procs)
        await check_exactly_once(pool, broker, orders)
        assert await pool.fetchval("SELECT count(*) FROM units WHERE code_id IS NULL") == 0
    finally:
        await producer.stop()
        for p in procs:
            p.stop()
        await pool.close()
