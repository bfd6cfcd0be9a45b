"""The route loop that sending and resending share: each (channel, provider) in order, past open
circuits, under the provider's rate limit, retried with backoff while the deadline allows,
every call journalled 'sending' before and with its outcome after.

What differs between a delivery and an operator's resend is given by the caller: the routes,
how a withdrawn part is noticed, the attempt's purpose, and the key a resumed attempt repeats.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import Counter

from services.notifier import messages
from services.notifier.breaker import State
from services.notifier.delivery import AttemptStatus, Delivery, Purpose
from services.notifier.journal import Begin, Finish
from services.notifier.policy import Route
from services.notifier.providers import Outbound, ProviderError
from shared.events import CodeAllocated, StoreConfig, attempt_reference, utcnow

ATTEMPTS = Counter(
    "tasleem_notifier_attempts_total",
    "Provider calls, by provider and outcome",
    ["provider", "outcome"],
)


class Revoked(Exception):
    """The part was revoked (`code.revoked`) before this attempt could start."""


@dataclass
class Outcome:
    event: CodeAllocated
    attempts: int = 0
    channel: str | None = None
    provider: str | None = None
    to: str = ""
    provider_message_id: str | None = None
    accepted_at: datetime | None = None
    revoked: bool = False
    reasons: list[str] = field(default_factory=list)
    attempt_key: str | None = None


Withdrawn = Callable[[CodeAllocated], Awaitable[bool]]


async def try_routes(
    candidates: list[Route],
    content: messages.Content,
    store: StoreConfig | None,
    delivery: Delivery,
    outcome: Outcome,
    *,
    withdrawn: Withdrawn,
    purpose: Purpose = Purpose.DELIVERY,
    first_key: str | None = None,
) -> None:
    """Try each route in turn until one provider accepts; `outcome` says what happened.
    `withdrawn` is asked before each route; `first_key` is the key the first call repeats (an
    interrupted attempt resumed with the same key)."""
    event = outcome.event
    deadline = asyncio.get_running_loop().time() + delivery.policy.deadline_s
    for route in candidates:
        if await withdrawn(event):
            outcome.revoked = True
            break
        if not delivery.channels.breaker(route.provider.name).allow():
            outcome.reasons.append(f"{route.provider.name}: skipped, circuit open")
            continue
        message = messages.outbound(
            content, route.channel, route.to, "", store, delivery.channels.whatsapp_template
        )
        try:
            await try_provider(
                route, message, event, delivery, outcome, deadline, first_key, purpose
            )
            break
        except Revoked:
            outcome.revoked = True
            break
        except ProviderError as exc:
            outcome.reasons.append(str(exc))
        first_key = None


async def try_provider(
    route: Route,
    message: Outbound,
    event: CodeAllocated,
    delivery: Delivery,
    outcome: Outcome,
    deadline: float,
    first_key: str | None,
    purpose: Purpose,
) -> None:
    """One provider, retried with backoff and jitter while it is retriable, the circuit is
    closed and the message's deadline allows."""
    provider = route.provider
    breaker = delivery.channels.breaker(provider.name)
    policy = delivery.policy
    clock = asyncio.get_running_loop().time
    # A plain loop rather than tenacity's AsyncRetrying: this runs for every message and
    # tenacity's per-call set-up cost a measurable share of the notifier's CPU (see bench).
    for number in range(policy.attempts_per_provider):
        key = first_key or uuid.uuid4().hex
        first_key = None
        try:
            mid = await _attempt(route, message, event, key, delivery, outcome, purpose)
        except ProviderError as exc:
            delay = min(policy.backoff_s * 2**number, 2.0) + random.uniform(0, policy.backoff_s)
            last = number + 1 == policy.attempts_per_provider
            if not exc.retriable or breaker.state is not State.CLOSED or last:
                raise
            if clock() + delay >= deadline:
                raise
            await asyncio.sleep(delay)
            continue
        outcome.channel, outcome.provider, outcome.to = route.channel, provider.name, route.to
        outcome.provider_message_id, outcome.accepted_at = mid, utcnow()
        return


async def _attempt(
    route: Route,
    message: Outbound,
    event: CodeAllocated,
    key: str,
    delivery: Delivery,
    outcome: Outcome,
    purpose: Purpose,
) -> str:
    """One provider call, journalled 'sending' before and with its outcome after."""
    provider = route.provider
    channels, journal = delivery.channels, delivery.inflight.journal
    breaker = channels.breaker(provider.name)
    limiter = channels.limiters.get(provider.name)
    async with channels.concurrency:
        if limiter is not None:
            await limiter.acquire()
        # a resend's retries stop on a revocation too (resend.py catches Revoked)
        if delivery.inflight.is_revoked(event):
            raise Revoked()
        begun = Begin(event.event_id, key, route.channel, provider.name, route.to, purpose)
        if not await journal.begin(begun):
            raise Revoked()
        outcome.attempts += 1
        try:
            mid = await provider.send(
                dataclasses.replace(
                    message, key=key, reference=attempt_reference(key, event.order_key)
                )
            )
        except ProviderError as exc:
            ATTEMPTS.labels(provider.name, exc.kind).inc()
            if exc.kind in ("unavailable", "rejected"):
                breaker.failure()
            elif exc.kind == "recipient":
                breaker.success()  # it answered: the provider is healthy
            await journal.finish(Finish(key, AttemptStatus.FAILED, None, str(exc)))
            raise
    ATTEMPTS.labels(provider.name, "accepted").inc()
    breaker.success()
    if purpose == Purpose.DELIVERY:
        outcome.attempt_key = key  # recorded with the part's outcome, in the same statement
    else:
        await journal.finish(Finish(key, AttemptStatus.ACCEPTED, mid, None))
    return mid
