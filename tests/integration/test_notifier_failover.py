"""The notifier's channels against the sandbox over real HTTP and a real database: failover,
circuit breakers, rate limits, receipts, revocation, crash resolution and operator resend."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from deploy.embedded.broker import client_settings
from deploy.embedded.processes import free_port
from deploy.sandbox.app import init_app
from deploy.sandbox.config import SandboxConfig, TwilioConfig, UnifonicConfig, WhatsAppConfig
from deploy.sandbox.whatsapp import WHATSAPP
from services.notifier import admin
from services.notifier.breaker import CircuitBreaker, State
from services.notifier.delivery import Channels, Delivery, DeliveryPolicy, InFlight
from services.notifier.email import SesEmail
from services.notifier.handlers import deliver, revoke
from services.notifier.main import SQL, drain, rate_limiter, sweep
from services.notifier.policy import StoreDirectory
from services.notifier.providers import Outbound, Provider
from services.notifier.resend import DEFAULT_LIMITS, resend
from services.notifier.settings import NotifierSettings
from services.notifier.sms import Twilio, Unifonic
from services.notifier.whatsapp import WhatsAppCloud
from shared import admin_auth, kafka_clients
from shared.admin_auth import admin_guard
from shared.codecrypt import CodeCipher
from shared.db import connect_and_migrate
from shared.events import (
    AllocatedCode,
    CodeAllocated,
    CodeRevoked,
    Customer,
    Event,
    MessageFailed,
    MessageSent,
    OrderLine,
    StoreConfig,
    event_id_for,
)
from shared.kafka import ConsumerLoop, publish
from tests.integration.receipt_support import receipt_path

pytestmark = pytest.mark.integration

WA_TOKEN, WA_SECRET = "wa-token", "wa-app-secret"
UNIFONIC_SID, DLR_TOKEN = "unifonic-sid", "dlr-token"
TWILIO_SID, TWILIO_TOKEN = "AC" + "1" * 32, "twilio-token"
ADMIN_TOKEN = "admin-token"


@dataclass
class World:
    sandbox: str
    notifier: str
    pool: asyncpg.Pool
    delivery: Delivery
    session: aiohttp.ClientSession
    all_providers: dict[str, Provider]
    late: list[Event] = field(default_factory=list)

    def use(self, *names: str) -> None:
        """Serve channels with these providers only, in this order."""
        chosen: dict[str, list[Provider]] = {}
        for name in names:
            provider = self.all_providers[name]
            chosen.setdefault(provider.channel, []).append(provider)
        self.delivery.channels.providers = chosen

    async def inbox(self, to: str | None = None) -> list[dict[str, Any]]:
        params = {"to": to} if to else {}
        async with self.session.get(f"{self.sandbox}/inbox", params=params) as resp:
            messages: list[dict[str, Any]] = (await resp.json())["messages"]
            return messages

    async def fault(self, party: str, **change: Any) -> None:
        async with self.session.put(f"{self.sandbox}/faults/{party}", json=change) as resp:
            assert resp.status == 200, await resp.text()

    async def row(self, event: CodeAllocated) -> asyncpg.Record:
        row = await self.pool.fetchrow(
            "SELECT * FROM deliveries WHERE allocation_event_id = $1", event.event_id
        )
        assert row is not None
        return row


def allocation(
    cipher: CodeCipher,
    order: str,
    code: str,
    *,
    phone: str | None = "+966551112222",
    email: str | None = None,
    locale: str = "en",
    part: int = 1,
) -> CodeAllocated:
    key = f"standard:s1:{order}"
    now = datetime.now(UTC)
    return CodeAllocated(
        event_id=event_id_for("code.allocated", key, part),
        order_key=key,
        part=part,
        store_id="s1",
        store_name="Gulf Games",
        order_id=order,
        customer=Customer(name="Sara", phone=phone, email=email, locale=locale),  # type: ignore[arg-type]
        lines=[OrderLine(sku="PSN", quantity=1, title="PlayStation 50")],
        codes=[AllocatedCode(code_id=1, sku="PSN", sealed=cipher.seal(code, "PSN").to_text())],
        paid_at=now,
        allocated_at=now,
    )


def make_breakers(names: list[str]) -> dict[str, CircuitBreaker]:
    return {name: CircuitBreaker(name, threshold=3, cooldown_s=0.3) for name in names}


@pytest.fixture
async def world(cipher: CodeCipher, database: str, kafka: str) -> AsyncIterator[World]:
    pool = await connect_and_migrate(database, "notifier", SQL)
    session = aiohttp.ClientSession()
    names = ["whatsapp", "unifonic", "twilio", "email"]
    port = free_port()
    notifier = f"http://127.0.0.1:{port}"
    late: list[Event] = []

    async def report(events: list[Event]) -> None:
        late.extend(events)

    delivery = Delivery.over(
        pool,
        Channels(
            providers={},
            cipher=cipher,
            concurrency=asyncio.Semaphore(64),
            breakers=make_breakers(names),
        ),
        DeliveryPolicy(deadline_s=5, backoff_s=0.01),
        on_late=report,
    )
    app = web.Application(
        middlewares=[admin_guard("notifier", admin_auth.entry("tests", "operate", ADMIN_TOKEN))]
    )
    app[admin.POOL] = pool
    app[admin.DELIVERY] = delivery
    app[admin.PUBLISH] = report
    app[admin.LIMITS] = DEFAULT_LIMITS
    app.add_routes(admin.ROUTES)
    notifier_server = TestServer(app, port=port)
    await notifier_server.start_server()
    # receipts go where they go in production: to the gateway, then through Kafka
    receipt_gateway = receipt_path(
        database,
        kafka,
        pool,
        delivery,
        whatsapp_app_secret=WA_SECRET,
        twilio_auth_token=TWILIO_TOKEN,
        unifonic_receipt_token=DLR_TOKEN,
    )
    gateway = await receipt_gateway.__aenter__()
    config = SandboxConfig(
        gateway="http://127.0.0.1:1",
        stores=[],
        whatsapp=WhatsAppConfig(
            token=WA_TOKEN,
            phone_number_id="42",
            app_secret=WA_SECRET,
            status_webhook_url=f"{gateway}/webhooks/whatsapp",
        ),
        unifonic=UnifonicConfig(
            app_sid=UNIFONIC_SID, dlr_url=f"{gateway}/webhooks/unifonic?token={DLR_TOKEN}"
        ),
        twilio=TwilioConfig(account_sid=TWILIO_SID, auth_token=TWILIO_TOKEN),
    )
    sandbox_server = TestServer(init_app(config))
    await sandbox_server.start_server()
    sandbox = str(sandbox_server.make_url("")).rstrip("/")
    providers: dict[str, Provider] = {
        "whatsapp": WhatsAppCloud(session, sandbox, "21.0", WA_TOKEN, "42"),
        "unifonic": Unifonic(session, sandbox, UNIFONIC_SID, "Tasleem"),
        "twilio": Twilio(
            session,
            sandbox,
            TWILIO_SID,
            TWILIO_TOKEN,
            "+15005550006",
            status_callback=f"{gateway}/webhooks/twilio",
        ),
        "email": SesEmail(session, sandbox, "codes@tasleem.test", "AKIDSANDBOX", "secret"),
    }
    w = World(sandbox, notifier, pool, delivery, session, providers, late)
    w.use("whatsapp", "unifonic", "twilio", "email")
    try:
        yield w
    finally:
        await asyncio.gather(*delivery.inflight.tasks.values(), return_exceptions=True)
        await sandbox_server.close()
        await receipt_gateway.__aexit__(None, None, None)
        await notifier_server.close()
        await session.close()
        await pool.close()


async def until(check: Any, limit_s: float = 5.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def test_whatsapp_outage_mid_surge_every_order_delivered_once(world, cipher):
    """1,000 orders; WhatsApp goes fully down for the middle 400 and comes back."""
    events = [
        allocation(
            cipher, f"o{i}", f"CODE-{i:05d}", phone=f"+96655{i:07d}", email=f"b{i}@example.com"
        )
        for i in range(1000)
    ]

    async def run(chunk: list[CodeAllocated]) -> list[Event]:
        reports: list[Event] = []
        for start in range(0, len(chunk), 100):
            reports += await deliver(chunk[start : start + 100], world.pool, world.delivery)
        return reports

    before = await run(events[:300])
    await world.fault("whatsapp", down=True)
    outage_started = time.monotonic()
    during = await run(events[300:700])
    outage_s = time.monotonic() - outage_started
    await world.fault("whatsapp", down=False)
    await asyncio.sleep(0.35)  # the breaker's cool-down: the next message probes WhatsApp
    after = await run(events[700:])

    reports = before + during + after
    assert all(isinstance(r, MessageSent) for r in reports)
    assert len({r.allocation_event_id for r in reports}) == 1000
    inbox = await world.inbox()
    assert len(inbox) == 1000  # exactly once: no buyer got two messages
    by_recipient = {m["to"]: m for m in inbox}
    for i, event in enumerate(events):
        message = by_recipient.get(event.customer.phone) or by_recipient[event.customer.email]
        assert f"CODE-{i:05d}" in message["text"]

    channels = [Counter(r.channel for r in part) for part in (before, during, after)]
    assert channels[0] == {"whatsapp": 300}
    assert channels[1]["whatsapp"] == 0 and channels[1]["sms"] + channels[1]["email"] == 400
    assert channels[2]["whatsapp"] >= 200  # used again after it recovered
    # the outage did not cost each message a trip to WhatsApp: once the circuit opened,
    # new orders skipped it (only the first batch in flight and the probes hit it)
    tried = await world.pool.fetchval(
        """
        SELECT count(*) FROM attempts a JOIN deliveries d USING (allocation_event_id)
        WHERE a.provider = 'whatsapp' AND a.status = 'failed'
        """
    )
    assert tried <= 100 + 20
    assert outage_s < 10
    statuses = await world.pool.fetch("SELECT status, count(*) FROM deliveries GROUP BY 1")
    assert {r["status"]: r["count"] for r in statuses}.keys() <= {"accepted", "delivered"}


async def test_429_is_retried_and_the_rate_limit_holds(cipher, database):
    config = SandboxConfig(
        gateway="http://127.0.0.1:1",
        stores=[],
        whatsapp=WhatsAppConfig(token=WA_TOKEN, phone_number_id="42", throughput_per_s=30),
    )
    app = init_app(config)
    server = TestServer(app)
    await server.start_server()
    pool = await connect_and_migrate(database, "notifier", SQL)
    try:
        async with aiohttp.ClientSession() as session:
            whatsapp = WhatsAppCloud(session, str(server.make_url("")), "21.0", WA_TOKEN, "42")
            delivery = Delivery.over(
                pool,
                Channels(
                    providers={"whatsapp": [whatsapp]},
                    cipher=cipher,
                    concurrency=asyncio.Semaphore(64),
                    breakers=make_breakers(["whatsapp"]),
                ),
                DeliveryPolicy(deadline_s=10, attempts_per_provider=8, backoff_s=0.2),
            )
            # no limiter of ours: the provider answers 130429, and we retry until it takes them
            burst = [
                allocation(cipher, f"r{i}", f"R-{i}", phone=f"+96655{i:07d}") for i in range(60)
            ]
            reports = await deliver(burst, pool, delivery)
            state = app[WHATSAPP]
            assert state.throttled > 0
            assert all(isinstance(r, MessageSent) and r.channel == "whatsapp" for r in reports)
            assert sum(r.attempts for r in reports if isinstance(r, MessageSent)) > 60
            assert delivery.channels.breakers["whatsapp"].state is State.CLOSED  # busy is not down

            # with our limiter below the provider's limit, nothing is refused
            await asyncio.sleep(1.1)
            throttled = state.throttled
            delivery.channels.limiters = {"whatsapp": rate_limiter(25)}
            calm = [
                allocation(cipher, f"c{i}", f"C-{i}", phone=f"+96655{i:07d}") for i in range(50)
            ]
            started = time.monotonic()
            reports = await deliver(calm, pool, delivery)
            elapsed = time.monotonic() - started
            assert all(isinstance(r, MessageSent) and r.attempts == 1 for r in reports)
            assert state.throttled == throttled
            assert elapsed >= 1.5  # 50 messages at 25/s cannot go faster than about 2 s
    finally:
        await pool.close()
        await server.close()


async def test_permanent_errors_move_straight_to_the_next_channel(world, cipher):
    not_on_whatsapp = allocation(cipher, "p1", "P-1", phone="+966500000000")
    (sent,) = await deliver([not_on_whatsapp], world.pool, world.delivery)
    assert isinstance(sent, MessageSent)
    assert (sent.channel, sent.provider, sent.attempts) == ("sms", "unifonic", 2)  # no retry
    assert world.delivery.channels.breakers["whatsapp"].state is State.CLOSED

    world.use("twilio", "email")
    bad_number = allocation(cipher, "p2", "P-2", phone="12345", email="p2@example.com")
    (sent,) = await deliver([bad_number], world.pool, world.delivery)
    assert isinstance(sent, MessageSent) and sent.provider == "email" and sent.attempts == 2
    attempts = await world.pool.fetch(
        "SELECT provider, status, error FROM attempts WHERE allocation_event_id = $1",
        bad_number.event_id,
    )
    twilio = next(a for a in attempts if a["provider"] == "twilio")
    assert twilio["status"] == "failed" and "21211" in twilio["error"]

    world.use("whatsapp")
    nowhere = allocation(cipher, "p3", "P-3", phone="+966500000000")
    (failed,) = await deliver([nowhere], world.pool, world.delivery)
    assert isinstance(failed, MessageFailed) and "131026" in failed.reasons[0]
    assert "P-3" not in " ".join(failed.reasons)


async def test_failed_receipt_after_acceptance_sends_on_the_next_channel(world, cipher):
    await world.fault("whatsapp", fail_after_accept=True)
    event = allocation(cipher, "f1", "F-1")
    (sent,) = await deliver([event], world.pool, world.delivery)
    assert isinstance(sent, MessageSent) and sent.channel == "whatsapp"

    async def moved_to_sms() -> bool:
        return (await world.row(event))["provider"] == "unifonic"

    await until(moved_to_sms)
    await until(lambda: _true(bool(world.late)))
    (resent,) = world.late
    assert isinstance(resent, MessageSent) and resent.provider == "unifonic"
    assert resent.event_id != sent.event_id
    # Unifonic's DLR then says delivered
    await until(lambda: _status_is(world, event, "delivered"))
    channels = sorted(m["channel"] for m in await world.inbox(event.customer.phone))
    assert channels == ["sms", "whatsapp"]
    wa = await world.pool.fetchrow("SELECT status, error FROM attempts WHERE provider = 'whatsapp'")
    assert wa["status"] == "undelivered" and "131049" in wa["error"]


async def test_delivered_receipts_reach_the_journal_through_the_gateway(world, cipher):
    world.use("twilio")
    event = allocation(cipher, "t1", "T-1")
    (sent,) = await deliver([event], world.pool, world.delivery)
    assert isinstance(sent, MessageSent) and sent.provider == "twilio"
    await until(lambda: _status_is(world, event, "delivered"))

    # forgeries are refused at the gateway: tests/integration/test_receipt_gateway.py


async def test_revoked_parts_are_never_sent(world, cipher):
    early = allocation(cipher, "v1", "V-1", phone="+966551110001")
    revocation = CodeRevoked(
        event_id="rv1", order_key=early.order_key, code_ids=[1], parts=[1], reason="refunded"
    )
    await revoke([revocation], world.pool, world.delivery)
    assert await deliver([early], world.pool, world.delivery) == []
    assert await deliver([early], world.pool, world.delivery) == []  # a redelivery too
    assert (await world.row(early))["status"] == "revoked"

    # a fresh process (no memory of the revocation) still honours it, from the database
    world.delivery.inflight.revoked.clear()
    later_part = allocation(cipher, "v1", "V-2", phone="+966551110001", part=2)
    whole = CodeRevoked(event_id="rv2", order_key=early.order_key, code_ids=[2], reason="x")
    await revoke([whole], world.pool, world.delivery)
    world.delivery.inflight.revoked.clear()
    assert await deliver([later_part], world.pool, world.delivery) == []
    assert await world.inbox("+966551110001") == []

    # a revocation after the message went out changes nothing about what was sent
    sent_one = allocation(cipher, "v2", "V-3", phone="+966551110002")
    assert len(await deliver([sent_one], world.pool, world.delivery)) == 1
    await revoke(
        [CodeRevoked(event_id="rv3", order_key=sent_one.order_key, code_ids=[1], reason="late")],
        world.pool,
        world.delivery,
    )
    assert (await world.row(sent_one))["status"] in ("accepted", "delivered")
    assert len(await world.inbox("+966551110002")) == 1
    # ...but an operator resend never sends the withdrawn codes again (even after a restart)
    world.delivery.inflight.revoked.clear()
    result = await resend(world.pool, world.delivery, sent_one.order_key, phone="+966551110003")
    assert [p["status"] for p in result.parts] == ["skipped"] and result.events == []
    assert await world.inbox("+966551110003") == []


class Crash(Exception):
    """The process dies right after the provider accepted, before the journal records it."""


class CrashAfterSend:
    def __init__(self, real: Provider):
        self.real, self.channel, self.name = real, real.channel, real.name

    async def send(self, message: Outbound) -> str:
        await self.real.send(message)
        raise Crash()


async def test_a_crash_left_sending_is_resolved_without_a_second_sms(world, cipher):
    unifonic = world.all_providers["unifonic"]
    world.delivery.channels.providers = {"sms": [CrashAfterSend(unifonic)]}
    event = allocation(cipher, "c1", "CR-1", phone="+966551113333")
    with pytest.raises(Crash):
        await deliver([event], world.pool, world.delivery)
    assert (await world.row(event))["status"] == "sending"

    world.use("unifonic")
    (sent,) = await deliver([event], world.pool, world.delivery)  # Kafka redelivers the batch
    assert isinstance(sent, MessageSent) and sent.provider == "unifonic"
    assert sent.provider_message_id.startswith("correlation:")  # ER-09: it already went out
    assert len(await world.inbox("+966551113333")) == 1


async def test_a_crash_on_whatsapp_is_sent_again_the_documented_window(world, cipher):
    world.delivery.channels.providers = {
        "whatsapp": [CrashAfterSend(world.all_providers["whatsapp"])]
    }
    event = allocation(cipher, "c2", "CR-2", phone="+966551114444")
    with pytest.raises(Crash):
        await deliver([event], world.pool, world.delivery)
    world.use("whatsapp")
    (sent,) = await deliver([event], world.pool, world.delivery)
    assert isinstance(sent, MessageSent)
    statuses = await world.pool.fetch(
        "SELECT status FROM attempts WHERE allocation_event_id = $1 ORDER BY started_at",
        event.event_id,
    )
    assert [r["status"] for r in statuses] == ["unknown", "accepted"]
    # WhatsApp has no lookup by our key: the buyer may get the message twice
    assert len(await world.inbox("+966551114444")) == 2


async def test_operator_resends_an_order_to_a_corrected_phone(world, cipher):
    event = allocation(cipher, "s1", "RS-1", phone="+966500000000")  # nowhere: wrong number
    world.use("whatsapp")
    (failed,) = await deliver([event], world.pool, world.delivery)
    assert isinstance(failed, MessageFailed)
    url = f"{world.notifier}/admin/orders/{event.order_key}/resend"
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with world.session.post(url, json={"phone": "+966557778888"}) as resp:
        assert resp.status == 401
    async with world.session.post(url, json={"phone": "0555"}, headers=auth) as resp:
        assert resp.status == 400 and (await resp.json())["error"] == "invalid_recipient"
    async with world.session.post(
        f"{world.notifier}/admin/orders/nope/resend", json={"phone": "+966557778888"}, headers=auth
    ) as resp:
        assert resp.status == 404
    async with world.session.post(url, json={"phone": "+966557778888"}, headers=auth) as resp:
        body = await resp.json()
        assert resp.status == 200, body
    (part,) = body["parts"]
    assert part["status"] == "accepted" and part["channel"] == "whatsapp"
    (message,) = await world.inbox("+966557778888")
    assert "RS-1" in message["text"]
    assert (await world.row(event))["status"] == "accepted"
    (reported,) = world.late  # the part that had failed is now reported sent
    assert isinstance(reported, MessageSent) and reported.to == "+966557778888"
    async with world.session.get(
        f"{world.notifier}/admin/orders/{event.order_key}/deliveries", headers=auth
    ) as resp:
        history = await resp.json()
    purposes = [a["purpose"] for a in history["parts"][0]["attempt_log"]]
    assert purposes == ["delivery", "resend"]
    assert "RS-1" not in str(history)


async def test_store_settings_from_kafka_choose_channels_and_text(world, cipher, kafka):
    producer = kafka_clients.producer(client_settings(kafka))
    await producer.start()
    try:
        config = StoreConfig(
            event_id="cfg1",
            store_id="s1",
            platform="standard",
            name="Gulf Games",
            locale="en",
            channels=["email", "sms"],
            templates={"email.en": "{store} / {product}: {codes}. {instructions}"},
            instructions={"en": "Use it at checkout."},
        )
        await producer.send_and_wait(config.topic, config.to_bytes(), key=config.kafka_key())
    finally:
        await producer.stop()
    stores = StoreDirectory()
    following = asyncio.create_task(stores.follow(kafka_clients.reader(client_settings(kafka))))
    try:
        await until(lambda: _true(stores.get("s1") is not None), limit_s=15)
        world.delivery.channels.stores = stores
        event = allocation(cipher, "k1", "K-1", email="k1@example.com")
        (sent,) = await deliver([event], world.pool, world.delivery)
        assert isinstance(sent, MessageSent) and sent.channel == "email"
        (message,) = await world.inbox("k1@example.com")
        assert "Gulf Games / PlayStation 50: K-1. Use it at checkout." in message["text"]
    finally:
        stores.stop()
        await following


async def _true(value: bool) -> bool:
    return value


async def _status_is(world: World, event: CodeAllocated, status: str) -> bool:
    return bool((await world.row(event))["status"] == status)


class SlowFor:
    """The real adapter, except that one buyer's sends take `delay_s` (a slow retry chain)."""

    def __init__(self, real: Provider, phone: str, delay_s: float):
        self.real, self.channel, self.name = real, real.channel, real.name
        self.phone, self.delay_s = phone, delay_s

    async def send(self, message: Outbound) -> str:
        if message.to == self.phone:
            await asyncio.sleep(self.delay_s)
        return await self.real.send(message)


async def test_one_slow_message_does_not_hold_its_batch(world, cipher, kafka):
    """Through the consumer loop on a real broker: the batch commits after `hold_s`, the
    others are reported at once, and the slow one reports itself when it is done."""
    settings = NotifierSettings(kafka_bootstrap=kafka, kafka_max_batch=100)
    producer = kafka_clients.producer(settings)
    await producer.start()
    slow_phone = "+966551230000"
    world.delivery.channels.providers = {
        "whatsapp": [SlowFor(world.all_providers["whatsapp"], slow_phone, 3.0)]
    }
    world.delivery.policy = replace(world.delivery.policy, hold_s=0.3)

    async def report(events: list[Event]) -> None:
        await publish(producer, events, "notifier")

    # this test's own in-flight state: its late reports go to the broker
    world.delivery.inflight = InFlight(world.delivery.inflight.journal, on_late=report)

    async def on_allocated(batch: list[CodeAllocated]) -> None:
        await report(await deliver(batch, world.pool, world.delivery))

    loop = ConsumerLoop(
        service="notifier",
        consumer=kafka_clients.group_consumer(
            settings, CodeAllocated.topic, group_id="notifier-slow-test"
        ),
        producer=producer,
        handlers={CodeAllocated.topic: on_allocated},
    )
    sent_reader = kafka_clients.reader(
        client_settings(kafka), MessageSent.topic, auto_offset_reset="latest"
    )
    await sent_reader.start()
    running = asyncio.create_task(loop.run())
    try:
        await sent_reader.seek_to_end()
        events = [
            allocation(cipher, f"h{i}", f"H-{i}", phone=f"+96655123{i:04d}") for i in range(20)
        ]
        started = time.monotonic()
        await publish(producer, events, "test")
        arrived: dict[str, float] = {}
        while len(arrived) < 20 and time.monotonic() - started < 20:
            for records in (await sent_reader.getmany(timeout_ms=100)).values():
                for record in records:
                    sent = MessageSent.model_validate_json(record.value)
                    arrived.setdefault(sent.to, time.monotonic() - started)
        assert len(arrived) == 20
        slow = arrived.pop(slow_phone)
        # nobody waited for the slow buyer (the group join before the first batch takes a
        # few seconds on the embedded broker, so times are compared with each other; the
        # slow send takes 3 s so that a loaded machine's half-second delays cannot close
        # the gap)
        assert slow - max(arrived.values()) > 1.0
        assert len(await world.inbox(slow_phone)) == 1
    finally:
        loop.stop()
        await running
        await sent_reader.stop()
        await producer.stop()


async def test_stopping_publishes_the_reports_of_messages_that_outlived_their_batch(world, cipher):
    """A part sent after its batch was committed is 'accepted' in the journal, so no sweep
    sends it again: if its late report died with the producer, its order would never be
    marked delivered. Draining waits for those reports too."""
    slow_phone = "+966551239999"
    world.delivery.channels.providers = {
        "whatsapp": [SlowFor(world.all_providers["whatsapp"], slow_phone, 0.5)]
    }
    world.delivery.policy = replace(world.delivery.policy, hold_s=0.05)
    published: list[Event] = []

    async def report(events: list[Event]) -> None:
        await asyncio.sleep(0.3)  # the broker takes its time to acknowledge
        published.extend(events)

    world.delivery.inflight = InFlight(world.delivery.inflight.journal, on_late=report)
    event = allocation(cipher, "late-1", "LATE-1", phone=slow_phone)
    assert await deliver([event], world.pool, world.delivery) == []  # outlived the hold
    await drain(world.delivery, grace_s=5)
    assert [sent.to for sent in published] == [slow_phone]


async def test_two_replicas_sweeping_at_once_resume_a_part_once(world, cipher):
    """Two notifier replicas run their resume sweep at the same moment over one stale part:
    exactly one takes it, so the buyer gets one message."""
    world.delivery.channels.providers = {"sms": [CrashAfterSend(world.all_providers["unifonic"])]}
    event = allocation(cipher, "w2", "SW-2", phone="+966551116666")
    with pytest.raises(Crash):
        await deliver([event], world.pool, world.delivery)
    world.use("unifonic")
    await world.pool.execute("UPDATE deliveries SET updated_at = now() - interval '1 minute'")
    other_replica = dataclasses.replace(world.delivery, inflight={})
    # the second sweep reads the table before the first one's resume has touched anything
    started = [
        await sweep(world.pool, world.delivery, 20),
        await sweep(world.pool, other_replica, 20),
    ]
    assert started == [1, 0]
    await until(lambda: _true(bool(world.late)))
    assert len(await world.inbox("+966551116666")) == 1


async def test_the_sweep_resumes_parts_whose_batch_was_already_committed(world, cipher):
    """A crash after the batch's offsets were committed: no redelivery will come, so the
    resume sweep finds the part left 'sending' once it is stale and finishes it."""
    world.delivery.channels.providers = {"sms": [CrashAfterSend(world.all_providers["unifonic"])]}
    event = allocation(cipher, "w1", "SW-1", phone="+966551115555")
    with pytest.raises(Crash):
        await deliver([event], world.pool, world.delivery)
    world.use("unifonic")
    assert await sweep(world.pool, world.delivery, 20) == 0  # too fresh: maybe still in flight
    await world.pool.execute("UPDATE deliveries SET updated_at = now() - interval '1 minute'")
    assert await sweep(world.pool, world.delivery, 20) == 1
    await until(lambda: _true(bool(world.late)))
    (sent,) = world.late
    assert isinstance(sent, MessageSent) and sent.provider_message_id.startswith("correlation:")
    assert len(await world.inbox("+966551115555")) == 1
