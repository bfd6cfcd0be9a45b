"""Fetch pacing on the embedded broker (ADR 0003): an idle consumer sends fetches that do not
wait, each empty one followed by a pause in the client, so it fetches a few times a second; the
first record after the quiet spell brings the short wait back. Without an idle wait (Apache
Kafka) nothing changes."""

import asyncio
import functools
import uuid
from typing import Any

import pytest
from aiokafka.protocol.fetch import FetchRequest

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


async def started(
    kafka: str, idle_wait_ms: int, grouped: bool = True
) -> kafka_clients.PacedConsumer:
    topic = f"pacing-{uuid.uuid4().hex[:8]}"
    settings = client_settings(kafka).model_copy(update={"kafka_idle_fetch_wait_ms": idle_wait_ms})
    await ensure_topics(settings, [TopicSpec(topic, 2)])
    consumer = (
        kafka_clients.group_consumer(settings, topic, group_id=f"g-{topic}")
        if grouped
        else kafka_clients.reader(settings, topic, fetch_max_wait_ms=10)
    )
    assert isinstance(consumer, kafka_clients.PacedConsumer)
    await consumer.start()
    return consumer


def count_fetches(consumer: kafka_clients.PacedConsumer) -> list[int]:
    """A one-element list counting the fetch requests the consumer sends from now on."""
    sent = [0]
    send = consumer._client.send

    async def counted(node_id: int, request: Any, **kwargs: Any) -> Any:
        if isinstance(request, FetchRequest):  # a class per protocol version, one base
            sent[0] += 1
        return await send(node_id, request, **kwargs)

    consumer._client.send = counted  # type: ignore[method-assign]
    return sent


async def stay_quiet(consumer: kafka_clients.PacedConsumer, seconds: float) -> None:
    until = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < until:
        assert not await consumer.getmany(timeout_ms=200)


@pytest.mark.parametrize("grouped", [True, False], ids=["group consumer", "group-less reader"])
async def test_an_idle_consumer_backs_off_and_the_first_record_brings_short_waits_back(
    kafka: str, grouped: bool
) -> None:
    consumer = await started(kafka, idle_wait_ms=150, grouped=grouped)
    producer = kafka_clients.producer(client_settings(kafka))
    await producer.start()
    try:
        topic = next(iter(consumer.subscription()))
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=100)
        await stay_quiet(consumer, 2 * consumer.IDLE_AFTER_S)
        assert consumer.idle
        assert fetch_wait_ms(consumer) == 1  # the broker holds no fetch open: the client pauses

        await producer.send_and_wait(topic, b"first after the quiet spell", key=b"k")
        records = await records_within(consumer, 10)
        assert [r.value for r in records] == [b"first after the quiet spell"]
        assert not consumer.idle
        assert fetch_wait_ms(consumer) == consumer.busy_wait_ms == 10
    finally:
        await producer.stop()
        await consumer.stop()


async def test_an_idle_consumer_pauses_between_fetches_and_an_unpaced_one_does_not(
    kafka: str,
) -> None:
    # the same quiet topic, the same 10 ms wait: only the pause tells the two apart
    paced = await started(kafka, idle_wait_ms=250)
    unpaced = await started(kafka, idle_wait_ms=0)
    try:
        for consumer in (paced, unpaced):
            while not consumer.assignment():
                await consumer.getmany(timeout_ms=100)
        await stay_quiet(paced, 2 * paced.IDLE_AFTER_S)
        assert paced.idle
        paced_fetches, unpaced_fetches = count_fetches(paced), count_fetches(unpaced)
        await asyncio.gather(stay_quiet(paced, 2), stay_quiet(unpaced, 2))
        # at most one fetch per 250 ms pause against one per 10 ms wait: a tenth would do
        assert 0 < paced_fetches[0] < unpaced_fetches[0] / 3
    finally:
        await paced.stop()
        await unpaced.stop()


async def test_without_an_idle_wait_the_fetch_wait_never_changes(kafka: str) -> None:
    # a broker that long-polls (Apache Kafka): the configured wait is already cheap when idle
    consumer = await started(kafka, idle_wait_ms=0)
    try:
        assert not consumer.paced
        await stay_quiet(consumer, 2 * consumer.IDLE_AFTER_S)
        assert not consumer.idle
        assert fetch_wait_ms(consumer) == 10
        # the fetcher sends aiokafka's own fetches, with no pause added
        assert not isinstance(consumer._fetcher._proc_fetch_request, functools.partial)
    finally:
        await consumer.stop()
