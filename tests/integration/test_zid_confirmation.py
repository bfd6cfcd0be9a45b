"""Zid signs nothing (basic auth only), so the gateway confirms every paid or cancelled Zid
order through Zid's orders API, played by the sandbox over real HTTP: a forged webhook with the
right credentials gets no `order.paid`, Zid's record is the truth, and an API that does not
answer is a 503 the platform retries."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from deploy.embedded.broker import client_settings
from deploy.embedded.processes import free_port
from deploy.sandbox import platforms as wire
from shared import kafka_clients
from shared.events import OrderCancelled, OrderPaid
from tests.integration.gateway_support import (
    ADMIN_TOKEN,
    ZID_API_CREDENTIAL,
    deliver,
    running_gateway,
    sale,
    sandbox_of,
    sandbox_store,
)

pytestmark = pytest.mark.integration
ZID = sandbox_store("zid")
BUYER = {"name": "Sara", "phone": "+966551234567", "email": "sara@example.com"}
LINES = [{"sku": "p-1", "quantity": 2, "title": "Card"}]


@pytest.fixture(scope="module")
async def gateway(module_database: str, kafka: str) -> AsyncIterator[TestClient]:
    async with running_gateway(module_database, kafka, ingest_admin_token=ADMIN_TOKEN) as client:
        yield client


async def events(kafka: str, topic: str) -> dict[str, list[Any]]:
    """Every event on `topic` now, by order key."""
    model = OrderPaid if topic == OrderPaid.topic else OrderCancelled
    consumer = kafka_clients.reader(client_settings(kafka), topic)
    await consumer.start()
    found: dict[str, list[Any]] = {}
    try:
        idle_until = time.monotonic() + 2
        while time.monotonic() < idle_until:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                idle_until = time.monotonic() + 1
                for record in records:
                    event = model.model_validate_json(record.value)
                    found.setdefault(event.order_key, []).append(event)
    finally:
        await consumer.stop()
    return found


async def forged(gateway: TestClient, order_id: str, **customer: Any) -> tuple[int, Any]:
    """A paid-order webhook with the store's right basic auth, of an order Zid never took."""
    order = sale(order_id)
    order.customer.update(customer)
    return await deliver(gateway, ZID, wire.paid(ZID, order), zid_knows=False)


async def test_a_genuine_zid_order_is_confirmed_and_zid_s_record_is_the_event(gateway, kafka):
    reply = await sandbox_of(gateway).post(
        f"/stores/{ZID.id}/orders", json={"lines": LINES, "customer": BUYER}
    )
    answer = await reply.json()
    assert answer["status"] == 202, answer
    key = answer["gateway"]["order_key"]

    # the same order id, forged with the right credentials and another buyer: Zid's record of
    # the order decides, so the codes still go to the buyer who paid
    status, again = await forged(gateway, answer["order_id"], phone="+966500000666", email=None)
    assert status == 202 and again["event_id"] == answer["gateway"]["event_id"]
    paid = (await events(kafka, OrderPaid.topic))[key]
    assert {e.customer.phone for e in paid} == {"+966551234567"}
    assert {(line.sku, line.quantity) for e in paid for line in e.lines} == {("SKU-A", 2)}


async def test_a_forged_order_unknown_to_zid_gets_no_order_paid(gateway, kafka):
    order_id = wire.numeric_order_id()
    status, answer = await forged(gateway, order_id)
    assert status == 422 and answer["error"] == "unconfirmed_order", answer
    reply = await sandbox_of(gateway).post(
        f"/stores/{ZID.id}/orders", json={"lines": LINES, "customer": BUYER}
    )
    real = (await reply.json())["order_id"]
    payload = json.loads(wire.paid(ZID, sale(order_id)).body)
    # not Zid order ids, and never put in a URL: each would make the call ask for order `real`
    for odd in (f"{real}/view?", f"{real}/view#", f"1/../{real}", "ZID-1"):
        webhook = wire.Webhook("zid-odd", json.dumps({**payload, "id": odd}).encode())
        status, answer = await deliver(gateway, ZID, webhook, zid_knows=False)
        assert status == 422 and answer["error"] == "unconfirmed_order", answer
    on_kafka = await events(kafka, OrderPaid.topic)
    assert not {k for k in on_kafka if k.startswith(f"zid:{ZID.id}:") and "/" in k}
    assert f"zid:{ZID.id}:{order_id}" not in on_kafka


async def test_a_forged_payment_of_an_order_unpaid_at_zid_is_only_acknowledged(gateway, kafka):
    sandbox = sandbox_of(gateway)
    taken = await sandbox.post(
        f"/stores/{ZID.id}/orders", json={"lines": LINES, "customer": BUYER, "paid": False}
    )
    unpaid = await taken.json()
    assert unpaid["status"] == 200 and unpaid["gateway"] == {"status": "ignored"}, unpaid
    order_id = unpaid["order_id"]
    key = f"zid:{ZID.id}:{order_id}"

    status, answer = await forged(gateway, order_id)  # "paid", says the forger; Zid: unpaid
    assert status == 200 and answer == {"status": "ignored"}, answer
    assert key not in await events(kafka, OrderPaid.topic)

    paid = await (
        await sandbox.post(f"/stores/{ZID.id}/orders", json={"order_id": order_id})
    ).json()
    assert paid["status"] == 202 and paid["gateway"]["order_key"] == key, paid
    assert key in await events(kafka, OrderPaid.topic)


async def test_a_forged_cancellation_of_a_paid_order_cancels_nothing(gateway, kafka):
    reply = await sandbox_of(gateway).post(
        f"/stores/{ZID.id}/orders", json={"lines": LINES, "customer": BUYER}
    )
    order_id = (await reply.json())["order_id"]
    key = f"zid:{ZID.id}:{order_id}"
    status, answer = await deliver(gateway, ZID, wire.cancelled(ZID, order_id, "forged"))
    # Zid's record says paid, not cancelled: that is the event (the same as the payment's)
    assert status == 202 and answer["order_key"] == key, answer
    assert key not in await events(kafka, OrderCancelled.topic)

    cancel = await sandbox_of(gateway).post(f"/stores/{ZID.id}/orders/{order_id}/cancel", json={})
    assert (await cancel.json())["status"] == 202  # a real cancellation still gets through
    assert key in await events(kafka, OrderCancelled.topic)


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


async def test_zid_s_api_down_or_silent_is_a_503_the_platform_retries(module_database, kafka):
    with silent_server() as silent:
        for base, timeout in (
            (f"http://127.0.0.1:{free_port()}", 3.0),
            (f"http://127.0.0.1:{silent}", 0.5),
        ):
            async with running_gateway(
                module_database, kafka, zid_api_base_url=base, zid_api_timeout_s=timeout
            ) as client:
                order = wire.paid(ZID, sale(wire.numeric_order_id()))
                started = time.monotonic()
                status, answer = await deliver(client, ZID, order)
                assert status == 503 and answer["error"] == "platform_unavailable", answer
                assert time.monotonic() - started < timeout + 1.5
                reply = await client.post(
                    f"/webhooks/zid/{ZID.id}",
                    data=order.body,
                    headers=wire.delivery_headers(ZID, order),
                )
                assert reply.status == 503 and reply.headers["Retry-After"]


async def test_a_refused_credential_is_a_503_and_the_credential_is_never_shown(
    gateway, module_database, kafka, caplog
):
    caplog.set_level(logging.DEBUG)
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    listed = await (await gateway.get("/admin/stores", headers=auth)).text()
    one = await (await gateway.get(f"/admin/stores/{ZID.id}", headers=auth)).text()
    assert json.loads(one)["api_credential"].startswith("sha256:")

    wrong = "zid-auth-wrong:zid-manager-wrong"
    reply = await gateway.put(
        f"/admin/stores/{ZID.id}", json={"api_credential": wrong}, headers=auth
    )
    changed = await reply.text()
    assert reply.status == 200, changed
    try:
        await asyncio.sleep(0.3)  # the store cache lives 0.2 s here
        status, answer = await deliver(gateway, ZID, wire.paid(ZID, sale(wire.numeric_order_id())))
        assert status == 503 and answer["error"] == "store_misconfigured", answer
    finally:
        await gateway.put(
            f"/admin/stores/{ZID.id}", json={"api_credential": ZID_API_CREDENTIAL}, headers=auth
        )
    await asyncio.sleep(0.3)
    status, _ = await deliver(gateway, ZID, wire.paid(ZID, sale(wire.numeric_order_id())))
    assert status == 202

    configs = [r.value.decode() for r in await _store_configs(kafka)]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (ZID_API_CREDENTIAL, wrong, *ZID_API_CREDENTIAL.split(":"), *wrong.split(":")):
        for text in (listed, one, changed, logged, *configs):
            assert secret not in text


async def _store_configs(kafka: str) -> list[Any]:
    consumer = kafka_clients.reader(client_settings(kafka), "store.config")
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=2000)
        return [r for records in batch.values() for r in records]
    finally:
        await consumer.stop()
