"""The bare ceiling for the pipeline's Kafka hops: three relays that consume and produce, through
the same broker, with the services' consumer and producer settings and no work in between.

producer → bench.relay.0 → relay → .1 → relay → .2 → relay → .3 → end consumer.
Each message carries its send time; the end consumer records the end-to-end latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from deploy.embedded.broker import client_settings
from shared import kafka_clients
from shared.kafka import TopicSpec, ensure_topics

HOPS = 3
TOPICS = [f"bench.relay.{n}" for n in range(HOPS + 1)]
PAD = b"x" * 500  # about the size of an order event


def _consumer(bootstrap: str, topic: str, group: str) -> AIOKafkaConsumer:
    # a group member configured as the services' are; it commits after relaying, as they do
    return kafka_clients.group_consumer(
        client_settings(bootstrap), topic, group_id=group, auto_offset_reset="latest"
    )


async def _relay(consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, out: str) -> None:
    while True:
        batch = await consumer.getmany(timeout_ms=200)
        sends = [
            await producer.send(out, record.value, key=record.key)
            for records in batch.values()
            for record in records
        ]
        if sends:
            await asyncio.gather(*sends)  # acks=all for the batch, then commit: at-least-once
            await consumer.commit()


async def measure(bootstrap: str, rate: float, seconds: float) -> list[float]:
    """End-to-end latencies (ms) of messages sent at `rate`/s for `seconds` through 3 relays."""
    await ensure_topics(client_settings(bootstrap), [TopicSpec(t, 4) for t in TOPICS])
    producer = kafka_clients.producer(client_settings(bootstrap))
    consumers = [_consumer(bootstrap, TOPICS[n], f"bench-relay-{n}") for n in range(HOPS)]
    end = _consumer(bootstrap, TOPICS[-1], "bench-relay-end")
    latencies: list[float] = []
    arrived = asyncio.Event()
    count = int(rate * seconds)
    await producer.start()
    tasks: list[asyncio.Task[None]] = []
    try:
        for c in [*consumers, end]:
            await c.start()
        # wait until every consumer owns its partitions, or early messages are skipped
        for c in [*consumers, end]:
            while not c.assignment():
                await c.getmany(timeout_ms=100)
        tasks = [
            asyncio.create_task(_relay(c, producer, TOPICS[n + 1])) for n, c in enumerate(consumers)
        ]

        async def follow() -> None:
            while True:
                batch = await end.getmany(timeout_ms=200)
                now = time.time()
                for records in batch.values():
                    for record in records:
                        (sent,) = struct.unpack_from("!d", record.value)
                        latencies.append((now - sent) * 1000)
                if len(latencies) >= count:
                    arrived.set()

        tasks.append(asyncio.create_task(follow()))
        start = time.perf_counter()
        for n in range(count):
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await producer.send(TOPICS[0], struct.pack("!d", time.time()) + PAD, key=b"%d" % n)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(arrived.wait(), 30)
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for c in [*consumers, end]:
            await c.stop()
        await producer.stop()
    return latencies
