"""A broker outage during a surge: the gateway answers 503 + Retry-After in bounded time, the
platforms retry, and every order the gateway ever acknowledged is on `order.paid`."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from deploy.embedded.broker import EmbeddedBroker
from deploy.embedded.processes import free_port
from deploy.sandbox import platforms as wire
from shared.events import OrderPaid
from tests.conftest import _wait_for_port
from tests.integration.gateway_support import SANDBOX_STORES, deliver, running_gateway, sale
from tests.integration.test_consumer_loop import read_all

pytestmark = pytest.mark.integration
PUBLISH_TIMEOUT_S = 1.0


async def test_paused_broker_loses_no_acknowledged_order(database, tmp_path):
    broker = EmbeddedBroker(free_port(), tmp_path / "broker.log")
    broker.start()
    try:
        await _wait_for_port(broker.port)
        async with running_gateway(
            database, broker.bootstrap, publish_timeout_s=PUBLISH_TIMEOUT_S
        ) as gateway:
            orders = [
                (store, wire.paid(store, sale(wire.numeric_order_id())))
                for _ in range(8)
                for store in SANDBOX_STORES
            ]
            acknowledged: dict[str, str] = {}  # order key -> event id

            async def send(store, webhook) -> tuple[int, float]:
                started = time.monotonic()
                status, answer = await deliver(gateway, store, webhook)
                if status in (200, 202):
                    acknowledged[answer["order_key"]] = answer["event_id"]
                else:
                    assert status == 503 and answer["error"] == "broker_unavailable"
                return status, time.monotonic() - started

            before = await asyncio.gather(*(send(s, w) for s, w in orders[:20]))
            assert all(status != 503 for status, _ in before)

            broker.process.signal(signal.SIGSTOP)
            try:
                during = await asyncio.gather(*(send(s, w) for s, w in orders[20:]))
            finally:
                broker.process.signal(signal.SIGCONT)
            assert {status for status, _ in during} == {503}
            assert max(took for _, took in during) < PUBLISH_TIMEOUT_S + 2

            # the platforms retry what was refused, each re-sending the same order
            pending = list(orders[20:])
            deadline = time.monotonic() + 60
            while pending and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                results = await asyncio.gather(*(send(s, w) for s, w in pending))
                pending = [
                    o for o, (status, _) in zip(pending, results, strict=True) if status == 503
                ]
            assert not pending, f"{len(pending)} orders still refused after the broker resumed"

        assert len(acknowledged) == len(orders)
        on_kafka: dict[str, set[str]] = {}
        for record in await read_all(broker.bootstrap, OrderPaid.topic, len(orders)):
            event = OrderPaid.model_validate_json(record.value)
            on_kafka.setdefault(event.order_key, set()).add(event.event_id)
        missing = set(acknowledged) - set(on_kafka)
        assert not missing, f"acknowledged but not on order.paid: {sorted(missing)[:5]}"
        assert all(on_kafka[k] == {e} for k, e in acknowledged.items())  # retries: same id
    finally:
        broker.process.signal(signal.SIGCONT)
        broker.stop()
