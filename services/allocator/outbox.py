"""Transactional outbox: events are written with the allocation and relayed after commit.

The allocating process relays its own rows right after commit (the fast path); a sweeper
relays rows a crashed process left behind. A row relayed twice is harmless: every event id
is deterministic and every consumer dedupes on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
from aiokafka import AIOKafkaProducer

from shared import metrics
from shared.db import DbConn
from shared.events import Event

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutboxRow:
    id: int
    topic: str
    key: bytes
    payload: bytes


async def write(conn: DbConn, events: Sequence[Event]) -> list[OutboxRow]:
    """Add events to the outbox inside the caller's transaction."""
    if not events:
        return []
    topics = [e.topic for e in events]
    keys = [e.kafka_key() for e in events]
    payloads = [e.to_bytes() for e in events]
    ids = await conn.fetch(
        """
        INSERT INTO outbox (topic, key, payload)
        SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[])
        RETURNING id
        """,
        topics,
        keys,
        payloads,
    )
    return [
        OutboxRow(r["id"], t, k, p) for r, t, k, p in zip(ids, topics, keys, payloads, strict=True)
    ]


class Relay:
    """Publishes outbox rows and deletes them once the broker has acknowledged them."""

    def __init__(self, pool: asyncpg.Pool, producer: AIOKafkaProducer, service: str = "allocator"):
        self.pool = pool
        self.producer = producer
        self.service = service
        self._stopping = asyncio.Event()

    async def publish(self, rows: Sequence[OutboxRow]) -> None:
        if not rows:
            return
        futures = [await self.producer.send(r.topic, r.payload, key=r.key) for r in rows]
        await asyncio.gather(*futures)
        for r in rows:
            metrics.EVENTS_PUBLISHED.labels(self.service, r.topic).inc()
        await self.pool.execute(
            "DELETE FROM outbox WHERE id = ANY($1::bigint[])", [r.id for r in rows]
        )

    async def sweep_once(self, min_age_s: float, limit: int = 1000) -> int:
        """Relay rows older than `min_age_s` that nobody relayed (their writer died)."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """
                SELECT id, topic, key, payload FROM outbox
                WHERE created_at < now() - make_interval(secs => $1)
                ORDER BY id LIMIT $2
                FOR UPDATE SKIP LOCKED
                """,
                min_age_s,
                limit,
            )
            if not rows:
                return 0
            futures = [
                await self.producer.send(r["topic"], r["payload"], key=r["key"]) for r in rows
            ]
            await asyncio.gather(*futures)
            await conn.execute(
                "DELETE FROM outbox WHERE id = ANY($1::bigint[])", [r["id"] for r in rows]
            )
        log.info("relayed %d outbox rows left behind", len(rows))
        return len(rows)

    async def run_sweeper(self, interval_s: float = 0.5, min_age_s: float = 2.0) -> None:
        while not self._stopping.is_set():
            try:
                while await self.sweep_once(min_age_s):
                    pass
            except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
                log.warning("outbox sweep failed, will retry: %r", exc)
            except Exception as exc:  # a broker error must not kill the sweeper
                log.warning("outbox sweep failed, will retry: %r", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval_s)

    def stop(self) -> None:
        self._stopping.set()
