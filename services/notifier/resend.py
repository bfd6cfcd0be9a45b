"""An operator resends an order's codes to a corrected phone number or email address."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import asyncpg

from services.notifier import messages
from services.notifier.handlers import Delivery, Outcome, report, try_provider
from services.notifier.policy import routes
from services.notifier.providers import ProviderError
from shared.codecrypt import CodeDecryptError
from shared.events import CodeAllocated, Event

E164 = re.compile(r"^\+[1-9]\d{7,14}$")
EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")


class ResendError(Exception):
    """The resend cannot be done as asked."""


class UnknownOrder(ResendError):
    """The notifier has no delivery for this order."""


def check_recipient(phone: str | None, email: str | None) -> None:
    if not phone and not email:
        raise ResendError("give a phone number, an email address, or both")
    if phone and not E164.match(phone):
        raise ResendError("the phone number must be E.164, e.g. +9665XXXXXXXX")
    if email and not EMAIL.match(email):
        raise ResendError("the email address is not valid")


async def resend(
    pool: asyncpg.Pool,
    delivery: Delivery,
    order_key: str,
    phone: str | None = None,
    email: str | None = None,
) -> tuple[list[dict[str, Any]], list[Event]]:
    """Send every part of the order again (revoked parts excepted); returns what happened per
    part, and `message.sent` for parts that had failed and now went out."""
    check_recipient(phone, email)
    rows = await pool.fetch(
        "SELECT allocation_event_id, part, status, event FROM deliveries"
        " WHERE order_key = $1 ORDER BY part",
        order_key,
    )
    if not rows:
        raise UnknownOrder(f"no delivery for order {order_key}")
    # codes withdrawn from a cancelled order are never sent again, even those delivered
    # before the cancellation arrived (the revocations table outlives restarts)
    withdrawn = {
        r["part"]
        for r in await pool.fetch("SELECT part FROM revocations WHERE order_key = $1", order_key)
    }
    results: list[dict[str, Any]] = []
    events: list[Event] = []
    journal = delivery.journal(pool)
    for row in rows:
        revoked = row["status"] == "revoked" or withdrawn & {0, row["part"]}
        if revoked or row["event"] is None:
            results.append({"part": row["part"], "status": "skipped", "reasons": ["revoked"]})
            continue
        original = CodeAllocated.model_validate_json(row["event"])
        customer = original.customer.model_copy(update={"phone": phone, "email": email})
        event = original.model_copy(update={"customer": customer})
        store = delivery.stores.get(event.store_id)
        outcome = Outcome(event)
        try:
            content = messages.content(event, delivery.cipher, store)
        except CodeDecryptError as exc:
            results.append({"part": row["part"], "status": "failed", "reasons": [str(exc)]})
            continue
        deadline = asyncio.get_running_loop().time() + delivery.deadline_s
        for route in routes(event, store, delivery.providers):
            if not delivery.breaker(route.provider.name).allow():
                outcome.reasons.append(f"{route.provider.name}: skipped, circuit open")
                continue
            message = messages.outbound(
                content, route.channel, route.to, "", store, delivery.whatsapp_template
            )
            try:
                await try_provider(
                    route, message, event, journal, delivery, outcome, deadline, None, "resend"
                )
                break
            except ProviderError as exc:
                outcome.reasons.append(str(exc))
        accepted = outcome.provider_message_id is not None
        if accepted and row["status"] == "failed":
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
                events.append(report(outcome))
        results.append(
            {
                "part": row["part"],
                "status": "accepted" if accepted else "failed",
                "channel": outcome.channel,
                "provider": outcome.provider,
                "provider_message_id": outcome.provider_message_id,
                "to": outcome.to,
                "reasons": outcome.reasons,
            }
        )
    return results, events
