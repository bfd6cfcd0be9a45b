"""Fetch pacing on the embedded broker (ADR 0003): an idle group consumer fetches with the long
wait, and the first record after the quiet spell brings the short wait back."""

import asyncio
import uuid

import pytest

from deploy.embedded.broker import client_settings
from shared import kafka_clients
from shared.kafka import TopicSpec, ensure_topics

pytestmark = pytest.mark.integration


def fetch_wait_ms(consumer: kafka_clients.PacedConsumer) -> int:
    wait: int = consumer._fetcher._fetch_max_wait_ms  # what the next fetch request carries
    return wait


async def records_within(consumer: kafka_clients.PacedConsumer, limit_s: float) -> list:
    found: list = []
    async with asyncio.timeout(limit_s):
        while not found:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                found.extend(records)
    return found


async def started(kafka: str, idle_wait_ms: int) -> kafka_clients.PacedConsumer:
    topic = f"pacing-{uuid.uuid4().hex[:8]}"
    settings = client_settings(kafka).model_copy(update={"kafka_idle_fetch_wait_ms": idle_wait_ms})
    await ensure_topics(settings, [TopicSpec(topic, 2)])
    consumer = kafka_clients.group_consumer(settings, topic, group_id=f"g-{topic}")
    assert isinstance(consumer, kafka_clients.PacedConsumer)
    await consumer.start()
    return consumer


async def test_an_idle_consumer_backs_off_and_the_first_record_brings_short_waits_back(
    kafka: str,
) -> None:
    consumer = await started(kafka, idle_wait_ms=150)
    producer = kafka_clients.producer(client_settings(kafka))
    await producer.start()
    try:
        topic = next(iter(consumer.subscription()))
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=100)
        quiet_until = asyncio.get_running_loop().time() + 2 * consumer.IDLE_AFTER_S
        while asyncio.get_running_loop().time() < quiet_until:
            assert not await consumer.getmany(timeout_ms=200)
        assert fetch_wait_ms(consumer) == 150

        await producer.send_and_wait(topic, b"first after the quiet spell", key=b"k")
        records = await records_within(consumer, 10)
        assert [r.value for r in records] == [b"first after the quiet spell"]
        assert fetch_wait_ms(consumer) == consumer.busy_wait_ms == 10
    finally:
        await producer.stop()
        await consumer.stop()


async def test_without_an_idle_wait_the_fetch_wait_never_changes(kafka: str) -> None:
    # a broker that long-polls (Apache Kafka): the configured wait is already cheap when idle
    consumer = await started(kafka, idle_wait_ms=0)
    try:
        quiet_until = asyncio.get_running_loop().time() + 2 * consumer.IDLE_AFTER_S
        while asyncio.get_running_loop().time() < quiet_until:
            await consumer.getmany(timeout_ms=200)
        assert fetch_wait_ms(consumer) == 10
    finally:
        await consumer.stop()
