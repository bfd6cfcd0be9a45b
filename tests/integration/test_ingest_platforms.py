"""Every store platform through the real gateway (PostgreSQL, broker): the sandbox's own wire
formats are accepted and land on Kafka once per order; bad input gets only the documented
statuses, also under hypothesis and schemathesis; stores change without a restart."""

from __future__ import annotations

import asyncio
import io
import json
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import schemathesis
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from typer.testing import CliRunner

from deploy.cli import app as tasleem
from deploy.sandbox import platforms as wire
from services.ingest.errors import RegistryUnavailable
from services.ingest.store_changes import fingerprint
from services.ingest.stores import Store, StoreRegistry
from shared.events import OrderCancelled, OrderPaid, StoreConfig
from tests.integration.gateway_support import (
    ADMIN_TOKEN,
    SANDBOX_STORES,
    SEALER,
    SECRETS,
    ZID_API_CREDENTIAL,
    deliver,
    running_gateway,
    sale,
    sandbox_of,
    sandbox_store,
)
from tests.integration.test_consumer_loop import read_all

pytestmark = pytest.mark.integration
DOCUMENTED = {200, 202, 400, 401, 404, 413, 415, 422}


@pytest.fixture(scope="module")
async def gateway(module_database: str, kafka: str) -> AsyncIterator[TestClient]:
    async with running_gateway(module_database, kafka, ingest_admin_token=ADMIN_TOKEN) as client:
        yield client


@pytest.fixture(scope="module")
def sandbox(gateway: TestClient) -> TestClient:
    return sandbox_of(gateway)  # its Zid store's API is the one the gateway asks


async def mine(kafka: str, topic: str, keys: set[str]) -> dict[str, list[Any]]:
    """The events on `topic` for these order keys, by key."""
    found: dict[str, list[Any]] = {k: [] for k in keys}
    model = OrderPaid if topic == OrderPaid.topic else OrderCancelled
    for _ in range(20):
        records = await read_all(kafka, topic, 1)
        found = {k: [] for k in keys}
        for record in records:
            event = model.model_validate_json(record.value)
            if event.order_key in found:
                found[event.order_key].append(event)
        if all(found.values()):
            return found
        await asyncio.sleep(0.2)
    return found


async def test_every_platform_order_from_the_sandbox_is_on_kafka_once_per_order(
    gateway, sandbox, kafka
):
    order = {
        "lines": [{"sku": "p-1", "quantity": 2, "title": "Card"}],
        "customer": {"name": "Sara", "phone": "+966551234567", "email": "s@example.com"},
    }
    accepted: dict[str, dict[str, Any]] = {}
    for store in SANDBOX_STORES:
        first = await (await sandbox.post(f"/stores/{store.id}/orders", json=order)).json()
        assert first["status"] in (200, 202), (store.platform, first)
        assert first["gateway"]["order_key"] == f"{store.platform}:{store.id}:{first['order_id']}"
        retry = await sandbox.post(
            f"/stores/{store.id}/orders", json={"order_id": first["order_id"]}
        )
        again = await retry.json()
        assert again["status"] == first["status"]
        assert again["gateway"]["event_id"] == first["gateway"]["event_id"]
        accepted[first["gateway"]["order_key"]] = first
    cancelled_key = next(k for k in accepted if k.startswith("shopify:"))
    shopify_order = accepted[cancelled_key]["order_id"]
    reply = await sandbox.post(f"/stores/shopify-store/orders/{shopify_order}/cancel", json={})
    assert (await reply.json())["status"] == 202

    paid = await mine(kafka, OrderPaid.topic, set(accepted))
    for key, events in paid.items():
        assert events, f"{key} never reached order.paid"
        assert {e.event_id for e in events} == {accepted[key]["gateway"]["event_id"]}
        event = events[0]
        assert [(line.sku, line.quantity) for line in event.lines] == [("SKU-A", 2)]
        assert event.customer.phone == "+966551234567"
    cancels = await mine(kafka, OrderCancelled.topic, {cancelled_key})
    assert cancels[cancelled_key]


async def test_same_order_in_another_event_or_a_duplicate_subscription_is_the_same_event(gateway):
    store = sandbox_store("salla")
    order_id = wire.numeric_order_id()
    first = wire.paid(store, sale(order_id))
    status, created = await deliver(gateway, store, first)
    assert status == 200
    payload = json.loads(first.body)
    payload["event"] = "order.updated"
    payload["data"]["status"]["slug"] = "completed"
    updated = wire.Webhook("other", json.dumps(payload).encode())
    status, again = await deliver(gateway, store, updated)
    assert status == 200 and again["event_id"] == created["event_id"]

    woo = sandbox_store("woocommerce")
    body = wire.paid(woo, sale(order_id))
    _, one = await deliver(gateway, woo, body)
    _, two = await deliver(gateway, woo, wire.Webhook("2nd-subscription", body.body, body.headers))
    assert one["event_id"] == two["event_id"] != created["event_id"]


async def test_bad_input_on_every_platform_gets_its_status_json_and_a_counter(gateway):
    for store in SANDBOX_STORES:
        good = wire.paid(store, sale(wire.numeric_order_id()))
        path = f"/webhooks/{store.platform}/{store.id}"
        signed = wire.delivery_headers(store, good)
        unsigned = {"content-type": "application/json", **good.headers}
        cases = [
            (path, good.body, unsigned, 401, "invalid_signature"),
            (f"/webhooks/{store.platform}/nope", good.body, signed, 404, "unknown_store"),
            (path, good.body, {**signed, "content-type": "text/plain"}, 415, None),
            (path, b"x" * (1024 * 1024 + 1), signed, 413, "payload_too_large"),
        ]
        other = next(s for s in SANDBOX_STORES if s.platform != store.platform)
        cases.append((f"/webhooks/{store.platform}/{other.id}", good.body, signed, 404, None))
        for broken, status, error in [
            (b"{not json", 400, "malformed_json"),
            (b'{"id": 1, "order_id": 1, "data": {"id": 1, "order_id": 1}}', None, None),
        ]:
            webhook = wire.Webhook(good.msg_id, broken, good.headers)
            cases.append((path, broken, wire.delivery_headers(store, webhook), status, error))
        for url, body, headers, want, error in cases:
            data = io.BytesIO(body) if len(body) > 1024 * 1024 else body  # large: stream it
            async with gateway.post(url, data=data, headers=headers) as reply:
                answer = await reply.json()
                if want is None:  # an order-shaped stub: refused as not an order, or only acked
                    assert reply.status in (200, 422), (store.platform, answer)
                    continue
                assert reply.status == want, (store.platform, url, answer)
                assert answer["detail"] and (error is None or answer["error"] == error)
    metrics = await (await gateway.get("/metrics")).text()
    for platform in SECRETS:
        assert (
            f'tasleem_ingest_rejected_total{{platform="{platform}",reason="invalid_signature"}}'
            in metrics
        )


async def test_woocommerce_creation_ping_gets_200_unsigned(gateway):
    reply = await gateway.post(
        "/webhooks/woocommerce/woocommerce-store",
        data=b"webhook_id=17",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert reply.status == 200


# ---- properties ----------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=15,
)
_header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)


@st.composite
def mutated_delivery(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    store = draw(st.sampled_from(SANDBOX_STORES))
    webhook = wire.paid(store, sale(str(draw(st.integers(1, 10**12)))))
    payload = json.loads(webhook.body)
    how = draw(st.sampled_from(["field", "whole", "bytes", "none"]))
    if how == "field":
        target = payload["data"] if isinstance(payload.get("data"), dict) else payload
        key = draw(st.sampled_from(sorted(target)))
        target[key] = draw(_json)
        body = json.dumps(payload).encode()
    elif how == "whole":
        body = json.dumps(draw(_json)).encode()
    elif how == "bytes":
        body = draw(st.binary(max_size=200))
    else:
        body = webhook.body
    webhook = wire.Webhook(webhook.msg_id, body, webhook.headers)
    headers = wire.delivery_headers(store, webhook) if draw(st.booleans()) else {}
    headers = {**webhook.headers, "content-type": "application/json", **headers}
    for name in draw(st.lists(st.sampled_from(sorted(headers)), max_size=2, unique=True)):
        if draw(st.booleans()):
            del headers[name]
        else:
            headers[name] = draw(_header_text)
    return f"/webhooks/{store.platform}/{store.id}", body, headers


async def test_mutated_payloads_and_headers_get_only_documented_statuses(gateway):
    loop = asyncio.get_running_loop()
    seen: set[int] = set()

    async def post(path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        async with gateway.post(path, data=body, headers=headers) as reply:
            return reply.status, await reply.json()

    @settings(
        max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(mutated_delivery())
    def check(delivery: tuple[str, bytes, dict[str, str]]) -> None:
        status, answer = asyncio.run_coroutine_threadsafe(post(*delivery), loop).result(10)
        seen.add(status)
        assert status in DOCUMENTED, (status, answer)
        if status >= 400:
            assert set(answer) == {"error", "detail"} and answer["detail"]

    await asyncio.to_thread(check)
    assert {401, 422}.issubset(seen)  # both layers were reached, not only the first


async def test_the_openapi_document_holds_under_schemathesis(gateway):
    document = await (await gateway.get("/openapi.json")).json()
    schema = schemathesis.openapi.from_dict(document)
    base_url = str(gateway.make_url("")).rstrip("/")
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        response_headers_conformance,
    ]

    @settings(
        max_examples=80, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(case=schema.as_strategy())
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=base_url, checks=checks, timeout=10)

    await asyncio.to_thread(check)


# ---- changing stores -----------------------------------------------------------------------


async def test_admin_api_adds_rotates_and_removes_a_store_without_a_restart(gateway, kafka):
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    store_id = f"new-{uuid.uuid4().hex[:6]}"
    url = f"/admin/stores/{store_id}"
    # refused; 429 once this address has sent many bad tokens (the schemathesis run above)
    assert (await gateway.get("/admin/stores")).status in (401, 429)
    wrong = {"Authorization": "Bearer nope"}
    assert (await gateway.put(url, json={}, headers=wrong)).status in (401, 429)
    bad = await gateway.put(
        url, json={"platform": "zid", "name": "x", "secrets": ["no-colon"]}, headers=auth
    )
    assert bad.status == 422 and (await bad.json())["error"] == "invalid_store"
    first, second = "shpss_first-" + os.urandom(4).hex(), "shpss_second-" + os.urandom(4).hex()
    created = await gateway.put(
        url,
        json={
            "platform": "shopify",
            "name": "New Keys",
            "secrets": [first],
            "locale": "en",
            "channels": ["sms", "email"],
            "templates": {"code_en": "Your code: {code}"},
        },
        headers=auth,
    )
    assert created.status == 200
    shown = await created.json()
    assert shown["secrets"] == [fingerprint(first)] and first not in json.dumps(shown)

    store = sandbox_store("shopify").model_copy(update={"id": store_id, "secret": first})
    status, _ = await deliver(gateway, store, wire.paid(store, sale(wire.numeric_order_id())))
    assert status == 202  # accepted at once: no restart, no cache wait

    rotated = await gateway.post(f"{url}/rotate-secret", json={"secret": second}, headers=auth)
    assert (await rotated.json())["secrets"] == [fingerprint(second), fingerprint(first)]
    for secret in (first, second):  # both work during the rotation
        s = store.model_copy(update={"secret": secret})
        assert (await deliver(gateway, s, wire.paid(s, sale(wire.numeric_order_id()))))[0] == 202
    listed = await (await gateway.get("/admin/stores", headers=auth)).text()
    assert first not in listed and second not in listed and store_id in listed

    configs = [
        StoreConfig.model_validate_json(r.value) for r in await read_all(kafka, "store.config", 1)
    ]
    latest = [c for c in configs if c.store_id == store_id][-1]
    assert latest.channels == ["sms", "email"] and latest.templates == {
        "code_en": "Your code: {code}"
    }
    assert not any(secret in r for r in map(str, configs) for secret in (first, second))

    assert (await gateway.delete(url, headers=auth)).status == 200
    status, answer = await deliver(gateway, store, wire.paid(store, sale(wire.numeric_order_id())))
    assert status == 404 and answer["error"] == "unknown_store"


async def test_admin_api_is_off_without_a_token(module_database, kafka):
    async with running_gateway(module_database, kafka) as client:
        reply = await client.get("/admin/stores", headers={"Authorization": "Bearer "})
        assert reply.status == 403 and (await reply.json())["error"] == "admin_disabled"


async def test_cli_manages_stores_and_the_running_gateway_follows(gateway, monkeypatch):
    # the CLI is a client of the gateway's admin API: its URL and an operate token, nothing more
    monkeypatch.setenv("TASLEEM_INGEST_URL", str(gateway.make_url("")))
    monkeypatch.setenv("TASLEEM_INGEST_ADMIN_TOKEN", ADMIN_TOKEN)
    # the Zid shop of the sandbox's Zid store, registered again under a new id
    monkeypatch.setenv("TASLEEM_STORE_API_CREDENTIAL", ZID_API_CREDENTIAL)
    runner = CliRunner()
    store_id = f"cli-{uuid.uuid4().hex[:6]}"
    secret, newer = "tasleem:pw-" + os.urandom(4).hex(), "tasleem:pw2-" + os.urandom(4).hex()

    async def cli(*args: str, secret_env: str | None = None):
        env = {"TASLEEM_STORE_SECRET": secret_env} if secret_env else {}
        result = await asyncio.to_thread(runner.invoke, tasleem, ["stores", *args], env=env)
        assert secret not in result.output and newer not in result.output
        assert ZID_API_CREDENTIAL not in result.output
        return result

    added = await cli(
        "add",
        store_id,
        "--platform",
        "zid",
        "--name",
        "CLI Cards",
        "--sku-map",
        '{"p-1": "SKU-A"}',
        "--json",
        secret_env=secret,
    )
    assert added.exit_code == 0, added.output
    assert json.loads(added.stdout)["secrets"] == [fingerprint(secret)]
    dup = await cli("add", store_id, "--platform", "zid", "--name", "x", secret_env=secret)
    assert dup.exit_code == 2 and "exists: use `tasleem stores update`" in dup.output
    zid_store = sandbox_store("zid").model_copy(update={"id": store_id, "secret": secret})

    async def send(s) -> int:
        await asyncio.sleep(0.3)  # the gateway's store cache lives 0.2 s in this test
        return (await deliver(gateway, s, wire.paid(s, sale(wire.numeric_order_id()))))[0]

    assert await send(zid_store) == 202
    assert (await cli("rotate-secret", store_id, secret_env=newer)).exit_code == 0
    assert await send(zid_store.model_copy(update={"secret": newer})) == 202
    updated = await cli("update", store_id, "--locale", "en", "--channels", "email", "--json")
    assert json.loads(updated.stdout)["channels"] == ["email"]
    listed = await cli("list", "--json")
    assert store_id in [s["store_id"] for s in json.loads(listed.stdout)["stores"]]
    table = await cli("list")  # for people: a table, secrets as fingerprints
    assert table.exit_code == 0 and store_id in table.stdout
    for shown in (fingerprint(newer), fingerprint(secret)):  # the first 8 hex digits of each
        assert shown.partition(":")[2][:8] in table.stdout
    bad = await cli("update", store_id, "--channels", "pigeon")  # the gateway's reason, named
    assert bad.exit_code == 2 and "channels" in bad.output
    assert (await cli("remove", store_id)).exit_code == 0
    assert await send(zid_store) == 404
    gone = await cli("remove", store_id)
    assert gone.exit_code == 2 and "no store with this id" in gone.output


async def test_registry_shares_one_query_per_store_and_survives_a_lost_database(
    gateway, module_database
):
    pool = await asyncpg.create_pool(
        module_database, min_size=1, max_size=4, server_settings={"search_path": "ingest"}
    )

    class Counted(StoreRegistry):
        queries = 0

        async def fresh(self, store_id: str) -> Store | None:
            Counted.queries += 1
            return await super().fresh(store_id)

    registry = Counted(pool, SEALER, ttl_s=0.05)
    try:
        found = await asyncio.gather(*(registry.get("salla-store") for _ in range(50)))
        assert {s.platform for s in found if s} == {"salla"} and Counted.queries == 1
        await asyncio.sleep(0.1)  # expired: still served from the last answer if the DB is gone
    finally:
        await pool.close()
    stale = await registry.get("salla-store")
    assert stale is not None and stale.store_id == "salla-store"
    with pytest.raises(RegistryUnavailable):
        await registry.get("never-seen")
