"""`tasleem demo`: a sale-day surge of signed orders against a running stack, with progress.

Orders go in through the sandbox store (signed webhooks to the gateway); progress is read
from `code.allocated` and `message.sent` on the broker, and the report from `message.sent`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiokafka import TopicPartition
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from deploy.embedded.broker import client_settings
from shared import kafka_clients
from shared.events import CodeAllocated, MessageFailed, MessageSent


@dataclass
class SurgeResult:
    sent: int = 0
    accepted: int = 0
    rejected: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    order_keys: set[str] = field(default_factory=set)
    allocated_orders: set[str] = field(default_factory=set)
    code_ids: list[int] = field(default_factory=list)
    units_by_order: dict[str, int] = field(default_factory=dict)
    delivered_units: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    seen_events: set[str] = field(default_factory=set)
    failed_orders: set[str] = field(default_factory=set)
    latencies_ms: list[float] = field(default_factory=list)  # per message (part) sent
    # per order: paid -> its last part accepted (a backordered part arrives after a purchase)
    order_latency_ms: dict[str, float] = field(default_factory=dict)
    customers: dict[str, str] = field(default_factory=dict)  # order key -> phone
    elapsed_s: float = 0.0

    @property
    def delivered_orders(self) -> set[str]:
        """Orders whose every unit reached the buyer (backordered parts arrive later)."""
        return {
            key
            for key, units in self.units_by_order.items()
            if self.delivered_units.get(key, 0) >= units
        }

    def percentile(self, q: float) -> float | None:
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def random_order(rng: random.Random, skus: list[str], n: int, phone_base: int) -> dict[str, Any]:
    """An order of 1–2 lines of 1–2 units; each order has its own buyer."""
    lines = [
        {"sku": sku, "quantity": rng.choice((1, 1, 1, 2))}
        for sku in rng.sample(skus, k=1 if rng.random() < 0.8 else 2)
    ]
    locale = rng.choice(("ar", "ar", "en"))
    return {
        "lines": lines,
        "customer": {
            "name": f"Buyer {n}",
            "phone": f"+9665{(phone_base + n) % 10**8:08d}",
            "email": f"buyer{n}@example.com",
            "locale": locale,
        },
    }


async def surge(
    stack: dict[str, Any],
    orders: int,
    rate: float,
    *,
    console: Console | None = None,
    timeout_s: float = 300,
    seed: int | None = None,
) -> SurgeResult:
    """Send `orders` orders at `rate`/s and follow them until delivered (or timeout)."""
    rng = random.Random(seed)
    result = SurgeResult()
    stores = [s["id"] for s in stack["stores"]]
    skus = list(stack["skus"])
    watcher = _Watcher(stack["kafka"], result)
    await watcher.start()
    progress = Progress(
        TextColumn("{task.description:>10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console or Console(),
        transient=False,
        disable=console is None,
    )
    started = time.perf_counter()
    try:
        with progress:
            received = progress.add_task("received", total=orders)
            allocated = progress.add_task("allocated", total=orders)
            delivered = progress.add_task("delivered", total=orders)

            def refresh() -> None:
                progress.update(received, completed=result.accepted)
                progress.update(allocated, completed=len(result.allocated_orders))
                progress.update(delivered, completed=len(result.delivered_orders))

            sender = asyncio.create_task(
                _send_orders(stack["sandbox"], stores, skus, orders, rate, rng, result)
            )
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                refresh()
                if sender.done() and result.order_keys <= (
                    result.delivered_orders | result.failed_orders
                ):
                    break
                await asyncio.sleep(0.1)
            await sender
            refresh()
    finally:
        result.elapsed_s = time.perf_counter() - started
        await watcher.stop()
    return result


async def _send_orders(
    sandbox: str,
    stores: list[str],
    skus: list[str],
    orders: int,
    rate: float,
    rng: random.Random,
    result: SurgeResult,
) -> None:
    in_flight = asyncio.Semaphore(64)
    phone_base = rng.randrange(10**8)
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=30)
    ) as session:

        async def one(n: int) -> None:
            store = stores[n % len(stores)]
            order = random_order(rng, skus, n, phone_base)
            async with in_flight:
                for _ in range(5):  # retry as a platform would after a 503
                    async with session.post(f"{sandbox}/stores/{store}/orders", json=order) as r:
                        reply = await r.json()
                    status = reply.get("status")
                    if status != 503:
                        break
                    order["order_id"] = reply["order_id"]
                    await asyncio.sleep(1)
            result.sent += 1
            if status in (200, 202):
                key = reply["gateway"]["order_key"]
                result.accepted += 1
                result.order_keys.add(key)
                result.units_by_order[key] = sum(line["quantity"] for line in order["lines"])
                result.customers[key] = order["customer"]["phone"]
            else:
                result.rejected[status or 0] += 1

        start = time.perf_counter()
        tasks = []
        for n in range(orders):
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(n)))
        await asyncio.gather(*tasks)


class _Watcher:
    """Follows `code.allocated`, `message.sent` and `message.failed` from their current end."""

    TOPICS = (CodeAllocated.topic, MessageSent.topic, MessageFailed.topic)

    def __init__(self, bootstrap: str, result: SurgeResult):
        self.result = result
        self.consumer = kafka_clients.reader(client_settings(bootstrap), fetch_max_wait_ms=20)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        partitions = [
            TopicPartition(topic, p)
            for topic in self.TOPICS
            for p in (self.consumer.partitions_for_topic(topic) or await self._partitions(topic))
        ]
        self.consumer.assign(partitions)
        await self.consumer.seek_to_end(*partitions)
        for tp in partitions:  # resolve the end offsets now, before any order is sent
            await self.consumer.position(tp)
        self._task = asyncio.create_task(self._run())

    async def _partitions(self, topic: str) -> set[int]:
        await self.consumer._client.force_metadata_update()
        return self.consumer.partitions_for_topic(topic) or {0}

    async def _run(self) -> None:
        result = self.result
        while True:
            batch = await self.consumer.getmany(timeout_ms=200)
            for tp, records in batch.items():
                for record in records:
                    if tp.topic == CodeAllocated.topic:
                        allocation = CodeAllocated.model_validate_json(record.value)
                        if allocation.event_id in result.seen_events:
                            continue  # a redelivered event, already counted
                        result.seen_events.add(allocation.event_id)
                        result.allocated_orders.add(allocation.order_key)
                        result.code_ids.extend(c.code_id for c in allocation.codes)
                    elif tp.topic == MessageSent.topic:
                        sent = MessageSent.model_validate_json(record.value)
                        if sent.event_id in result.seen_events:
                            continue
                        result.seen_events.add(sent.event_id)
                        result.delivered_units[sent.order_key] += sent.code_count
                        result.latencies_ms.append(sent.paid_to_accepted_ms)
                        result.order_latency_ms[sent.order_key] = max(
                            result.order_latency_ms.get(sent.order_key, 0.0),
                            sent.paid_to_accepted_ms,
                        )
                    else:
                        failed = MessageFailed.model_validate_json(record.value)
                        result.failed_orders.add(failed.order_key)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.consumer.stop()


def report(console: Console, result: SurgeResult, inbox_messages: int | None = None) -> bool:
    """Print the surge report; True when every accepted order was delivered, codes distinct."""
    distinct = len(set(result.code_ids)) == len(result.code_ids)
    table = Table(title="Sale-day surge", show_header=False)
    table.add_row("orders sent", str(result.sent))
    table.add_row("accepted by the gateway", str(result.accepted))
    if result.rejected:
        table.add_row("rejected", ", ".join(f"{k}: {v}" for k, v in result.rejected.items()))
    table.add_row("orders delivered", f"{len(result.delivered_orders)} of {result.accepted}")
    table.add_row("orders failed", str(len(result.failed_orders)))
    table.add_row(
        "codes handed out",
        f"{len(result.code_ids)} ({'all distinct' if distinct else 'DUPLICATES FOUND'})",
    )
    if inbox_messages is not None:
        table.add_row("messages in buyers' inboxes", str(inbox_messages))
    for label, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
        value = result.percentile(q)
        table.add_row(f"paid→delivered {label}", "-" if value is None else f"{value:.0f} ms")
    table.add_row("elapsed", f"{result.elapsed_s:.1f} s")
    console.print(table)
    return distinct and len(result.delivered_orders) == result.accepted
