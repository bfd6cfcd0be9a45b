"""`inventory.level` per stock (an account's sku), coalesced and off the allocation path.

Counting a sku's available codes costs more than allocating a batch, so the allocation
transaction only notes which skus moved; this reporter counts them at most once per interval
and publishes one level per sku. Every sku is also reported now and then when nothing moved,
so a restocker that lost its state catches up. A level lost in a crash is harmless: it is a
snapshot, and the next one replaces it.

A stock that ran short (units left waiting for a code) is reported at once instead, a few
milliseconds later so that the batches of a burst share one report: a buyer waits for the
restocker to hear of it, and half an interval on average was a third of paid → delivered for
a sku bought on demand (bench `headline`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter

import asyncpg
from aiokafka import AIOKafkaProducer

from services.allocator import handlers, vault
from shared.events import Stock, utcnow
from shared.kafka import publish

log = logging.getLogger(__name__)


class LevelReporter:
    def __init__(
        self,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        *,
        interval_s: float = 0.5,
        refresh_s: float = 30.0,
        short_gather_s: float = 0.01,
        service: str = "allocator",
    ):
        self.pool = pool
        self.producer = producer
        self.interval_s = interval_s
        self.refresh_s = refresh_s
        self.short_gather_s = short_gather_s
        self.service = service
        self._sold: Counter[Stock] = Counter()
        self._touched: set[Stock] = set()
        self._stopping = asyncio.Event()
        self._short = asyncio.Event()  # set when a stock ran short: report without waiting

    def record(
        self, touched: set[Stock], sold: Counter[Stock], short: set[Stock] | None = None
    ) -> None:
        """Note stocks that moved (after their transaction committed); `short` ones (units
        left waiting for a code) are reported at once."""
        self._touched |= touched
        self._sold.update(sold)
        if short:
            self._touched |= short
            self._short.set()

    async def report(self, stocks: set[Stock]) -> None:
        wanted = handlers.reportable(stocks)
        if not wanted:
            return
        async with self.pool.acquire() as conn:
            levels = await vault.stock_levels(conn, wanted)
        now = utcnow()
        events = [
            handlers.level_event(level, self._sold.pop(level.stock, 0), now) for level in levels
        ]
        await publish(self.producer, events, self.service)

    async def run(self) -> None:
        next_refresh = time.monotonic()
        while not self._stopping.is_set():
            reported_at = time.monotonic()
            stocks, self._touched = self._touched, set()
            try:
                if time.monotonic() >= next_refresh:
                    stocks |= await self._all_stocks()
                    next_refresh = time.monotonic() + self.refresh_s
                await self.report(stocks)
            except Exception as exc:  # the database or broker is away: try again next time
                self._touched |= stocks
                log.warning("inventory levels not reported, will retry: %r", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._short.wait(), self.interval_s)
            if self._short.is_set() and not self._stopping.is_set():
                # the rest of a burst joins in; and a stock that stays short through a surge
                # is counted at most every `short_gather_s * 5`, not after every batch
                spacing = reported_at + self.short_gather_s * 5 - time.monotonic()
                await asyncio.sleep(max(self.short_gather_s, spacing))
            self._short.clear()

    async def _all_stocks(self) -> set[Stock]:
        rows = await self.pool.fetch("SELECT account, sku FROM sku_totals")
        return {Stock(r["account"], r["sku"]) for r in rows}

    def stop(self) -> None:
        self._stopping.set()
        self._short.set()  # ends the wait
