"""The ingest gateway with a real database and broker: 202 only after the broker's ack."""

import base64
import io
import json
import os
import time
import uuid

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from deploy.embedded.broker import EmbeddedBroker
from deploy.embedded.processes import free_port
from services.ingest import standard
from services.ingest.main import SQL, lifespan
from services.ingest.settings import IngestSettings
from services.ingest.stores import Store, upsert_store
from shared import runtime
from shared.db import migrate
from shared.events import OrderPaid
from tests.conftest import _wait_for_port
from tests.integration.gateway_support import SEALER, VAULT_KEYS
from tests.integration.test_consumer_loop import read_all

pytestmark = pytest.mark.integration
SECRET = "whsec_" + base64.b64encode(os.urandom(24)).decode()


async def gateway(database: str, kafka: str, **overrides):
    conn = await asyncpg.connect(database)
    try:
        await migrate(conn, "ingest", SQL)
        await conn.execute("SET search_path TO ingest")
        store = Store("s1", "standard", "Store One", (SECRET,), locale="en")
        await upsert_store(conn, store, SEALER)
    finally:
        await conn.close()
    settings = IngestSettings(
        kafka_bootstrap=kafka, database_url=database, vault_keys=VAULT_KEYS, **overrides
    )
    app = web.Application(client_max_size=settings.max_body_bytes)
    rt = runtime.Runtime("ingest", settings, app)
    app.add_routes(runtime.admin_routes(rt))
    return rt, lifespan(rt)


def signed(payload, secret: str = SECRET) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    ts = int(time.time())
    msg_id = f"msg_{uuid.uuid4().hex}"
    return body, {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": standard.sign(secret, msg_id, ts, body),
        "Content-Type": "application/json",
    }


def order(order_id: str) -> dict:
    return {
        "type": "order.paid",
        "data": {
            "order_id": order_id,
            "customer": {"phone": "0551234567"},
            "lines": [{"sku": "A", "quantity": 1}],
        },
    }


async def test_accepts_signed_orders_after_the_broker_acknowledged(database, kafka):
    rt, life = await gateway(database, kafka)
    async with life, TestClient(TestServer(rt.app)) as client:
        order_id = uuid.uuid4().hex
        body, headers = signed(order(order_id))
        first = await client.post("/webhooks/standard/s1", data=body, headers=headers)
        assert first.status == 202
        accepted = await first.json()
        body, headers = signed(order(order_id))  # a platform retry: new signature, same order
        again = await (
            await client.post("/webhooks/standard/s1", data=body, headers=headers)
        ).json()
        assert again["event_id"] == accepted["event_id"]
        ignored = await client.post("/webhooks/standard/s1", data=body, headers=headers | {})
        assert ignored.status == 202
        metrics = await (await client.get("/metrics")).text()
        assert 'tasleem_ingest_webhooks_total{outcome="accepted",platform="standard"}' in metrics

    records = await read_all(kafka, OrderPaid.topic, 1)
    mine = [OrderPaid.model_validate_json(r.value) for r in records]
    mine = [e for e in mine if e.order_id == order_id]
    assert mine and mine[0].event_id == accepted["event_id"]
    assert mine[0].customer.phone == "+966551234567"


@pytest.mark.parametrize(
    ("path", "make", "status", "error"),
    [
        ("s1", lambda: signed(order("1"), secret="whsec_" + "QUJD" * 8), 401, "invalid_signature"),
        ("nope", lambda: signed(order("1")), 404, "unknown_store"),
        (
            "s1",
            lambda: signed({"type": "order.paid", "data": {"order_id": "1"}}),
            422,
            "invalid_order",
        ),
        ("s1", lambda: (b"{not json", _headers_for(b"{not json")), 400, "malformed_json"),
        (
            "s1",
            lambda: (b"x", {**_headers_for(b"x"), "Content-Type": "text/plain"}),
            415,
            "unsupported_media_type",
        ),
        ("s1", lambda: signed({"pad": "x" * (1024 * 1024 + 1)}), 413, "payload_too_large"),
    ],
)
async def test_bad_input_gets_a_clear_json_error(database, kafka, path, make, status, error):
    rt, life = await gateway(database, kafka)
    async with life, TestClient(TestServer(rt.app)) as client:
        body, headers = make()
        data = io.BytesIO(body) if len(body) > 1024 * 1024 else body  # large: stream it
        resp = await client.post(f"/webhooks/standard/{path}", data=data, headers=headers)
        assert resp.status == status
        reply = await resp.json()
        assert reply["error"] == error and reply["detail"]


def _headers_for(body: bytes) -> dict[str, str]:
    ts = int(time.time())
    return {
        "webhook-id": "msg_x",
        "webhook-timestamp": str(ts),
        "webhook-signature": standard.sign(SECRET, "msg_x", ts, body),
        "Content-Type": "application/json",
    }


async def test_broker_down_gets_503_with_retry_after_in_bounded_time(database, tmp_path):
    broker = EmbeddedBroker(free_port(), tmp_path / "broker.log")
    broker.start()
    await _wait_for_port(broker.port)
    rt, life = await gateway(database, broker.bootstrap, publish_timeout_s=1.0)
    try:
        async with life, TestClient(TestServer(rt.app)) as client:
            broker.stop()
            body, headers = signed(order(uuid.uuid4().hex))
            started = time.monotonic()
            resp = await client.post("/webhooks/standard/s1", data=body, headers=headers)
            assert resp.status == 503
            assert resp.headers["Retry-After"]
            assert (await resp.json())["error"] == "broker_unavailable"
            assert time.monotonic() - started < 5
    finally:
        broker.stop()
