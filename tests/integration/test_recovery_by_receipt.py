"""An attempt a crash left 'sending' is resolved by its receipt (or Twilio's message list), not
by sending again; only past the wait is it sent again, as README.md states. Receipts take
their real path: sandbox -> gateway -> `delivery.receipt` -> the notifier's journal."""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.notifier import receipts
from services.notifier.handlers import deliver
from services.notifier.journal import Finish, persistently
from services.notifier.recovery import INTERRUPTED
from shared.events import MessageSent
from tests.integration import test_notifier_failover as failover
from tests.integration.test_notifier_failover import Crash, CrashAfterSend, allocation, until

world = failover.world  # the fixture: the sandbox, the gateway and the notifier's journal

pytestmark = pytest.mark.integration


def resolved(provider: str, how: str) -> float:
    return INTERRUPTED.labels(provider, how)._value.get()


async def crash_then_redeliver(world, event, provider: str):
    world.delivery.channels.providers = {
        world.all_providers[provider].channel: [CrashAfterSend(world.all_providers[provider])]
    }
    with pytest.raises(Crash):
        await deliver([event], world.pool, world.delivery)
    assert (await world.row(event))["status"] == "sending"
    world.use(provider)
    return await deliver([event], world.pool, world.delivery)  # Kafka redelivers the batch


async def test_a_whatsapp_attempt_cut_off_by_a_crash_is_resolved_by_its_receipt(world, cipher):
    world.delivery.policy = replace(world.delivery.policy, receipt_wait_s=15)
    before = resolved("whatsapp", "receipt")
    event = allocation(cipher, "rr1", "RR-1", phone="+966551116666")

    (sent,) = await crash_then_redeliver(world, event, "whatsapp")

    assert isinstance(sent, MessageSent) and sent.provider == "whatsapp"
    (message,) = await world.inbox("+966551116666")  # once: the receipt said it went out
    assert sent.provider_message_id == message["id"]
    assert resolved("whatsapp", "receipt") == before + 1
    # the kept receipt is applied once the attempt is recorded: delivered
    assert await receipts.reapply(world.pool, world.delivery) >= 1
    assert (await world.row(event))["status"] == "delivered"


async def test_receipts_later_than_the_wait_mean_the_message_is_sent_again(world, cipher):
    """The documented window: no receipt within `receipt_wait_s`, so a second message; the
    late receipt still lands, and the record shows both arrived."""
    async with world.session.put(f"{world.sandbox}/receipts/_settings", json={"delay_s": 2}):
        pass
    world.delivery.policy = replace(world.delivery.policy, receipt_wait_s=0.3)
    before = resolved("whatsapp", "sent_again")
    event = allocation(cipher, "rr2", "RR-2", phone="+966551117777")

    (sent,) = await crash_then_redeliver(world, event, "whatsapp")

    assert isinstance(sent, MessageSent)
    assert len(await world.inbox("+966551117777")) == 2
    assert resolved("whatsapp", "sent_again") == before + 1

    async def both_delivered() -> bool:
        await receipts.reapply(world.pool, world.delivery)
        rows = await world.pool.fetch(
            "SELECT status FROM attempts WHERE allocation_event_id = $1", event.event_id
        )
        return [r["status"] for r in rows] == ["delivered", "delivered"]

    await until(both_delivered, limit_s=15)


async def test_a_twilio_attempt_cut_off_by_a_crash_is_found_in_its_message_list(world, cipher):
    async with world.session.put(f"{world.sandbox}/receipts/_settings", json={"delay_s": 60}):
        pass
    world.delivery.policy = replace(
        world.delivery.policy, receipt_wait_s=0.3
    )  # no receipt will come in time: the lookup decides
    before = resolved("twilio", "lookup")
    event = allocation(cipher, "rr3", "RR-3", phone="+966551118888")

    (sent,) = await crash_then_redeliver(world, event, "twilio")

    assert isinstance(sent, MessageSent) and sent.provider_message_id.startswith("SM")
    assert len(await world.inbox("+966551118888")) == 1
    assert resolved("twilio", "lookup") == before + 1


async def test_a_failed_receipt_for_a_cut_off_attempt_moves_to_the_next_channel(world, cipher):
    await world.fault("whatsapp", fail_after_accept=True)
    world.delivery.policy = replace(world.delivery.policy, receipt_wait_s=15)
    event = allocation(cipher, "rr4", "RR-4", phone="+966551119999")
    world.delivery.channels.providers = {
        "whatsapp": [CrashAfterSend(world.all_providers["whatsapp"])]
    }
    with pytest.raises(Crash):
        await deliver([event], world.pool, world.delivery)
    world.use("whatsapp", "unifonic")

    (sent,) = await deliver([event], world.pool, world.delivery)

    assert isinstance(sent, MessageSent) and sent.provider == "unifonic"
    channels = sorted(m["channel"] for m in await world.inbox("+966551119999"))
    assert channels == ["sms", "whatsapp"]  # WhatsApp's was not sent twice


async def test_a_journal_write_outlives_a_refused_connection():
    """The PostgreSQL-restart duplicate: while the server is down a new connection is refused
    with an OSError; the record of what a provider accepted is retried, not given up."""
    calls: list[int] = []

    async def write(items: list[Finish]) -> list[None]:
        calls.append(len(items))
        if len(calls) < 3:
            raise ConnectionRefusedError(111, "Connect call failed")
        return [None] * len(items)

    item = Finish("k", "accepted", "wamid.1", None)
    assert await persistently(write, within_s=5)([item]) == [None]
    assert len(calls) == 3
