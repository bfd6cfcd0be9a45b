"""Delivery receipts from `delivery.receipt` (the gateway verified them), applied in batches.

A `delivered` receipt marks its attempt and part delivered: one statement per batch. A
`failed` receipt for a message a provider had accepted reopens the part and sends it on the
next channel. A receipt is matched by our attempt key when the provider echoed it, else by the
provider's message id, so any replica can apply any receipt. One that matches no accepted
attempt is kept: it overtook our record of the acceptance (the sweep applies it again), or it
is the receipt of an attempt a crash left 'sending', which the resume is waiting for
(recovery.py). Kept receipts are dropped after a day.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import asyncpg
from prometheus_client import Counter, Histogram

from services.notifier.delivery import Delivery, Purpose
from services.notifier.handlers import send_part
from shared.events import CodeAllocated, DeliveryReceipt, utcnow

log = logging.getLogger(__name__)

RECEIPTS = Counter(
    "tasleem_notifier_receipts_total",
    "Delivery receipts, by provider and status",
    ["provider", "status"],
)
ACCEPTED_TO_DELIVERED = Histogram(
    "tasleem_notifier_accepted_to_delivered_seconds",
    "From a provider accepting a message to its delivered receipt reaching the notifier",
    ["provider"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800, 3600),
)

Status = Literal["accepted", "delivered", "failed"]
KEPT_FOR = "1 day"


async def apply(
    batch: Sequence[DeliveryReceipt], pool: asyncpg.Pool, delivery: Delivery, *, fresh: bool = True
) -> set[str]:
    """Apply receipts; returns the event ids that matched an attempt. Unmatched ones are kept
    (`fresh`: they came from Kafka, not from the table)."""
    batch = list({r.event_id: r for r in batch}.values())
    if fresh:
        for r in batch:
            RECEIPTS.labels(r.provider, r.status).inc()
    matched = await _apply_settled(pool, [r for r in batch if r.status != "failed"])
    for r in batch:
        if r.status == "failed" and await _apply_failed(pool, delivery, r):
            matched.add(r.event_id)
    unmatched = [r for r in batch if r.event_id not in matched]
    if fresh and unmatched:
        await _keep(pool, unmatched)
        if any(r.attempt_key for r in unmatched):
            delivery.inflight.waiter.poke()
    if not fresh and matched:
        await pool.execute("DELETE FROM receipts WHERE event_id = ANY($1::text[])", list(matched))
    return matched


async def _apply_settled(pool: asyncpg.Pool, batch: list[DeliveryReceipt]) -> set[str]:
    """`delivered` and `accepted` receipts, in one statement: by attempt key, else by message id.
    An attempt resolved as 'unknown' (sent again after the wait) is marked delivered too: the
    first message did arrive, and the record says so."""
    if not batch:
        return set()
    rows = await pool.fetch(
        """
        WITH t AS (
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
                AS t(event_id, provider, mid, key, status)
        ), hit AS (
            SELECT t.event_id, t.status, t.mid, a.key FROM t JOIN attempts a ON a.key = t.key
            WHERE t.key IS NOT NULL AND a.status IN ('accepted', 'delivered', 'unknown')
            UNION ALL
            SELECT t.event_id, t.status, t.mid, a.key FROM t
            JOIN attempts a ON a.provider = t.provider AND a.provider_message_id = t.mid
            WHERE t.key IS NULL AND a.status IN ('accepted', 'delivered', 'unknown')
        ), up AS (
            UPDATE attempts a SET status = 'delivered',
                provider_message_id = COALESCE(a.provider_message_id, hit.mid)
            FROM hit WHERE a.key = hit.key AND hit.status = 'delivered'
            RETURNING a.allocation_event_id, a.purpose, a.provider, a.provider_message_id
        ), d AS (
            UPDATE deliveries d SET status = 'delivered', updated_at = now()
            FROM up
            WHERE d.allocation_event_id = up.allocation_event_id AND up.purpose = 'delivery'
              AND d.provider_message_id = up.provider_message_id AND d.status = 'accepted'
            RETURNING d.provider, d.accepted_at
        )
        SELECT event_id, NULL::text AS provider, NULL::timestamptz AS accepted_at FROM hit
        UNION ALL
        SELECT NULL, provider, accepted_at FROM d
        """,
        [r.event_id for r in batch],
        [r.provider for r in batch],
        [r.provider_message_id for r in batch],
        [r.attempt_key for r in batch],
        [r.status for r in batch],
    )
    now = utcnow()
    for row in rows:
        if row["accepted_at"] is not None:
            ACCEPTED_TO_DELIVERED.labels(row["provider"]).observe(
                max((now - row["accepted_at"]).total_seconds(), 0.0)
            )
    return {row["event_id"] for row in rows if row["event_id"] is not None}


async def _apply_failed(pool: asyncpg.Pool, delivery: Delivery, r: DeliveryReceipt) -> bool:
    """Accepted, then reported failed: the part goes on to the next channel. (Rare: one at a
    time.)"""
    async with pool.acquire() as conn, conn.transaction():
        attempt = await conn.fetchrow(
            """
            UPDATE attempts SET status = 'undelivered', error = COALESCE(NULLIF($4, ''), error),
                provider_message_id = COALESCE(provider_message_id, $2)
            WHERE ((key = $3) OR ($3 IS NULL AND provider = $1 AND provider_message_id = $2))
              AND status IN ('accepted', 'delivered')
            RETURNING allocation_event_id, channel, purpose, provider_message_id
            """,
            r.provider,
            r.provider_message_id,
            r.attempt_key,
            r.error,
        )
        if attempt is None or attempt["purpose"] != Purpose.DELIVERY:
            return attempt is not None
        reopened = await conn.fetchrow(
            """
            UPDATE deliveries SET status = 'sending', updated_at = now(),
                reasons = reasons || $3::text
            WHERE allocation_event_id = $1 AND provider_message_id = $2
              AND status IN ('accepted', 'delivered')
            RETURNING event
            """,
            attempt["allocation_event_id"],
            attempt["provider_message_id"],
            f"{r.provider}: accepted, then reported failed ({r.error or 'no reason given'})",
        )
    if reopened is not None and reopened["event"] is not None:
        event = CodeAllocated.model_validate_json(reopened["event"])
        log.warning(
            "%s part %d: %s reported the message failed; trying the next channel",
            event.order_key,
            event.part,
            r.provider,
        )
        task = delivery.inflight.start(
            send_part(event, pool, delivery, after=(attempt["channel"], r.provider)),
            event.event_id,
        )
        delivery.inflight.publish_later(task)
    return True


async def _keep(pool: asyncpg.Pool, batch: list[DeliveryReceipt]) -> None:
    await pool.execute(
        """
        INSERT INTO receipts (event_id, provider, provider_message_id, attempt_key, status,
                              error, received_at)
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                             $6::text[], $7::timestamptz[])
        ON CONFLICT DO NOTHING
        """,
        [r.event_id for r in batch],
        [r.provider for r in batch],
        [r.provider_message_id for r in batch],
        [r.attempt_key for r in batch],
        [r.status for r in batch],
        [r.error for r in batch],
        [r.received_at for r in batch],
    )


async def reapply(pool: asyncpg.Pool, delivery: Delivery) -> int:
    """The sweep's part: apply kept receipts again (their attempt may be recorded by now), and
    drop those older than a day. Returns how many matched."""
    await pool.execute(f"DELETE FROM receipts WHERE received_at < now() - interval '{KEPT_FOR}'")
    rows = await pool.fetch(
        """
        SELECT r.* FROM receipts r
        WHERE NOT EXISTS (SELECT 1 FROM attempts a WHERE a.key = r.attempt_key
                          AND a.status = 'sending')
        ORDER BY received_at LIMIT 1000
        """
    )
    kept = [DeliveryReceipt.model_validate(dict(row)) for row in rows]  # the row is the event
    return len(await apply(kept, pool, delivery, fresh=False)) if kept else 0
