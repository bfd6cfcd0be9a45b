"""A revocation that arrives while a part is being sent — during a provider call, between
retries, on another replica, before the allocation, or during an operator's resend — means
nothing more is sent. Each test leaves exactly one guard able to stop the send, so it fails
when that guard is removed:

- `_attempt`'s in-memory check (handlers.py): a retry after this replica heard `code.revoked`;
- `Journal.begin` refusing a part no longer open (journal.py): a revocation on another replica;
- `_claim`'s revocations lookup (handlers.py): a revocation before the allocation;
- resend's `withdrawn` set and its per-route check (resend.py).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from services.notifier.handlers import deliver, revoke
from services.notifier.resend import resend
from shared.events import CodeAllocated, CodeRevoked
from tests.integration.notifier_support import allocation, new_delivery, running_notifier

pytestmark = pytest.mark.integration


@pytest.fixture
async def notifier(cipher, service_databases):
    # one attempt takes 300 ms and fails: the window in which the revocation arrives
    async with running_notifier(cipher, service_databases["notifier"], backoff_s=0.3) as n:
        yield n


def revocation(event: CodeAllocated) -> CodeRevoked:
    return CodeRevoked(
        event_id=f"rv-{event.event_id}",
        order_key=event.order_key,
        code_ids=[c.code_id for c in event.codes],
        parts=[event.part],
        reason="refunded",
    )


async def until_attempted(
    notifier, event: CodeAllocated, count: int = 1, status: str | None = None
) -> None:
    """Until `count` attempts were made (with `status`, e.g. 'failed': the attempt is over, and
    the next one waits out its backoff, so a fault changed now cannot reach the one before)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        attempts = await notifier.attempts(event)
        if len([a for a in attempts if status in (None, a["status"])]) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no attempt started")


async def test_a_revocation_heard_during_a_retry_stops_the_next_attempt(notifier, cipher):
    """This replica hears `code.revoked` while WhatsApp is failing: the retry must not go,
    even though the database has not been told yet (the in-memory mark comes first)."""
    notifier.use("whatsapp")
    notifier.delivery.policy = replace(notifier.delivery.policy, attempts_per_provider=4)
    event = allocation(cipher, "r1", "REV-1", phone="+966551000001")
    await notifier.fault("whatsapp", down=True, latency_ms=300)
    sending = asyncio.create_task(deliver([event], notifier.pool, notifier.delivery))
    await until_attempted(notifier, event, status="failed")
    notifier.delivery.inflight.revoked.add((event.order_key, event.part))  # heard, not yet written
    await notifier.fault("whatsapp", down=False, latency_ms=0)  # a retry would now succeed
    assert await sending == []
    assert await notifier.inbox("+966551000001") == []
    assert len(await notifier.attempts(event)) == 1


async def test_a_revocation_on_another_replica_stops_this_one(notifier, cipher):
    """Replica B consumes `code.revoked` while replica A is between retries of the part: A
    knows nothing in memory; the journal refuses A's next attempt."""
    notifier.use("whatsapp")
    notifier.delivery.policy = replace(notifier.delivery.policy, attempts_per_provider=4)
    other_replica = new_delivery(cipher, notifier.pool)
    event = allocation(cipher, "r2", "REV-2", phone="+966551000002")
    await notifier.fault("whatsapp", down=True, latency_ms=300)
    sending = asyncio.create_task(deliver([event], notifier.pool, notifier.delivery))
    await until_attempted(notifier, event, status="failed")
    await revoke([revocation(event)], notifier.pool, other_replica)
    await notifier.fault("whatsapp", down=False, latency_ms=0)
    assert await sending == []
    assert await notifier.inbox("+966551000002") == []
    row = await notifier.pool.fetchrow(
        "SELECT status FROM deliveries WHERE allocation_event_id = $1", event.event_id
    )
    assert row["status"] == "revoked"


async def test_a_revocation_before_the_allocation_on_another_replica(notifier, cipher):
    event = allocation(cipher, "r3", "REV-3", phone="+966551000003")
    await revoke([revocation(event)], notifier.pool, new_delivery(cipher, notifier.pool))
    assert await deliver([event], notifier.pool, notifier.delivery) == []
    assert await notifier.inbox("+966551000003") == []
    assert await notifier.attempts(event) == []


async def test_a_resend_never_sends_a_part_revoked_after_it_was_delivered(notifier, cipher):
    event = allocation(cipher, "r4", "REV-4", phone="+966551000004")
    assert len(await deliver([event], notifier.pool, notifier.delivery)) == 1
    await revoke(
        [revocation(event)], notifier.pool, new_delivery(cipher, notifier.pool)
    )  # a late refund
    result = await resend(
        notifier.pool, new_delivery(cipher, notifier.pool), event.order_key, caller="amal"
    )
    assert [p["status"] for p in result.parts] == ["skipped"]
    assert len(await notifier.inbox("+966551000004")) == 1  # only the original message


async def test_a_revocation_during_a_resend_stops_its_fail_over(notifier, cipher):
    """An operator resends; WhatsApp fails; meanwhile another replica hears `code.revoked`:
    the resend must not go on to SMS."""
    event = allocation(cipher, "r5", "REV-5", phone="+966551000005")
    assert len(await deliver([event], notifier.pool, notifier.delivery)) == 1
    await notifier.fault("whatsapp", down=True, latency_ms=300)
    resending = asyncio.create_task(
        resend(notifier.pool, notifier.delivery, event.order_key, "+966551009995", caller="amal")
    )
    await until_attempted(notifier, event, count=2)  # the delivery, then the resend's first
    await revoke([revocation(event)], notifier.pool, new_delivery(cipher, notifier.pool))
    result = await resending
    assert [p["status"] for p in result.parts] == ["skipped"]
    assert await notifier.inbox("+966551009995") == []
    providers = [a["provider"] for a in await notifier.attempts(event) if a["purpose"] == "resend"]
    assert "unifonic" not in providers


async def test_a_revocation_heard_during_a_resend_retry_stops_it(notifier, cipher):
    notifier.use("whatsapp")
    notifier.delivery.policy = replace(notifier.delivery.policy, attempts_per_provider=4)
    event = allocation(cipher, "r6", "REV-6", phone="+966551000006")
    assert len(await deliver([event], notifier.pool, notifier.delivery)) == 1
    await notifier.fault("whatsapp", down=True, latency_ms=300)
    resending = asyncio.create_task(
        resend(notifier.pool, notifier.delivery, event.order_key, "+966551009996", caller="amal")
    )
    await until_attempted(notifier, event, count=1, status="failed")  # the resend's first
    notifier.delivery.inflight.revoked.add((event.order_key, event.part))
    await notifier.fault("whatsapp", down=False, latency_ms=0)
    result = await resending
    assert [p["status"] for p in result.parts] == ["skipped"]
    assert await notifier.inbox("+966551009996") == []
