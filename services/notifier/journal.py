"""The delivery journal: deliveries and attempts in PostgreSQL, before and after each call.

Many messages are in flight at once; their journal writes are gathered into one statement per
round trip (`Coalescer`), so recording every attempt costs little at a thousand messages a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

import asyncpg

from shared.db import RETRIABLE_DB_ERRORS

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """Callers submit one item each; a single flush writes every item waiting at the time."""

    def __init__(self, flush: Callable[[list[T]], Awaitable[list[R]]], max_batch: int = 1000):
        self._flush = flush
        self._max = max_batch
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._drain: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._drain is None or self._drain.done():
            self._drain = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        await asyncio.sleep(0)  # let the callers scheduled alongside this one join in
        while self._waiting:
            taken, self._waiting = self._waiting[: self._max], self._waiting[self._max :]
            try:
                results = await self._flush([item for item, _ in taken])
            except Exception as exc:
                for _, future in taken:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(taken, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def close(self) -> None:
        if self._drain is not None:
            with contextlib.suppress(Exception):
                await self._drain


@dataclass(frozen=True)
class Begin:
    allocation_event_id: str
    key: str
    channel: str
    provider: str
    recipient: str
    purpose: str = "delivery"


@dataclass(frozen=True)
class Finish:
    key: str
    status: str  # accepted | failed | unknown
    provider_message_id: str | None
    error: str | None


@dataclass(frozen=True)
class Close:
    allocation_event_id: str
    status: str  # accepted | failed
    channel: str | None
    provider: str | None
    provider_message_id: str | None
    recipient: str
    attempts: int
    reasons: Sequence[str]
    accepted_at: datetime | None
    attempt_key: str | None = None  # the accepted attempt, recorded here rather than by finish


JOURNAL_RETRY: tuple[type[BaseException], ...] = (OSError, *RETRIABLE_DB_ERRORS)


def persistently(
    write: Callable[[list[T]], Awaitable[list[R]]], within_s: float = 120.0
) -> Callable[[list[T]], Awaitable[list[R]]]:
    """Retry a journal write through a database restart.

    What a provider answered has already happened: if recording it failed, the batch would be
    retried and the buyer messaged a second time. So the record is retried instead, for as
    long as a database restart or fail-over reasonably takes. While the server is down a new
    connection is refused (an OSError, not an asyncpg error): that is retried too, or the part
    is left 'sending' and resumed, and WhatsApp's buyer got the message twice."""

    async def retried(items: list[T]) -> list[R]:
        clock = asyncio.get_running_loop().time
        deadline, pause = clock() + within_s, 0.1
        while True:
            try:
                return await write(items)
            except JOURNAL_RETRY as exc:
                if clock() + pause > deadline:
                    raise
                log.warning("journal write failed, retrying in %.1fs: %r", pause, exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    return retried


class Journal:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool
        self.begins: Coalescer[Begin, bool] = Coalescer(self._begin)
        # finishes and closes record what a provider already did: they must not be lost
        self.finishes: Coalescer[Finish, None] = Coalescer(persistently(self._finish))
        self.closes: Coalescer[Close, bool] = Coalescer(persistently(self._close))

    async def begin(self, item: Begin) -> bool:
        """Record an attempt as 'sending'; False when the delivery is no longer open (revoked)."""
        return await self.begins.submit(item)

    async def finish(self, item: Finish) -> None:
        await self.finishes.submit(item)

    async def close(self, item: Close) -> bool:
        """Record the part's outcome; False when it was already closed (e.g. revoked)."""
        return await self.closes.submit(item)

    async def _begin(self, items: list[Begin]) -> list[bool]:
        rows = await self.pool.fetch(
            """
            WITH t AS (
                SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                                     $5::text[], $6::text[])
                    AS t(id, key, channel, provider, recipient, purpose)
            ), open AS (
                UPDATE deliveries d SET status = 'sending', updated_at = now()
                FROM t
                WHERE d.allocation_event_id = t.id AND t.purpose = 'delivery'
                  AND d.status IN ('pending', 'sending')
                RETURNING d.allocation_event_id
            )
            INSERT INTO attempts (key, allocation_event_id, channel, provider, recipient, purpose,
                                  status)
            SELECT t.key, t.id, t.channel, t.provider, t.recipient, t.purpose, 'sending' FROM t
            WHERE t.purpose = 'resend' OR t.id IN (SELECT allocation_event_id FROM open)
            ON CONFLICT (key) DO UPDATE SET status = 'sending', started_at = now()
            RETURNING key
            """,
            [i.allocation_event_id for i in items],
            [i.key for i in items],
            [i.channel for i in items],
            [i.provider for i in items],
            [i.recipient for i in items],
            [i.purpose for i in items],
        )
        started = {r["key"] for r in rows}
        return [i.key in started for i in items]

    async def _finish(self, items: list[Finish]) -> list[None]:
        await self.pool.execute(
            """
            UPDATE attempts a SET status = t.status, provider_message_id = t.mid,
                error = t.error, finished_at = now()
            FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
                AS t(key, status, mid, error)
            WHERE a.key = t.key
            """,
            [i.key for i in items],
            [i.status for i in items],
            [i.provider_message_id for i in items],
            [i.error for i in items],
        )
        return [None] * len(items)

    async def _close(self, items: list[Close]) -> list[bool]:
        rows = await self.pool.fetch(
            """
            WITH t AS (
                SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                     $6::text[], $7::int[], $8::text[], $9::timestamptz[],
                                     $10::text[])
                    AS t(id, status, channel, provider, mid, recipient, attempts, reasons,
                         accepted_at, attempt_key)
            ), accepted AS (
                -- the accepted attempt is recorded with its part: one statement, not two
                UPDATE attempts a SET status = 'accepted', provider_message_id = t.mid,
                    finished_at = now()
                FROM t WHERE a.key = t.attempt_key
            )
            UPDATE deliveries d SET
                status = t.status, channel = t.channel, provider = t.provider,
                provider_message_id = t.mid, recipient = t.recipient,
                attempts = d.attempts + t.attempts,
                reasons = CASE WHEN t.reasons = '' THEN '{}'::text[]
                               ELSE string_to_array(t.reasons, chr(31)) END,
                accepted_at = t.accepted_at, updated_at = now()
            FROM t
            WHERE d.allocation_event_id = t.id
              AND (d.status IN ('pending', 'sending')
                   -- revoked while the call was in flight: the buyer has it, say so
                   OR (d.status = 'revoked' AND t.status = 'accepted'))
            RETURNING d.allocation_event_id
            """,
            [i.allocation_event_id for i in items],
            [i.status for i in items],
            [i.channel for i in items],
            [i.provider for i in items],
            [i.provider_message_id for i in items],
            [i.recipient for i in items],
            [i.attempts for i in items],
            [chr(31).join(i.reasons) for i in items],
            [i.accepted_at for i in items],
            [i.attempt_key for i in items],
        )
        closed = {r["allocation_event_id"] for r in rows}
        return [i.allocation_event_id in closed for i in items]
