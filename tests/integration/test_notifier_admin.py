"""The notifier's admin API: scoped tokens, resend audited (who, when, which order, to whom,
never the codes), limited per order and per caller, answering with the original recipient;
and any input, fuzzed with a valid token, gets a JSON 4xx, never a 5xx."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.notifier.handlers import deliver
from services.notifier.resend import ResendLimits
from tests.integration.notifier_support import READER, allocation, bearer, running_notifier

pytestmark = pytest.mark.integration


@pytest.fixture
async def notifier(cipher, service_databases):
    limits = ResendLimits(per_order=2, per_caller=4)
    async with running_notifier(cipher, service_databases["notifier"], limits) as running:
        yield running


async def post_resend(notifier, order_key: str, body: object = None, token: str | None = None):
    url = f"{notifier.url}/admin/orders/{quote(order_key, safe=':')}/resend"
    headers = bearer(token) if token else bearer()
    async with notifier.session.post(url, json=body, headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers


async def test_a_resend_is_audited_and_shows_the_original_recipient(notifier, cipher):
    event = allocation(cipher, "a1", "AUD-CODE-1", phone="+966551230001")
    await deliver([event], notifier.pool, notifier.delivery)

    status, body, _ = await post_resend(notifier, event.order_key)  # to the buyer again
    assert status == 200, body
    assert body["original_recipient"] == {"phone": "+966551230001", "email": "sara@example.com"}
    assert body["recipient_changed"] is False
    status, body, _ = await post_resend(
        notifier, event.order_key, {"phone": "+966559990001", "reason": "ticket 77"}
    )
    assert status == 200, body
    assert body["original_recipient"]["phone"] == "+966551230001"
    assert body["recipient"] == {"phone": "+966559990001", "email": None}
    assert body["recipient_changed"] is True
    assert len(await notifier.inbox("+966559990001")) == 1

    rows = await notifier.pool.fetch("SELECT * FROM resends ORDER BY id")
    assert [(r["caller"], r["recipient_changed"], r["outcome"]) for r in rows] == [
        ("amal", False, "sent"),
        ("amal", True, "sent"),
    ]
    changed = rows[1]
    assert (changed["order_key"], changed["original_phone"], changed["phone"]) == (
        event.order_key,
        "+966551230001",
        "+966559990001",
    )
    assert changed["reason"] == "ticket 77" and changed["requested_at"] is not None
    assert json.loads(changed["parts"])[0]["status"] == "accepted"
    assert "AUD-CODE-1" not in str([dict(r) for r in rows])  # never the code

    # a read token sees the audit with the deliveries, and cannot resend
    url = f"{notifier.url}/admin/orders/{event.order_key}/deliveries"
    async with notifier.session.get(url, headers=bearer(READER)) as resp:
        history = await resp.json()
    assert [r["caller"] for r in history["resends"]] == ["amal", "amal"]
    status, body, _ = await post_resend(notifier, event.order_key, {}, token=READER)
    assert status == 403 and body["error"] == "forbidden"


async def test_resends_are_limited_per_order_and_per_caller(notifier, cipher):
    events = [allocation(cipher, f"l{i}", f"LIM-{i}", phone=f"+96655124000{i}") for i in range(4)]
    await deliver(events, notifier.pool, notifier.delivery)
    first = events[0].order_key
    # five at once on one order: the limit holds under concurrency (2 per order)
    answers = await asyncio.gather(*(post_resend(notifier, first) for _ in range(5)))
    assert sorted(status for status, _, _ in answers) == [200, 200, 429, 429, 429]
    refused = next(a for a in answers if a[0] == 429)
    assert refused[1]["error"] == "too_many_resends"
    assert 3500 <= int(refused[2]["Retry-After"]) <= 3600
    # the caller's limit (4) counts across orders
    assert (await post_resend(notifier, events[1].order_key))[0] == 200
    assert (await post_resend(notifier, events[2].order_key))[0] == 200
    status, body, _ = await post_resend(notifier, events[3].order_key)
    assert status == 429 and "caller" in body["detail"]
    assert await notifier.pool.fetchval("SELECT count(*) FROM resends") == 4


async def test_order_keys_postgres_cannot_hold_get_a_json_400(notifier):
    for key in ("standard:s1:\x00", "a" * 600, "standard:s1:\x1b[31m"):
        status, body, _ = await post_resend(notifier, key, {"phone": "+966551111111"})
        assert status == 400 and body["error"] == "invalid_order_key", (key, body)
        url = f"{notifier.url}/admin/orders/{quote(key, safe='')}/deliveries"
        async with notifier.session.get(url, headers=bearer()) as resp:
            assert resp.status == 400 and (await resp.json())["error"] == "invalid_order_key"
    status, body, _ = await post_resend(notifier, "standard:s1:x", {"email": "a\x00@b.co"})
    assert status == 400 and body["error"] == "invalid_recipient"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children),
    max_leaves=20,
)
FIELD = st.one_of(st.none(), st.text(), st.integers(), st.sampled_from(["+966551112222", ""]))
BODY = st.one_of(
    JSON,
    st.fixed_dictionaries({}, optional={"phone": FIELD, "email": FIELD, "reason": FIELD}),
)
KEY = st.one_of(
    st.text(max_size=700),
    st.sampled_from(["standard:s1:f1", "standard:s1:\x00", "%00", "..", "standard:s1:f1/x"]),
)
RAW = st.binary(max_size=300)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(key=KEY, body=BODY, raw=st.one_of(st.none(), RAW), path_bytes=st.binary(max_size=40))
async def test_admin_routes_answer_any_input_with_a_json_4xx_never_a_5xx(
    notifier_for_fuzz, key, body, raw, path_bytes
):
    notifier = notifier_for_fuzz
    headers = bearer()
    for quoted in (quote(key.encode("utf-8", "surrogatepass"), safe=""), quote(path_bytes)):
        base = f"{notifier.url}/admin/orders/{quoted}"
        if raw is None:
            post = notifier.session.post(f"{base}/resend", json=body, headers=headers)
        else:
            post = notifier.session.post(f"{base}/resend", data=raw, headers=headers)
        for request in (post, notifier.session.get(f"{base}/deliveries", headers=headers)):
            async with request as resp:
                text = await resp.text()
                assert resp.status < 500, (resp.status, text)
                if resp.status >= 400:
                    answer = json.loads(text)
                    assert answer["error"] and "detail" in answer, text


@pytest.fixture
async def notifier_for_fuzz(cipher, service_databases):
    # limits high enough that the fuzzer reaches every branch, not only 429
    limits = ResendLimits(per_order=1000, per_caller=100_000)
    async with running_notifier(cipher, service_databases["notifier"], limits) as running:
        event = allocation(cipher, "f1", "FUZZ-1")
        await deliver([event], running.pool, running.delivery)
        yield running
