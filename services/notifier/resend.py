"""An operator sends an order's codes again: to the buyer, or to a corrected phone or address.

A resend is the one way codes can go to someone the order did not name, so each one is audited
(`resends`: who, when, which order, the original recipient and this one; never the codes)
before anything is sent, and limited per order and per caller over a sliding hour, counted in
the database so every replica enforces the same limit. Revoked parts are never sent again, even
when the revocation arrives while the resend is under way, or on another replica.
"""

from __future__ import annotations

import enum
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from services.notifier import messages
from services.notifier.delivery import Delivery, PartStatus, Purpose
from services.notifier.handlers import report
from services.notifier.policy import routes
from services.notifier.routing import Outcome, try_routes
from shared.codecrypt import CodeDecryptError
from shared.events import CodeAllocated, Event

E164 = re.compile(r"^\+[1-9]\d{7,14}$")
EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")
ORDER_KEY_MAX = 512
REASON_MAX = 500
log = logging.getLogger(__name__)


class ResendError(Exception):
    """The resend cannot be done as asked."""

    error = "invalid_recipient"


class InvalidOrderKey(ResendError):
    error = "invalid_order_key"


class InvalidReason(ResendError):
    error = "invalid_reason"


class UnknownOrder(ResendError):
    """The notifier has no delivery for this order."""

    error = "unknown_order"


class TooManyResends(ResendError):
    error = "too_many_resends"

    def __init__(self, detail: str, retry_after_s: float):
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class PartResent(enum.StrEnum):
    """What a resend did with one part (the answer's and the audit's `parts[].status`)."""

    ACCEPTED = "accepted"
    FAILED = "failed"
    SKIPPED = "skipped"  # revoked: never sent again


class ResendOutcome(enum.StrEnum):
    """A resend as a whole (`resends.outcome`)."""

    SENT = "sent"
    PARTIAL = "partial"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class ResendLimits:
    per_order: int = 3
    per_caller: int = 30
    window_s: float = 3600.0


DEFAULT_LIMITS = ResendLimits()


@dataclass
class ResendResult:
    audit_id: int
    original: dict[str, str | None]
    recipient: dict[str, str | None]
    recipient_changed: bool
    parts: list[dict[str, Any]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def answer(self) -> dict[str, Any]:
        return {
            "audit_id": self.audit_id,
            "original_recipient": self.original,
            "recipient": self.recipient,
            "recipient_changed": self.recipient_changed,
            "parts": self.parts,
        }


def check_order_key(order_key: str) -> None:
    """An order key PostgreSQL can hold: printable (no NUL, no control or lone surrogate)."""
    if not order_key or len(order_key) > ORDER_KEY_MAX or not order_key.isprintable():
        raise InvalidOrderKey(f"an order key is 1 to {ORDER_KEY_MAX} printable characters")


def check_recipient(phone: str | None, email: str | None) -> None:
    if phone and not E164.match(phone):
        raise ResendError("the phone number must be E.164, e.g. +9665XXXXXXXX")
    if email and (len(email) > 254 or not email.isprintable() or not EMAIL.match(email)):
        raise ResendError("the email address is not valid")


def check_reason(reason: str | None) -> None:
    if reason is not None and (len(reason) > REASON_MAX or not reason.isprintable()):
        raise InvalidReason(f"the reason is at most {REASON_MAX} printable characters")


async def resend(
    pool: asyncpg.Pool,
    delivery: Delivery,
    order_key: str,
    phone: str | None = None,
    email: str | None = None,
    *,
    caller: str = "",
    reason: str | None = None,
    limits: ResendLimits = DEFAULT_LIMITS,
) -> ResendResult:
    """Send every part of the order again (revoked parts excepted), to the buyer or to the
    phone/address given; returns what happened per part, and `message.sent` for parts that
    had failed and now went out."""
    check_order_key(order_key)
    check_recipient(phone, email)
    check_reason(reason)
    rows = await pool.fetch(
        "SELECT allocation_event_id, part, status, event FROM deliveries"
        " WHERE order_key = $1 ORDER BY part",
        order_key,
    )
    if not rows:
        raise UnknownOrder(f"no delivery for order {order_key}")
    allocations = [CodeAllocated.model_validate_json(r["event"]) for r in rows if r["event"]]
    buyer = allocations[0].customer if allocations else None
    original = {"phone": buyer.phone if buyer else None, "email": buyer.email if buyer else None}
    recipient = {"phone": phone, "email": email} if phone or email else dict(original)
    result = ResendResult(
        audit_id=0,
        original=original,
        recipient=recipient,
        recipient_changed=recipient != original,
    )
    result.audit_id = await _audit_start(pool, order_key, caller, reason, result, limits)
    try:
        await _send_parts(pool, delivery, order_key, rows, recipient, result)
    finally:
        await _audit_finish(pool, result)
    return result


async def _audit_start(
    pool: asyncpg.Pool,
    order_key: str,
    caller: str,
    reason: str | None,
    result: ResendResult,
    limits: ResendLimits,
) -> int:
    """Count this resend against the order's and the caller's limits and record it, in one
    transaction (locked per order and per caller, so concurrent requests cannot both pass)."""
    async with pool.acquire() as conn, conn.transaction():
        # always the order first, then the caller: two requests never wait on each other
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('resend:order:' || $1))", order_key
        )
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('resend:caller:' || $1))", caller)
        for column, value, limit, what in (
            ("order_key", order_key, limits.per_order, "this order"),
            ("caller", caller, limits.per_caller, "this caller"),
        ):
            row = await conn.fetchrow(
                f"""
                SELECT count(*), extract(epoch FROM min(requested_at)
                    + make_interval(secs => $2) - now())
                FROM resends WHERE {column} = $1
                  AND requested_at > now() - make_interval(secs => $2)
                """,
                value,
                limits.window_s,
            )
            assert row is not None  # an aggregate always has a row
            count, wait = row
            if count >= limit:
                log.warning("resend of %s by %r refused: %s's limit", order_key, caller, what)
                raise TooManyResends(
                    f"{what} has had {count} resends in the last {limits.window_s / 60:.0f}"
                    " minutes; try later",
                    max(1.0, float(wait or 1)),
                )
        audit_id: int = await conn.fetchval(
            """
            INSERT INTO resends (order_key, caller, original_phone, original_email, phone,
                                 email, recipient_changed, reason)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id
            """,
            order_key,
            caller,
            result.original["phone"],
            result.original["email"],
            result.recipient["phone"],
            result.recipient["email"],
            result.recipient_changed,
            reason,
        )
    if result.recipient_changed:
        # the exception the audit exists for: say so where operators look first
        log.warning(
            "order %s resent to a new recipient by %r (audit %d)", order_key, caller, audit_id
        )
    return audit_id


async def _audit_finish(pool: asyncpg.Pool, result: ResendResult) -> None:
    statuses = {p["status"] for p in result.parts}
    if statuses <= {PartResent.SKIPPED}:
        outcome = ResendOutcome.SKIPPED
    elif statuses <= {PartResent.ACCEPTED, PartResent.SKIPPED}:
        outcome = ResendOutcome.SENT
    elif PartResent.ACCEPTED in statuses:
        outcome = ResendOutcome.PARTIAL
    else:
        outcome = ResendOutcome.FAILED
    summary = [
        {k: p.get(k) for k in ("part", "status", "channel", "provider", "provider_message_id")}
        for p in result.parts
    ]
    await pool.execute(
        "UPDATE resends SET outcome = $2, parts = $3::jsonb, finished_at = now() WHERE id = $1",
        result.audit_id,
        outcome,
        json.dumps(summary),
    )


async def _withdrawn(pool: asyncpg.Pool, delivery: Delivery, event: CodeAllocated) -> bool:
    """Revoked here (this replica's memory) or anywhere (the revocations table, which another
    replica may have written a moment ago)."""
    if delivery.inflight.is_revoked(event):
        return True
    found = await pool.fetchval(
        "SELECT 1 FROM revocations WHERE order_key = $1 AND part IN (0, $2)",
        event.order_key,
        event.part,
    )
    return found is not None


async def _send_parts(
    pool: asyncpg.Pool,
    delivery: Delivery,
    order_key: str,
    rows: list[asyncpg.Record],
    recipient: dict[str, str | None],
    result: ResendResult,
) -> None:
    # codes withdrawn from a cancelled order are never sent again, even those delivered
    # before the cancellation arrived (the revocations table outlives restarts)
    withdrawn_parts = {
        r["part"]
        for r in await pool.fetch("SELECT part FROM revocations WHERE order_key = $1", order_key)
    }
    channels = delivery.channels

    async def withdrawn(event: CodeAllocated) -> bool:
        # a revocation may arrive while an earlier route was tried, on any replica
        return await _withdrawn(pool, delivery, event)

    for row in rows:
        revoked = row["status"] == PartStatus.REVOKED or withdrawn_parts & {0, row["part"]}
        if revoked or row["event"] is None:
            result.parts.append(_skipped(row["part"]))
            continue
        original = CodeAllocated.model_validate_json(row["event"])
        customer = original.customer.model_copy(update=recipient)
        event = original.model_copy(update={"customer": customer})
        store = channels.stores.get(event.store_id)
        outcome = Outcome(event)
        try:
            content = messages.content(event, channels.cipher, store)
        except CodeDecryptError as exc:
            result.parts.append(
                {"part": row["part"], "status": PartResent.FAILED, "reasons": [str(exc)]}
            )
            continue
        await try_routes(
            routes(event, store, channels.providers),
            content,
            store,
            delivery,
            outcome,
            withdrawn=withdrawn,
            purpose=Purpose.RESEND,
        )
        accepted = outcome.provider_message_id is not None
        if outcome.revoked and not accepted:
            result.parts.append(_skipped(row["part"]))
            continue
        if accepted and row["status"] == PartStatus.FAILED:
            reopened = await pool.execute(
                """
                UPDATE deliveries SET status = 'accepted', channel = $2, provider = $3,
                    provider_message_id = $4, recipient = $5, accepted_at = $6,
                    attempts = attempts + $7, updated_at = now()
                WHERE allocation_event_id = $1 AND status = 'failed'
                """,
                row["allocation_event_id"],
                outcome.channel,
                outcome.provider,
                outcome.provider_message_id,
                outcome.to,
                outcome.accepted_at,
                outcome.attempts,
            )
            if reopened.endswith("1"):
                result.events.append(report(outcome))
        result.parts.append(
            {
                "part": row["part"],
                "status": PartResent.ACCEPTED if accepted else PartResent.FAILED,
                "channel": outcome.channel,
                "provider": outcome.provider,
                "provider_message_id": outcome.provider_message_id,
                "to": outcome.to,
                "reasons": outcome.reasons,
            }
        )


def _skipped(part: int) -> dict[str, Any]:
    return {"part": part, "status": PartResent.SKIPPED, "reasons": ["revoked"]}
