"""Recovery by receipt: an attempt a crash (or a failed journal write) left 'sending' may have
reached the buyer. Before it is sent again, its resume waits a bounded time for a receipt
carrying its key (WhatsApp, Twilio and SES echo it back), so a message that went out is
recorded, not repeated.

Receipts are applied through the database by whichever replica reads them, so the wait looks
there: one query per tick for every attempt waiting, woken early when this process stores a
receipt itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
from prometheus_client import Counter

from shared.db import RETRIABLE_DB_ERRORS

log = logging.getLogger(__name__)

INTERRUPTED = Counter(
    "tasleem_notifier_interrupted_attempts_total",
    "Attempts a crash left 'sending', by provider and how each was resolved: by a receipt, by "
    "a provider lookup, by the same key again (Unifonic), or sent again",
    ["provider", "resolution"],
)
RESOLUTIONS = ("receipt", "lookup", "same_key", "sent_again")
RETRY: tuple[type[BaseException], ...] = (OSError, *RETRIABLE_DB_ERRORS)


class ReceiptWaiter:
    """Waits for receipts by attempt key, polling the `receipts` table for all waiters at once."""

    def __init__(self, tick_s: float = 0.25):
        self.tick_s = tick_s
        self._waiting: dict[str, list[asyncio.Future[asyncpg.Record]]] = {}
        self._poll: asyncio.Task[None] | None = None
        self._poke = asyncio.Event()

    def poke(self) -> None:
        """A receipt was stored: look now rather than at the next tick."""
        self._poke.set()

    async def wait(self, pool: asyncpg.Pool, key: str, timeout_s: float) -> asyncpg.Record | None:
        """The receipt of attempt `key` (provider_message_id, status, error), or None."""
        if timeout_s <= 0:
            return None
        future: asyncio.Future[asyncpg.Record] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(future)
        if self._poll is None or self._poll.done():
            self._poll = asyncio.create_task(self._run(pool))
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            return None
        finally:
            waiters = self._waiting.get(key, [])
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._waiting.pop(key, None)

    async def _run(self, pool: asyncpg.Pool) -> None:
        while self._waiting:
            try:
                rows = await pool.fetch(
                    """
                    SELECT DISTINCT ON (attempt_key) attempt_key, provider_message_id, status,
                           error, received_at
                    FROM receipts WHERE attempt_key = ANY($1::text[])
                    ORDER BY attempt_key, status = 'accepted', received_at
                    """,
                    list(self._waiting),
                )
            except RETRY as exc:
                log.warning("looking for receipts failed: %r", exc)
                rows = []
            for row in rows:
                for future in self._waiting.pop(row["attempt_key"], []):
                    if not future.done():
                        future.set_result(row)
            self._poke.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self.tick_s)
