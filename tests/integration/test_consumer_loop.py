"""The shared consumer loop on a real broker: dead letters, isolation, retries, commits."""

import asyncio
import json
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest
from aiokafka import TopicPartition

from deploy.embedded.broker import client_settings
from services.restocker.suppliers.base import Reason, SupplierError
from shared import kafka_clients
from shared.db import RETRIABLE_DB_ERRORS
from shared.events import InventoryLevel, dlq_topic
from shared.kafka import (
    ConsumerLoop,
    PermanentError,
    RetriableError,
    TopicSpec,
    ensure_topics,
    send_many,
    topic_specs,
)
from shared.settings import ServiceSettings

pytestmark = pytest.mark.integration
TOPIC = InventoryLevel.topic


def level(sku: str) -> bytes:
    return InventoryLevel(
        event_id=str(uuid.uuid4()), sku=sku, available=1, backordered=0, at=datetime.now(UTC)
    ).to_bytes()


@pytest.fixture
async def producer(kafka: str):
    await ensure_topics(client_settings(kafka), topic_specs(partitions=2))
    producer = kafka_clients.producer(ServiceSettings(kafka_bootstrap=kafka))
    await producer.start()
    yield producer
    await producer.stop()


async def run_until(loop: ConsumerLoop, done, limit_s: float = 20) -> None:
    task = asyncio.create_task(loop.run())
    try:
        async with asyncio.timeout(limit_s):
            while not done():
                await asyncio.sleep(0.05)
    finally:
        loop.stop()
        await task


async def read_all(kafka: str, topic: str, expected: int) -> list:
    consumer = kafka_clients.reader(client_settings(kafka), topic)
    await consumer.start()
    records: list = []
    try:
        async with asyncio.timeout(10):
            while len(records) < expected:
                batch = await consumer.getmany(timeout_ms=200)
                for msgs in batch.values():
                    records.extend(msgs)
    finally:
        await consumer.stop()
    return records


async def test_poison_and_failing_messages_are_dead_lettered_and_the_rest_delivered(
    kafka, producer
):
    group = f"g-{uuid.uuid4().hex[:6]}"
    skus = [f"{group}-{i}" for i in range(6)]
    for sku in skus[:3]:
        await producer.send_and_wait(TOPIC, level(sku), key=sku.encode())
    await producer.send_and_wait(TOPIC, b"not json at all", key=b"poison")
    future = json.loads(level(f"{group}-v2")) | {"schema_version": 2}
    await producer.send_and_wait(TOPIC, json.dumps(future).encode(), key=b"v2")
    await producer.send_and_wait(TOPIC, level(f"{group}-explodes"), key=b"bad")
    await producer.send_and_wait(TOPIC, level(f"{group}-refused"), key=b"refused")
    for sku in skus[3:]:
        await producer.send_and_wait(TOPIC, level(sku), key=sku.encode())

    handled: list[str] = []

    async def handler(batch):
        if any(e.sku.endswith("explodes") for e in batch):
            raise ValueError("this message cannot be handled")
        if any(e.sku.endswith("refused") for e in batch):
            raise PermanentError("sku is not sold by this store")
        handled.extend(e.sku for e in batch if e.sku.startswith(group))

    settings = ServiceSettings(kafka_bootstrap=kafka)
    loop = ConsumerLoop(
        service="test",
        consumer=kafka_clients.group_consumer(settings, TOPIC, group_id=group),
        handlers={TOPIC: handler},
        producer=producer,
    )
    await run_until(loop, lambda: len(handled) >= 6)
    assert sorted(handled) == sorted(skus)

    dead = [
        r
        for r in await read_all(kafka, dlq_topic(TOPIC), 4)
        if r.key in (b"poison", b"bad", b"v2", b"refused")
    ]
    reasons = {r.key: dict(r.headers)["dlq-reason"].decode() for r in dead}
    assert "invalid InventoryLevel" in reasons[b"poison"]
    # a major version this consumer does not read is refused, not guessed at
    assert "schema_version 2" in reasons[b"v2"] and f"{group}-v2" not in handled
    assert "ValueError" in reasons[b"bad"]
    # our own failures are dead-lettered by their code and reason (shared.failures)
    assert reasons[b"refused"] == "permanent: sku is not sold by this store"

    # offsets were committed: a new consumer in the same group gets nothing again
    again: list[str] = []

    async def count(batch):
        again.extend(e.sku for e in batch if e.sku.startswith(group))

    loop = ConsumerLoop(
        service="test",
        consumer=kafka_clients.group_consumer(settings, TOPIC, group_id=group),
        handlers={TOPIC: count},
        producer=producer,
    )
    marker = f"{group}-marker"
    await producer.send_and_wait(TOPIC, level(marker), key=b"m")
    await run_until(loop, lambda: marker in again)
    assert again == [marker]


@pytest.mark.parametrize(
    "restarting",
    [
        RetriableError("database restarting"),
        # any failure of ours whose fate is retry, whatever its class (a busy supplier …)
        SupplierError("supplier: order: rate limited", Reason.RATE_LIMITED, True),
        # what asyncpg raises on a connection PostgreSQL cut mid-statement (chaos `postgres`)
        asyncpg.exceptions.InternalClientError(
            "cannot switch to state 12; another operation (2) is in progress"
        ),
        asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"),
        ConnectionRefusedError(111, "Connection refused"),
    ],
    ids=["retriable", "retry-fate", "internal-client-state", "shutting-down", "refused"],
)
async def test_retriable_errors_retry_the_batch_without_losing_it(kafka, producer, restarting):
    group = f"g-{uuid.uuid4().hex[:6]}"
    await producer.send_and_wait(TOPIC, level(f"{group}-x"), key=b"x")
    calls = {"n": 0}
    handled: list[str] = []

    async def flaky(batch):
        mine = [e.sku for e in batch if e.sku.startswith(group)]
        if mine and calls["n"] < 3:
            calls["n"] += 1
            raise restarting
        handled.extend(mine)

    loop = ConsumerLoop(
        service="test",
        consumer=kafka_clients.group_consumer(
            ServiceSettings(kafka_bootstrap=kafka), TOPIC, group_id=group
        ),
        handlers={TOPIC: flaky},
        producer=producer,
        retriable=RETRIABLE_DB_ERRORS,  # as the allocator and notifier wire it
    )
    await run_until(loop, lambda: bool(handled))
    # the whole batch again, never isolated into single messages, never dead-lettered
    assert handled == [f"{group}-x"] and calls["n"] == 3


async def test_stopping_during_an_outage_leaves_the_batch_for_the_next_owner(kafka, producer):
    """A service stopped while its database is away must not dead-letter the paid orders it
    was retrying: they stay uncommitted, and the next member of the group gets them."""
    group = f"g-{uuid.uuid4().hex[:6]}"
    await producer.send_and_wait(TOPIC, level(f"{group}-x"), key=b"x")
    tried = asyncio.Event()

    async def database_away(batch):
        if any(e.sku.startswith(group) for e in batch):
            tried.set()
            raise RetriableError("database restarting")

    settings = ServiceSettings(kafka_bootstrap=kafka)
    loop = ConsumerLoop(
        service="test",
        consumer=kafka_clients.group_consumer(settings, TOPIC, group_id=group),
        handlers={TOPIC: database_away},
        producer=producer,
    )
    running = asyncio.create_task(loop.run())
    async with asyncio.timeout(20):
        await tried.wait()
    loop.stop()
    async with asyncio.timeout(20):
        await running  # stops cleanly, without raising

    handled: list[str] = []

    async def database_back(batch):
        handled.extend(e.sku for e in batch if e.sku.startswith(group))

    again = ConsumerLoop(
        service="test",
        consumer=kafka_clients.group_consumer(settings, TOPIC, group_id=group),
        handlers={TOPIC: database_back},
        producer=producer,
    )
    await run_until(again, lambda: bool(handled))
    assert handled == [f"{group}-x"]
    dead = await _dead_letters_with_key(kafka, b"x", group)
    assert dead == []


async def _dead_letters_with_key(kafka: str, key: bytes, group: str) -> list:
    consumer = kafka_clients.reader(client_settings(kafka), dlq_topic(TOPIC))
    await consumer.start()
    found: list = []
    try:
        for _ in range(5):
            for records in (await consumer.getmany(timeout_ms=200)).values():
                found.extend(r for r in records if r.key == key and group.encode() in r.value)
    finally:
        await consumer.stop()
    return found


async def test_send_many_splits_batches_and_partitions_like_send(kafka):
    """Thousands of records through whole batches land where `send` would put them, each
    exactly once, in order within a key's partition."""
    run = uuid.uuid4().hex[:6]
    batched, single = f"many-{run}", f"single-{run}"
    await ensure_topics(client_settings(kafka), [TopicSpec(batched, 3), TopicSpec(single, 3)])
    keys = [f"{run}:{i % 300}".encode() for i in range(1500)]
    values = [f"{run}:{i}".encode() * 20 for i in range(1500)]  # ~200 kB: several batches
    producer = kafka_clients.producer(
        ServiceSettings(kafka_bootstrap=kafka), max_batch_size=16 * 1024
    )
    await producer.start()
    try:
        await send_many(producer, [(batched, k, v) for k, v in zip(keys, values, strict=True)])
        for key in set(keys):
            await producer.send(single, b"reference", key=key)
        await producer.flush()
    finally:
        await producer.stop()
    many = await read_all(kafka, batched, 1500)
    one_by_one = {r.key: r.partition for r in await read_all(kafka, single, 300)}
    assert len(set(one_by_one.values())) == 3
    assert sorted(r.value for r in many) == sorted(values)
    assert {r.key: r.partition for r in many} == one_by_one
    for key in set(keys):
        sent = [v for k, v in zip(keys, values, strict=True) if k == key]
        assert [r.value for r in many if r.key == key] == sent


def one_per_batch(kafka: str, group: str):
    """A group consumer that takes one record per batch, so each record is its own batch."""
    return kafka_clients.group_consumer(
        ServiceSettings(kafka_bootstrap=kafka), TOPIC, group_id=group, max_poll_records=1
    )


async def test_overlapping_batches_commit_only_past_what_every_earlier_batch_handled(
    kafka, producer
):
    """With overlap, a later batch is handled while an earlier one still waits, but the
    partition's offset never moves past the waiting one until it finishes: at-least-once."""
    group = f"g-{uuid.uuid4().hex[:6]}"
    slow, fast = f"{group}-slow", f"{group}-fast"
    # one key: one partition, the slow record first
    first = await producer.send_and_wait(TOPIC, level(slow), key=group.encode())
    second = await producer.send_and_wait(TOPIC, level(fast), key=group.encode())
    tp = TopicPartition(TOPIC, first.partition)
    release, handled = asyncio.Event(), []

    async def handler(batch):
        mine = [e.sku for e in batch if e.sku.startswith(group)]
        if slow in mine:
            await release.wait()
        handled.extend(mine)

    loop = ConsumerLoop(
        service="test",
        consumer=one_per_batch(kafka, group),
        handlers={TOPIC: handler},
        producer=producer,
        overlap=2,
    )
    task = asyncio.create_task(loop.run())
    try:
        async with asyncio.timeout(20):
            while fast not in handled:
                await asyncio.sleep(0.05)
            # the later batch went through while the earlier one waits: nothing past it is
            # committed (a crash now gets the slow record again)
            await asyncio.sleep(0.5)  # time for a wrong commit to land, were one made
            committed = await loop.consumer.committed(tp)
            assert committed is None or committed <= first.offset
            release.set()
            while await loop.consumer.committed(tp) != second.offset + 1:
                await asyncio.sleep(0.05)
    finally:
        release.set()
        loop.stop()
        await task
    assert handled == [fast, slow]


async def test_a_barrier_batch_is_handled_before_any_later_batch_starts(kafka, producer):
    """The notifier's revocations: a batch of a barrier topic takes effect before the next
    batch is taken, however many batches may overlap."""
    group = f"g-{uuid.uuid4().hex[:6]}"
    first, later = f"{group}-revocation", f"{group}-allocation"
    await producer.send_and_wait(TOPIC, level(first), key=group.encode())
    await producer.send_and_wait(TOPIC, level(later), key=group.encode())
    steps: list[str] = []

    async def handler(batch):
        for sku in (e.sku for e in batch if e.sku.startswith(group)):
            steps.append(f"start {sku}")
            if sku == first:
                await asyncio.sleep(0.5)  # the later batch's chance to jump ahead, were it let
            steps.append(f"end {sku}")

    loop = ConsumerLoop(
        service="test",
        consumer=one_per_batch(kafka, group),
        handlers={TOPIC: handler},
        producer=producer,
        overlap=4,
        barriers=[TOPIC],
    )
    await run_until(loop, lambda: f"end {later}" in steps)
    assert steps == [f"start {first}", f"end {first}", f"start {later}", f"end {later}"]
