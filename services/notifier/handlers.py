"""Deliver each `code.allocated` part exactly once, failing over between channels and providers.

A part is claimed in `deliveries` before anything is sent, with the allocation itself (codes
sealed), so it can be resumed after a crash or resent by an operator. Each provider call is an
attempt recorded 'sending' before and its outcome after (journal.py), in the route loop that an
operator's resend shares (routing.py).

The consumer loop commits offsets per batch. A batch waits for its messages at most `hold_s`;
a message still retrying after that goes on by itself (it is durable in `deliveries`) and its
report is published when it finishes, so one slow buyer never holds a whole batch. Several
batches are handled at once (`batches_in_flight`), so the next batch's messages go out while
one waits; offsets are still committed in batch order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

import asyncpg
from prometheus_client import Histogram

from services.notifier import messages
from services.notifier.delivery import (
    FINISHED,
    AttemptStatus,
    Delivery,
    PartStatus,
)
from services.notifier.journal import Close, Finish
from services.notifier.policy import routes
from services.notifier.providers import ProviderError
from services.notifier.recovery import INTERRUPTED
from services.notifier.routing import Outcome, try_routes
from shared.codecrypt import CodeDecryptError
from shared.events import (
    CodeAllocated,
    CodeRevoked,
    Event,
    MessageFailed,
    MessageSent,
    event_id_for,
    utcnow,
)

log = logging.getLogger(__name__)

# The delivery SLO's histogram: paid -> a provider accepted the message (`message.sent`),
# once per message sent. The alerts read its 30 s bucket (le="30.0"), the dashboard quantiles.
DELIVERY_SECONDS = Histogram(
    "tasleem_delivery_seconds",
    "From the order's payment to a provider accepting the message, once per message sent",
    ["channel"],
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1, 2, 5, 10, 30, 60, 300),
)


async def deliver(
    batch: Sequence[CodeAllocated], pool: asyncpg.Pool, delivery: Delivery
) -> list[Event]:
    """Send every part not yet sent; returns the `message.sent` / `message.failed` events
    of the parts finished within the batch's hold (the rest are published as they finish)."""
    batch = list({e.event_id: e for e in batch}.values())
    # Backpressure: parts still retrying from earlier batches count against the intake, so a
    # slow provider slows consumption instead of piling up unbounded work in memory.
    inflight, policy = delivery.inflight, delivery.policy
    while len(inflight.tasks) + len(batch) > policy.max_inflight and inflight.tasks:
        await asyncio.wait(list(inflight.tasks.values()), return_when=asyncio.FIRST_COMPLETED)
    claimed, existing = await _claim(pool, batch)
    events: list[Event] = []
    tasks = []
    for event in batch:
        if event.event_id in claimed:
            tasks.append(inflight.start(send_part(event, pool, delivery), event.event_id))
            continue
        row = existing.get(event.event_id)
        if row is None:
            continue  # inserted by another replica at this very moment: it sends it
        if row["status"] in FINISHED:
            if (report := report_row(row)) is not None:
                events.append(report)  # a redelivery: the stored report, not a second message
        elif event.event_id not in inflight.tasks and _stale(row, policy.resume_after_s):
            # left unfinished by a crash (or a failed batch): resolve and go on
            tasks.append(inflight.start(resume(event, pool, delivery), event.event_id))
        # else another replica may still be sending it (a rebalance moved the partition):
        # the resume sweep takes it over if it stays unfinished
    if not tasks:
        return events
    if policy.hold_s is None:
        results = await asyncio.gather(*tasks)
        return events + [r for r in results if r is not None]
    done, pending = await asyncio.wait(tasks, timeout=policy.hold_s)
    for task in pending:
        inflight.publish_later(task)
    for task in done:
        if (result := task.result()) is not None:  # re-raises: the batch is retried
            events.append(result)
    return events


def _stale(row: asyncpg.Record, after_s: float) -> bool:
    if after_s <= 0:
        return True
    return bool((utcnow() - row["updated_at"]).total_seconds() >= after_s)


async def _claim(
    pool: asyncpg.Pool, batch: Sequence[CodeAllocated]
) -> tuple[set[str], dict[str, asyncpg.Record]]:
    """Insert new parts 'pending' (or 'revoked' when a revocation came first); returns the
    parts claimed 'pending' now and the rows of the others.

    One statement, so one round trip per batch before the first send (a transaction around an
    insert and a select took four: BEGIN, INSERT, SELECT, COMMIT). The select reads the
    statement's snapshot, which holds the rows that were there before and not those inserted
    here: those come back from RETURNING instead. A part a second replica inserted meanwhile
    is in neither (it is that replica's to send; the resume sweep covers it)."""
    rows = await pool.fetch(
        """
        WITH claimed AS (
            INSERT INTO deliveries
                (allocation_event_id, order_key, part, status, code_count, paid_at, event)
            SELECT t.id, t.order_key, t.part,
                   CASE WHEN EXISTS (SELECT 1 FROM revocations r WHERE r.order_key = t.order_key
                                     AND r.part IN (0, t.part)) THEN 'revoked' ELSE 'pending' END,
                   t.code_count, t.paid_at, t.event
            FROM unnest($1::text[], $2::text[], $3::int[], $4::int[], $5::timestamptz[],
                        $6::jsonb[]) AS t(id, order_key, part, code_count, paid_at, event)
            ON CONFLICT DO NOTHING
            RETURNING *
        )
        SELECT true AS claimed, * FROM claimed
        UNION ALL
        SELECT false, * FROM deliveries WHERE allocation_event_id = ANY($1::text[])
        """,
        [e.event_id for e in batch],
        [e.order_key for e in batch],
        [e.part for e in batch],
        [len(e.codes) for e in batch],
        [e.paid_at for e in batch],
        [e.model_dump_json() for e in batch],
    )
    fresh = {
        r["allocation_event_id"] for r in rows if r["claimed"] and r["status"] == PartStatus.PENDING
    }
    return fresh, {
        r["allocation_event_id"]: r for r in rows if r["allocation_event_id"] not in fresh
    }


async def resume(event: CodeAllocated, pool: asyncpg.Pool, delivery: Delivery) -> Event | None:
    """Finish a part a crash left unfinished, without a second message wherever we can tell
    that the first one went out (recovery.py): Unifonic answers a repeated CorrelationID with
    ER-09, so its attempt is repeated with the same key; Twilio is looked up by recipient and
    day; WhatsApp, Twilio and SES echo our attempt key in their receipts, which the resume waits
    for (`receipt_wait_s`). Only when none comes is the message sent again (README's window)."""
    last = await pool.fetchrow(
        """
        SELECT key, channel, provider, recipient, started_at FROM attempts
        WHERE allocation_event_id = $1 AND status = 'sending' AND purpose = 'delivery'
        ORDER BY started_at DESC LIMIT 1
        """,
        event.event_id,
    )
    if last is None:
        return await send_part(event, pool, delivery)
    provider = last["provider"]
    if provider == "unifonic":
        INTERRUPTED.labels(provider, "same_key").inc()
        return await send_part(event, pool, delivery, resume_from=last)
    # touched, so another replica's sweep leaves the part to this one while it waits
    await pool.execute(
        "UPDATE deliveries SET updated_at = now() WHERE allocation_event_id = $1", event.event_id
    )
    journal = delivery.inflight.journal
    found, status, error, resolution = (
        await _looked_up(event, last, delivery),
        AttemptStatus.ACCEPTED,
        "",
        "lookup",
    )
    if found is None:
        receipt = await delivery.inflight.waiter.wait(
            pool, last["key"], delivery.policy.receipt_wait_s
        )
        if receipt is not None:
            found, status, error = (
                receipt["provider_message_id"],
                receipt["status"],
                receipt["error"],
            )
            resolution = "receipt"
    if found is not None:
        INTERRUPTED.labels(provider, resolution).inc()
        if status == AttemptStatus.FAILED:
            await journal.finish(
                Finish(last["key"], AttemptStatus.UNDELIVERED, found, error or "failed")
            )
            return await send_part(event, pool, delivery, after=(last["channel"], provider))
        log.warning(
            "%s part %d: an interrupted attempt on %s went out (%s); not sending it again",
            event.order_key,
            event.part,
            provider,
            resolution,
        )
        outcome = Outcome(event, channel=last["channel"], provider=provider, to=last["recipient"])
        outcome.provider_message_id, outcome.accepted_at = found, last["started_at"]
        outcome.attempt_key = last["key"]
        return await _close(outcome, delivery)
    INTERRUPTED.labels(provider, "sent_again").inc()
    await journal.finish(
        Finish(
            last["key"],
            AttemptStatus.UNKNOWN,
            None,
            "interrupted; no receipt came within the wait",
        )
    )
    log.warning(
        "%s part %d: an attempt on %s was interrupted and no receipt came; sending again",
        event.order_key,
        event.part,
        provider,
    )
    return await send_part(event, pool, delivery)


async def _looked_up(
    event: CodeAllocated, attempt: asyncpg.Record, delivery: Delivery
) -> str | None:
    """The provider's message id of an interrupted attempt, from a provider that can list what
    it sent (Twilio: by recipient and day, matched on the text); None elsewhere."""
    channels = delivery.channels
    lookup = getattr(channels.provider(attempt["provider"]), "lookup", None)
    if lookup is None:
        return None
    store = channels.stores.get(event.store_id)
    try:
        content = messages.content(event, channels.cipher, store)
    except CodeDecryptError:
        return None
    message = messages.outbound(
        content, attempt["channel"], attempt["recipient"], "", store, channels.whatsapp_template
    )
    try:
        found: str | None = await lookup(message, attempt["started_at"])
    except ProviderError as exc:
        log.warning("looking up an interrupted attempt failed: %s", exc)
        return None
    return found


async def send_part(
    event: CodeAllocated,
    pool: asyncpg.Pool,
    delivery: Delivery,
    *,
    after: tuple[str, str] | None = None,
    resume_from: asyncpg.Record | None = None,
) -> Event | None:
    """Try each route in turn until one provider accepts; record and report the outcome.
    `after`: only the routes after this (channel, provider); `resume_from`: an interrupted
    attempt, repeated first with its own key."""
    outcome = Outcome(event)
    channels = delivery.channels
    store = channels.stores.get(event.store_id)
    candidates = routes(event, store, channels.providers)
    if after is not None:
        names = [(r.channel, r.provider.name) for r in candidates]
        candidates = candidates[names.index(after) + 1 :] if after in names else []
    first_key = None
    if resume_from is not None:
        first_key = resume_from["key"]
        again = [r for r in candidates if r.provider.name == resume_from["provider"]]
        candidates = again[:1] + [r for r in candidates if r not in again[:1]]
    if not candidates:
        outcome.reasons.append("no channel reaches the buyer (no phone, no email)")
    try:
        content = messages.content(event, channels.cipher, store)
    except CodeDecryptError as exc:
        outcome.reasons.append(f"codes do not decrypt: {exc}")
    else:
        await try_routes(
            candidates,
            content,
            store,
            delivery,
            outcome,
            withdrawn=_heard_revoked(delivery),
            first_key=first_key,
        )
    return await _close(outcome, delivery)


def _heard_revoked(delivery: Delivery) -> Callable[[CodeAllocated], Awaitable[bool]]:
    """A delivery notices a revocation in this replica's memory (`revoke` below)."""

    async def withdrawn(event: CodeAllocated) -> bool:
        return delivery.inflight.is_revoked(event)

    return withdrawn


async def _close(outcome: Outcome, delivery: Delivery) -> Event | None:
    event = outcome.event
    accepted = outcome.provider_message_id is not None
    if outcome.revoked and not accepted:
        log.info("%s part %d revoked before sending", event.order_key, event.part)
        return None
    closed = await delivery.inflight.journal.close(
        Close(
            event.event_id,
            PartStatus.ACCEPTED if accepted else PartStatus.FAILED,
            outcome.channel,
            outcome.provider,
            outcome.provider_message_id,
            outcome.to or event.customer.phone or event.customer.email or "",
            outcome.attempts,
            outcome.reasons,
            outcome.accepted_at,
            outcome.attempt_key,
        )
    )
    if not closed and not accepted:
        return None  # revoked meanwhile: nothing was sent, nothing to report
    return report(outcome)


def report(outcome: Outcome) -> Event:
    event = outcome.event
    if outcome.provider_message_id is None or outcome.accepted_at is None:
        log.warning(
            "%s part %d failed on every channel: %s",
            event.order_key,
            event.part,
            "; ".join(outcome.reasons),
        )
        return MessageFailed(
            event_id=event_id_for("message.failed", event.event_id),
            order_key=event.order_key,
            part=event.part,
            allocation_event_id=event.event_id,
            reasons=outcome.reasons,
            failed_at=utcnow(),
        )
    latency = (outcome.accepted_at - event.paid_at).total_seconds()
    # report() runs once per accepted send (a redelivery's report comes from report_row)
    DELIVERY_SECONDS.labels(outcome.channel or "").observe(latency)
    return MessageSent(
        event_id=event_id_for("message.sent", event.event_id, outcome.provider_message_id),
        order_key=event.order_key,
        part=event.part,
        allocation_event_id=event.event_id,
        channel=outcome.channel or "",
        provider=outcome.provider or "",
        provider_message_id=outcome.provider_message_id,
        to=outcome.to,
        attempts=outcome.attempts,
        code_count=len(event.codes),
        paid_at=event.paid_at,
        accepted_at=outcome.accepted_at,
        paid_to_accepted_ms=latency * 1000,
    )


def report_row(row: asyncpg.Record) -> Event | None:
    """The report of a finished part, rebuilt from its row (revoked parts have none)."""
    if row["status"] == PartStatus.REVOKED and row["accepted_at"] is None:
        return None
    if row["status"] == PartStatus.FAILED:
        return MessageFailed(
            event_id=event_id_for("message.failed", row["allocation_event_id"]),
            order_key=row["order_key"],
            part=row["part"],
            allocation_event_id=row["allocation_event_id"],
            reasons=list(row["reasons"]),
            failed_at=row["updated_at"],
        )
    return MessageSent(
        event_id=event_id_for(
            "message.sent", row["allocation_event_id"], row["provider_message_id"]
        ),
        order_key=row["order_key"],
        part=row["part"],
        allocation_event_id=row["allocation_event_id"],
        channel=row["channel"],
        provider=row["provider"],
        provider_message_id=row["provider_message_id"],
        to=row["recipient"],
        attempts=row["attempts"],
        code_count=row["code_count"],
        paid_at=row["paid_at"],
        accepted_at=row["accepted_at"],
        paid_to_accepted_ms=(row["accepted_at"] - row["paid_at"]).total_seconds() * 1000,
    )


async def revoke(batch: Sequence[CodeRevoked], pool: asyncpg.Pool, delivery: Delivery) -> None:
    """Honour `code.revoked`: a part not yet sent is never sent (remembered even when the
    revocation arrives before the allocation)."""
    keys = [(e.order_key, part) for e in batch for part in (e.parts or [0])]
    reasons = [e.reason for e in batch for _ in (e.parts or [0])]
    delivery.inflight.revoked.update(keys)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            """
            INSERT INTO revocations (order_key, part, reason)
            SELECT * FROM unnest($1::text[], $2::int[], $3::text[]) ON CONFLICT DO NOTHING
            """,
            [k for k, _ in keys],
            [p for _, p in keys],
            reasons,
        )
        await conn.execute(
            """
            UPDATE deliveries d SET status = 'revoked', updated_at = now()
            FROM unnest($1::text[], $2::int[]) AS t(order_key, part)
            WHERE d.order_key = t.order_key AND t.part IN (0, d.part)
              AND d.status IN ('pending', 'sending')
            """,
            [k for k, _ in keys],
            [p for _, p in keys],
        )
