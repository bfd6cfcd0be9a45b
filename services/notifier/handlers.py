"""Deliver each `code.allocated` part exactly once and report it on `message.sent`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_delay,
    wait_exponential_jitter,
)

from services.notifier.messages import template_params
from services.notifier.providers import ProviderError
from services.notifier.whatsapp import WhatsAppCloud
from shared.codecrypt import CodeCipher, CodeDecryptError
from shared.events import CodeAllocated, Event, MessageFailed, MessageSent, event_id_for, utcnow

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    event: CodeAllocated
    attempts: int = 0
    provider_message_id: str | None = None
    accepted_at: datetime | None = None
    reasons: list[str] = field(default_factory=list)


@dataclass
class Delivery:
    """What a delivery needs besides the event: the provider and its policy."""

    whatsapp: WhatsAppCloud
    cipher: CodeCipher
    template: str
    deadline_s: float
    concurrency: asyncio.Semaphore


async def deliver(
    batch: Sequence[CodeAllocated], pool: asyncpg.Pool, delivery: Delivery
) -> list[Event]:
    """Send every part not yet accepted; returns the `message.sent` / `message.failed` events."""
    batch = list({e.event_id: e for e in batch}.values())
    done = await _claim(pool, batch)
    to_send = [e for e in batch if e.event_id not in done]
    outcomes = await asyncio.gather(*(_send(e, delivery) for e in to_send))
    await _record(pool, outcomes)
    events: list[Event] = [_report(o) for o in outcomes]
    events.extend(done.values())
    return events


async def _claim(pool: asyncpg.Pool, batch: Sequence[CodeAllocated]) -> dict[str, Event]:
    """Mark parts 'sending'; returns the report of parts already finished (a redelivery)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            """
            INSERT INTO deliveries
                (allocation_event_id, order_key, part, status, code_count, paid_at)
            SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::int[],
                                 $6::timestamptz[])
            ON CONFLICT DO NOTHING
            """,
            [e.event_id for e in batch],
            [e.order_key for e in batch],
            [e.part for e in batch],
            ["sending"] * len(batch),
            [len(e.codes) for e in batch],
            [e.paid_at for e in batch],
        )
        rows = await conn.fetch(
            """
            SELECT * FROM deliveries
            WHERE allocation_event_id = ANY($1::text[]) AND status <> 'sending'
            """,
            [e.event_id for e in batch],
        )
    # A part left 'sending' by a crash is sent again: WhatsApp offers no lookup by our key,
    # so the window between its acceptance and our update is at-least-once.
    return {r["allocation_event_id"]: _report_row(r) for r in rows}


async def _send(event: CodeAllocated, delivery: Delivery) -> Outcome:
    outcome = Outcome(event)
    phone = event.customer.phone
    if not phone:
        outcome.reasons.append("whatsapp: the buyer has no phone number")
        return outcome
    try:
        params = template_params(event, delivery.cipher)
    except CodeDecryptError as exc:
        outcome.reasons.append(f"codes do not decrypt: {exc}")
        return outcome
    retrying = AsyncRetrying(
        retry=retry_if_exception(lambda e: isinstance(e, ProviderError) and e.retriable),
        wait=wait_exponential_jitter(multiplier=0.1, jitter=0.1, max=5),
        stop=stop_after_delay(delivery.deadline_s),
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                outcome.attempts += 1
                async with delivery.concurrency:
                    outcome.provider_message_id = await delivery.whatsapp.send_template(
                        phone, delivery.template, event.customer.locale, params
                    )
                    outcome.accepted_at = utcnow()
    except ProviderError as exc:
        outcome.reasons.append(str(exc))
        log.warning("delivery of %s part %d failed: %s", event.order_key, event.part, exc)
    return outcome


async def _record(pool: asyncpg.Pool, outcomes: Sequence[Outcome]) -> None:
    if not outcomes:
        return
    await pool.execute(
        """
        UPDATE deliveries d SET
            status = CASE WHEN t.mid IS NULL THEN 'failed' ELSE 'accepted' END,
            channel = 'whatsapp', provider = 'whatsapp', provider_message_id = t.mid,
            recipient = t.recipient, attempts = d.attempts + t.attempts, reasons = t.reasons,
            accepted_at = t.accepted_at
        FROM (SELECT unnest($1::text[]) AS id, unnest($2::text[]) AS mid,
                     unnest($3::text[]) AS recipient, unnest($4::int[]) AS attempts,
                     string_to_array(unnest($5::text[]), chr(31)) AS reasons,
                     unnest($6::timestamptz[]) AS accepted_at) t
        WHERE d.allocation_event_id = t.id
        """,
        [o.event.event_id for o in outcomes],
        [o.provider_message_id for o in outcomes],
        [o.event.customer.phone or "" for o in outcomes],
        [o.attempts for o in outcomes],
        [chr(31).join(o.reasons) for o in outcomes],
        [o.accepted_at for o in outcomes],
    )


def _report(outcome: Outcome) -> Event:
    event = outcome.event
    if outcome.provider_message_id is None or outcome.accepted_at is None:
        return MessageFailed(
            event_id=event_id_for("message.failed", event.event_id),
            order_key=event.order_key,
            part=event.part,
            allocation_event_id=event.event_id,
            reasons=outcome.reasons,
            failed_at=utcnow(),
        )
    return MessageSent(
        event_id=event_id_for("message.sent", event.event_id),
        order_key=event.order_key,
        part=event.part,
        allocation_event_id=event.event_id,
        channel="whatsapp",
        provider="whatsapp",
        provider_message_id=outcome.provider_message_id,
        to=event.customer.phone or "",
        attempts=outcome.attempts,
        code_count=len(event.codes),
        paid_at=event.paid_at,
        accepted_at=outcome.accepted_at,
        paid_to_accepted_ms=(outcome.accepted_at - event.paid_at).total_seconds() * 1000,
    )


def _report_row(row: asyncpg.Record) -> Event:
    if row["status"] == "failed":
        return MessageFailed(
            event_id=event_id_for("message.failed", row["allocation_event_id"]),
            order_key=row["order_key"],
            part=row["part"],
            allocation_event_id=row["allocation_event_id"],
            reasons=list(row["reasons"]),
            failed_at=utcnow(),
        )
    return MessageSent(
        event_id=event_id_for("message.sent", row["allocation_event_id"]),
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
