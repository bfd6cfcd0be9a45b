"""Hostile input through the real gateway (PostgreSQL, broker), issue 16: validly signed webhooks
of every platform carrying control characters, bidi overrides, huge numbers and deep nesting;
every admin route with a valid token; odd store ids and paths. The answer is JSON, never a 5xx,
and whatever is acknowledged is an event PostgreSQL can store."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deploy.sandbox import platforms as wire
from shared.events import OrderPaid
from tests.integration.gateway_support import (
    ADMIN_TOKEN,
    SANDBOX_STORES,
    deliver,
    running_gateway,
    sale,
    sandbox_store,
)
from tests.integration.test_consumer_loop import read_all

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
async def gateway(module_database: str, kafka: str) -> AsyncIterator[TestClient]:
    async with running_gateway(module_database, kafka, ingest_admin_token=ADMIN_TOKEN) as client:
        yield client


# ---- hostile values --------------------------------------------------------------------------

_odd_chars = st.sampled_from(
    ["\x00", "\x01", "\x1b", "\x7f", "\x85", "\u202e", "\u2066", "\u200f", "\ufeff", "\ud7ff"]
)
_odd_text = st.lists(st.one_of(_odd_chars, st.text(max_size=4)), max_size=8).map("".join)
_huge = st.sampled_from([10**30, -(10**30), 1e308, -1e308, 2**63, 0, -1, 10**4000])
_hostile = st.recursive(
    st.none() | st.booleans() | _huge | st.floats(allow_nan=False) | _odd_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_odd_text, inner, max_size=3),
    max_leaves=8,
)
DEEP = "[" * 100_000 + "]" * 100_000  # far past the JSON parser's recursion limit


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every position in a JSON document (containers too): where a bad value can go."""
    found = [path] if path else []
    if isinstance(value, dict):
        for key, inner in value.items():
            found += _leaves(inner, (*path, key))
    elif isinstance(value, list):
        for n, inner in enumerate(value):
            found += _leaves(inner, (*path, n))
    return found


def _put(document: Any, path: tuple[Any, ...], value: Any) -> None:
    for step in path[:-1]:
        document = document[step]
    document[path[-1]] = value


@st.composite
def hostile_delivery(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    """A paid order of any platform, one or more of its fields made hostile, validly signed."""
    store = draw(st.sampled_from(SANDBOX_STORES))
    customer_name = draw(st.sampled_from(["Sara", "Sa\x00ra", "\u202eSara", "x" * 5000]))
    order = sale(str(draw(st.integers(1, 10**12))))
    order.customer["name"] = customer_name
    payload = json.loads(wire.paid(store, order).body)
    marker = "__deep__"
    for path in draw(st.lists(st.sampled_from(_leaves(payload)), min_size=0, max_size=3)):
        try:
            _put(payload, path, marker if draw(st.integers(0, 9)) == 0 else draw(_hostile))
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change replaced this position's parent
    text = json.dumps(payload, ensure_ascii=draw(st.booleans()))
    body = text.replace(json.dumps(marker), DEEP).encode()
    webhook = wire.Webhook(f"msg_{uuid.uuid4().hex}", body, wire.paid(store, order).headers)
    headers = wire.delivery_headers(store, webhook)
    path = f"/webhooks/{store.platform}/{store.id}"
    if webhook_query := wire.paid(store, order).query:
        path += "?" + webhook_query
    return path, body, headers


def _in_thread(gateway: TestClient, loop: asyncio.AbstractEventLoop):  # type: ignore[no-untyped-def]
    async def call(method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        async with gateway.request(method, path, data=body, headers=headers) as reply:
            raw = await reply.read()
            return reply.status, (json.loads(raw) if raw else None)

    def run(method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        return asyncio.run_coroutine_threadsafe(call(method, path, body, headers), loop).result(30)

    return run


async def test_signed_hostile_webhooks_get_json_4xx_or_a_storable_event(
    gateway, kafka, module_database
):
    run = _in_thread(gateway, asyncio.get_running_loop())
    seen: set[int] = set()
    accepted: set[str] = set()

    @settings(
        max_examples=250, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(hostile_delivery())
    def check(delivery: tuple[str, bytes, dict[str, str]]) -> None:
        path, body, headers = delivery
        status, answer = run("POST", path, body, headers)
        seen.add(status)
        assert status < 500, (status, answer)
        assert isinstance(answer, dict), answer
        if status >= 400:
            assert set(answer) == {"error", "detail"} and answer["detail"], answer
        elif answer.get("status") == "accepted":
            accepted.add(answer["order_key"])

    await asyncio.to_thread(check)
    assert {400, 422}.issubset(seen) and accepted, seen  # refusals and acceptances both met
    # every acknowledged order is an event the allocator can parse and PostgreSQL can store
    conn = await asyncpg.connect(module_database)
    try:
        stored = 0
        for record in await read_all(kafka, OrderPaid.topic, 1):
            event = OrderPaid.model_validate_json(record.value)
            if event.order_key in accepted:
                await conn.fetchval("SELECT $1::text::jsonb", record.value.decode())
                stored += 1
        assert stored
    finally:
        await conn.close()


async def test_a_nul_in_the_buyers_name_is_acknowledged_and_storable(
    gateway, kafka, module_database
):
    store = sandbox_store("standard")
    order = sale(wire.numeric_order_id())
    order.customer["name"] = "Sa\x00ra \u202eQ"
    status, answer = await deliver(gateway, store, wire.paid(store, order))
    assert status == 202, answer
    events = [
        OrderPaid.model_validate_json(r.value) for r in await read_all(kafka, OrderPaid.topic, 1)
    ]
    mine = next(e for e in events if e.order_key == answer["order_key"])
    assert mine.customer.name == "Sara Q"
    conn = await asyncpg.connect(module_database)
    try:  # what the allocator does with it: jsonb, which refuses U+0000
        await conn.fetchval("SELECT $1::text::jsonb", mine.model_dump_json())
    finally:
        await conn.close()


@pytest.mark.parametrize(
    "store_id", ["%00", "a%00b", "secx:a", "..%2F..%2Fetc", "%E2%80%AE", "x" * 2000, "A"]
)
async def test_an_impossible_store_id_in_a_webhook_is_a_json_404_not_a_retry(gateway, store_id):
    store = sandbox_store("standard")
    webhook = wire.paid(store, sale(wire.numeric_order_id()))
    headers = wire.delivery_headers(store, webhook)
    async with gateway.post(
        f"/webhooks/standard/{store_id}", data=webhook.body, headers=headers
    ) as r:
        assert r.status == 404  # a 503 asked the platform to retry, forever
        assert (await r.json())["error"] in ("unknown_store", "not_found")


async def test_unknown_routes_and_methods_answer_json(gateway):
    for method, path, status in [
        ("GET", "/webhooks/salla/../../etc", 404),
        ("GET", "/nope", 404),
        ("GET", "/webhooks/salla/salla-store", 405),
        ("DELETE", "/openapi.json", 405),
    ]:
        async with gateway.request(method, path) as reply:
            assert reply.status == status, path
            assert reply.content_type == "application/json"
            answer = await reply.json()
            assert answer["error"] and answer["detail"]


async def test_caps_per_order_are_422_with_the_reason_and_set_per_store(gateway):
    store = sandbox_store("shopify")
    many = sale(wire.numeric_order_id())
    many = wire.Sale(many.order_id, many.lines * 51, many.customer, many.total)
    status, answer = await deliver(gateway, store, wire.paid(store, many))
    assert status == 422 and answer["error"] == "order_too_large" and "51 lines" in answer["detail"]
    # the operator lowers this store's cap: a 2-line order is now too large
    reply = await gateway.put(f"/admin/stores/{store.id}", json={"max_lines": 1}, headers=AUTH)
    assert reply.status == 200, await reply.text()
    assert (await reply.json())["max_lines"] == 1
    two = wire.Sale(many.order_id, many.lines[:2], many.customer, many.total)
    status, answer = await deliver(gateway, store, wire.paid(store, two))
    assert status == 422 and answer["error"] == "order_too_large"
    await gateway.put(f"/admin/stores/{store.id}", json={"max_lines": 50}, headers=AUTH)


async def test_a_replayed_paid_body_under_a_cancel_topic_does_not_cancel(gateway):
    store = sandbox_store("shopify")
    paid = wire.paid(store, sale(wire.numeric_order_id()))
    status, _ = await deliver(gateway, store, paid)
    assert status == 202
    headers = {**paid.headers, "X-Shopify-Topic": "orders/cancelled"}
    forged = wire.Webhook(paid.msg_id, paid.body, headers)
    status, answer = await deliver(gateway, store, forged)
    assert status == 200 and answer["status"] == "ignored"


# ---- the admin API ---------------------------------------------------------------------------

_store_ids = st.one_of(
    st.sampled_from(["%00", "a%00", "secx:a", "%E2%80%AE", "x" * 300, "Good", "ok-1"]),
    st.text(st.characters(min_codepoint=48, max_codepoint=122), min_size=1, max_size=12),
)
_admin_calls = st.tuples(
    st.sampled_from(
        [
            ("GET", "/admin/stores/{}"),
            ("PUT", "/admin/stores/{}"),
            ("DELETE", "/admin/stores/{}"),
            ("POST", "/admin/stores/{}/rotate-secret"),
            ("GET", "/admin/stores"),
        ]
    ),
    _store_ids,
    st.one_of(
        _hostile.map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries(
            {},
            optional={
                "platform": st.sampled_from(["standard", "salla", "zid", "x\x00"]),
                "name": _odd_text,
                "secrets": st.lists(_odd_text, max_size=3),
                "sku_map": st.dictionaries(_odd_text, _odd_text, max_size=2),
                "templates": st.dictionaries(_odd_text, _odd_text, max_size=2),
                "account": _odd_text,
                "max_lines": _huge,
                "max_units": _huge,
                "secret": _odd_text,
            },
        ).map(lambda v: json.dumps(v).encode()),
        st.just(DEEP.encode()),
        st.binary(max_size=30),
    ),
)


async def test_every_admin_route_with_a_valid_token_answers_json_never_5xx(gateway):
    run = _in_thread(gateway, asyncio.get_running_loop())

    @settings(
        max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(_admin_calls)
    def check(call: tuple[tuple[str, str], str, bytes]) -> None:
        (method, template), store_id, body = call
        if store_id in {s.id for s in SANDBOX_STORES}:
            return  # the other tests' stores stay as they are
        headers = {**AUTH, "content-type": "application/json"}
        status, answer = run(method, template.format(store_id), body, headers)
        assert status < 500, (status, answer)
        assert isinstance(answer, dict)
        if status >= 400:
            assert answer["error"] and answer["detail"], answer

    await asyncio.to_thread(check)
