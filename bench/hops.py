"""Latency per hop, so every millisecond of paid→sent has an owner.

From the moments the follower read off the topics (events' own times and record timestamps)
and, for "provider called", the notifier's journal: `attempts.started_at` is stamped by the
batched 'sending' insert just before the provider is called (PostgreSQL's `now()`, the same
machine's clock). Without the journal the two hops around it are reported as one.
"""

from __future__ import annotations

import asyncpg

from bench.common import percentile
from bench.follow import Moments

HOPS = (
    "paid → order.paid appended",
    "order.paid appended → allocated (allocated_at)",
    "allocated → code.allocated appended (commit, outbox)",
    "code.allocated appended → provider called",
    "provider called → provider accepted",
    "provider accepted → message.sent appended",
    "paid → message.sent appended",
)
NO_JOURNAL = "code.allocated appended → provider accepted"


async def provider_called(dsn: str) -> dict[str, float]:
    """Allocation event id → unix time of its first delivery attempt, from the notifier's
    journal; empty when it cannot be read."""
    try:
        conn = await asyncpg.connect(dsn)
    except (OSError, asyncpg.PostgresError):
        return {}
    try:
        rows = await conn.fetch(
            """
            SELECT allocation_event_id, extract(epoch FROM min(started_at))::float8 AS at
            FROM notifier.attempts WHERE purpose = 'delivery' GROUP BY allocation_event_id
            """
        )
    except asyncpg.PostgresError:
        return {}
    finally:
        await conn.close()
    return {r["allocation_event_id"]: r["at"] for r in rows}


def per_hop(
    moments: Moments, called: dict[str, float], start: float, end: float
) -> dict[str, list[float]]:
    """Milliseconds spent in each hop by the parts of orders paid in [start, end)."""
    hops: dict[str, list[float]] = {name: [] for name in (*HOPS, NO_JOURNAL)}
    for paid, paid_appended in moments.paid.values():
        if start <= paid < end:
            hops[HOPS[0]].append(paid_appended - paid)
    for event_id, (order_key, allocated, appended) in moments.allocated.items():
        order = moments.paid.get(order_key)
        sent = moments.sent.get(event_id)
        if order is None or not start <= order[0] < end:
            continue
        hops[HOPS[1]].append(allocated - order[1])
        hops[HOPS[2]].append(appended - allocated)
        if sent is None:
            continue
        accepted, sent_appended = sent
        if event_id in called:
            hops[HOPS[3]].append(called[event_id] - appended)
            hops[HOPS[4]].append(accepted - called[event_id])
        hops[NO_JOURNAL].append(accepted - appended)
        hops[HOPS[5]].append(sent_appended - accepted)
        hops[HOPS[6]].append(sent_appended - order[0])
    return {name: [1000 * s for s in spans] for name, spans in hops.items() if spans}


def summary(hops: dict[str, list[float]]) -> dict[str, tuple[float, float, int]]:
    """Hop → (p50 ms, p99 ms, count)."""
    return {name: (percentile(ms, 0.5), percentile(ms, 0.99), len(ms)) for name, ms in hops.items()}
