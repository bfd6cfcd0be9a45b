"""Transactional outbox: events are written with the allocation and relayed after commit.

A transaction writes all its events as one row (three parallel arrays): a batch of 2,000
allocations costs one insert and, once relayed, one delete, instead of 2,000 of each
(measured on a 2,000-order batch: 15–18 ms → 11 ms for the insert alone).

The allocating process hands its rows to the `Relay` right after commit and moves on to the
next batch while they are published (the fast path); a sweeper relays rows a crashed process
left behind. A row relayed twice is harmless: every event id is deterministic and every
consumer dedupes on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import asyncpg
from aiokafka import AIOKafkaProducer

from shared import metrics
from shared.db import DbConn
from shared.events import Event
from shared.kafka import send_many

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Message:
    """One Kafka record to be: topic, key and the event's bytes."""

    topic: str
    key: bytes
    payload: bytes

    @classmethod
    def of(cls, event: Event) -> Message:
        return cls(event.topic, event.kafka_key(), event.to_bytes())


@dataclass(frozen=True)
class OutboxRow:
    """The events one transaction wrote, in the order it wrote them."""

    id: int
    messages: Sequence[Message]


async def write(conn: DbConn, events: Iterable[Event | Message]) -> list[OutboxRow]:
    """Add events to the outbox inside the caller's transaction, as one row."""
    messages = [e if isinstance(e, Message) else Message.of(e) for e in events]
    if not messages:
        return []
    row_id = await conn.fetchval(
        "INSERT INTO outbox (topics, keys, payloads) VALUES ($1, $2, $3) RETURNING id",
        [m.topic for m in messages],
        [m.key for m in messages],
        [m.payload for m in messages],
    )
    return [OutboxRow(row_id, messages)]


def _messages(record: asyncpg.Record) -> list[Message]:
    return [
        Message(t, k, p)
        for t, k, p in zip(record["topics"], record["keys"], record["payloads"], strict=True)
    ]


class Relay:
    """Publishes outbox rows and deletes them once the broker has acknowledged them.

    `submit` queues committed rows for the relay worker (`run`) and returns at once, so the
    consumer's next transaction overlaps this one's publishing; the queue is bounded, so a
    slow broker slows intake instead of filling memory. `publish` sends and waits."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        service: str = "allocator",
        max_queued: int = 4,
    ):
        self.pool = pool
        self.producer = producer
        self.service = service
        self._queue: asyncio.Queue[OutboxRow] = asyncio.Queue(max_queued)
        self._stopping = asyncio.Event()

    async def submit(self, rows: Sequence[OutboxRow]) -> None:
        for row in rows:
            await self._queue.put(row)

    async def run(self) -> None:
        """The relay worker: publishes submitted rows in the order they were committed."""
        while not (self._stopping.is_set() and self._queue.empty()):
            try:
                first = await asyncio.wait_for(self._queue.get(), 0.2)
            except TimeoutError:
                continue
            await self._publish_queued(first)

    async def drain(self) -> None:
        """Publish what is still queued (at shutdown, after the consumer stopped)."""
        while not self._queue.empty():
            await self._publish_queued(self._queue.get_nowait())

    async def _publish_queued(self, first: OutboxRow) -> None:
        rows = [first]
        while not self._queue.empty():
            rows.append(self._queue.get_nowait())
        try:
            await self.publish(rows)
        except Exception as exc:  # the rows stay in the outbox: the sweeper relays them
            log.warning(
                "relaying %d outbox rows failed, the sweeper will retry: %r", len(rows), exc
            )

    async def publish(self, rows: Sequence[OutboxRow]) -> None:
        if not rows:
            return
        await self._send([m for row in rows for m in row.messages])
        await self.pool.execute(
            "DELETE FROM outbox WHERE id = ANY($1::bigint[])", [r.id for r in rows]
        )

    async def _send(self, messages: Sequence[Message]) -> None:
        await send_many(self.producer, [(m.topic, m.key, m.payload) for m in messages])
        for topic, n in Counter(m.topic for m in messages).items():
            metrics.EVENTS_PUBLISHED.labels(self.service, topic).inc(n)

    async def sweep_once(self, min_age_s: float, limit: int = 10) -> int:
        """Relay rows older than `min_age_s` that nobody relayed (their writer died); returns
        how many events went out."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """
                SELECT id, topics, keys, payloads FROM outbox
                WHERE created_at < now() - make_interval(secs => $1)
                ORDER BY id LIMIT $2
                FOR UPDATE SKIP LOCKED
                """,
                min_age_s,
                limit,
            )
            if not rows:
                return 0
            messages = [m for row in rows for m in _messages(row)]
            await self._send(messages)
            await conn.execute(
                "DELETE FROM outbox WHERE id = ANY($1::bigint[])", [r["id"] for r in rows]
            )
        log.info("relayed %d events left behind in the outbox", len(messages))
        return len(messages)

    async def run_sweeper(self, interval_s: float = 0.5, min_age_s: float = 2.0) -> None:
        while not self._stopping.is_set():
            try:
                while await self.sweep_once(min_age_s):
                    pass
            except Exception as exc:  # a broker or database error must not kill the sweeper
                log.warning("outbox sweep failed, will retry: %r", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval_s)

    def stop(self) -> None:
        self._stopping.set()
