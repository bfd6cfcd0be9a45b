"""The notifier against the sandbox's WhatsApp over real HTTP and a real database."""

import asyncio
from datetime import UTC, datetime

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from deploy.sandbox.app import init_app
from deploy.sandbox.config import SandboxConfig, WhatsAppConfig
from services.notifier.delivery import Channels, Delivery, DeliveryPolicy
from services.notifier.handlers import deliver
from services.notifier.main import SQL
from services.notifier.whatsapp import WhatsAppCloud
from shared.db import connect_and_migrate
from shared.events import (
    AllocatedCode,
    CodeAllocated,
    Customer,
    MessageFailed,
    MessageSent,
    OrderLine,
    event_id_for,
)

pytestmark = pytest.mark.integration
TOKEN = "test-token"


@pytest.fixture
async def sandbox():
    config = SandboxConfig(
        gateway="http://127.0.0.1:1",
        stores=[],
        whatsapp=WhatsAppConfig(token=TOKEN, phone_number_id="42"),
    )
    server = TestServer(init_app(config))
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


@pytest.fixture
async def delivery(sandbox, cipher, database):
    pool = await connect_and_migrate(database, "notifier", SQL)
    async with aiohttp.ClientSession() as session:
        yield (
            pool,
            Delivery.over(
                pool,
                Channels(
                    providers={"whatsapp": [WhatsAppCloud(session, sandbox, "21.0", TOKEN, "42")]},
                    cipher=cipher,
                    concurrency=asyncio.Semaphore(8),
                ),
                DeliveryPolicy(deadline_s=2),
            ),
        )
    await pool.close()


def allocation(
    cipher, order: str, codes: list[str], locale: str = "en", phone: str = "+966551112222"
):
    key = f"standard:s1:{order}"
    now = datetime.now(UTC)
    return CodeAllocated(
        event_id=event_id_for("code.allocated", key, 1),
        order_key=key,
        part=1,
        store_id="s1",
        store_name="Gulf Games",
        order_id=order,
        customer=Customer(name="Sara", phone=phone, locale=locale),
        lines=[OrderLine(sku="PSN", quantity=len(codes), title="PlayStation 50")],
        codes=[
            AllocatedCode(code_id=i, sku="PSN", sealed=cipher.seal(code, "PSN").to_text())
            for i, code in enumerate(codes)
        ],
        paid_at=now,
        allocated_at=now,
    )


async def inbox(sandbox: str) -> list[dict]:
    async with aiohttp.ClientSession() as session, session.get(f"{sandbox}/inbox") as resp:
        return (await resp.json())["messages"]


async def test_each_part_is_sent_once_even_when_redelivered(sandbox, delivery, cipher):
    pool, policy = delivery
    event = allocation(cipher, "1", ["PSN-AAAA", "PSN-BBBB"])
    (sent,) = await deliver([event, event], pool, policy)
    assert isinstance(sent, MessageSent) and sent.code_count == 2
    (again,) = await deliver([event], pool, policy)
    assert again == sent  # the stored report, not a second message
    messages = await inbox(sandbox)
    assert len(messages) == 1
    assert messages[0]["to"] == "+966551112222"
    assert "PSN-AAAA | PSN-BBBB" in messages[0]["text"]
    assert "Gulf Games" in messages[0]["text"] and "PlayStation 50" in messages[0]["text"]


async def test_arabic_buyers_get_arabic_text(sandbox, delivery, cipher):
    pool, policy = delivery
    await deliver([allocation(cipher, "2", ["PSN-CCCC"], locale="ar")], pool, policy)
    (message,) = await inbox(sandbox)
    assert "رمز" in message["text"] and "PSN-CCCC" in message["text"]


async def test_undeliverable_parts_are_reported_failed_with_reasons(sandbox, delivery, cipher):
    pool, policy = delivery
    not_on_whatsapp = allocation(cipher, "3", ["PSN-DDDD"], phone="+966500000000")
    tampered = allocation(cipher, "4", ["PSN-EEEE"]).model_copy(
        update={
            "codes": [
                AllocatedCode(code_id=9, sku="OTHER", sealed=cipher.seal("X", "PSN").to_text())
            ]
        }
    )
    reports = await deliver([not_on_whatsapp, tampered], pool, policy)
    assert all(isinstance(r, MessageFailed) for r in reports)
    reasons = {r.order_key: " ".join(r.reasons) for r in reports}
    assert "131026" in reasons[not_on_whatsapp.order_key]
    assert "decrypt" in reasons[tampered.order_key]
    assert "PSN-" not in " ".join(reasons.values())  # a reason never carries a code
    assert await inbox(sandbox) == []
