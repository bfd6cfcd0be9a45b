import json
import time

import pytest

from services.ingest import standard
from services.ingest.errors import InvalidOrder, InvalidSignature
from services.ingest.stores import Store
from shared.events import OrderCancelled, OrderPaid

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
STORE = Store(
    "s1",
    "standard",
    "Store One",
    (SECRET,),
    sku_map={"p-1": "SKU-A", "OTHER": "OTHER"},
    locale="en",
)


def test_signature_matches_the_published_test_vector():
    sig = standard.sign(SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def _headers(body: bytes, secret: str = SECRET, ts: int | None = None, extra: str = "") -> dict:
    ts = int(time.time()) if ts is None else ts
    sig = standard.sign(secret, "msg_1", ts, body)
    return {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(ts),
        "webhook-signature": f"{extra} {sig}".strip(),
    }


def test_any_of_several_signatures_and_either_of_two_secrets_is_accepted():
    body = b"{}"
    other = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"
    headers = _headers(body, secret=other, extra="v1,bm90IGl0 v2,ignored")
    assert standard.verify([SECRET, other], headers, body) == "msg_1"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda h, b: ({**h, "webhook-signature": "v1,AAAA"}, b),
        lambda h, b: (h, b + b" "),
        lambda h, b: ({k: v for k, v in h.items() if k != "webhook-id"}, b),
        lambda h, b: ({**h, "webhook-timestamp": "soon"}, b),
        lambda h, b: ({**h, "webhook-id": "msg_2"}, b),
    ],
)
def test_tampering_is_refused(mutate):
    body = b'{"a": 1}'
    headers, body = mutate(_headers(body), body)
    with pytest.raises(InvalidSignature):
        standard.verify([SECRET], headers, body)


def test_timestamps_outside_five_minutes_are_refused():
    body = b"{}"
    now = time.time()
    with pytest.raises(InvalidSignature):
        standard.verify([SECRET], _headers(body, ts=int(now - 301)), body, now=now)
    with pytest.raises(InvalidSignature):
        standard.verify([SECRET], _headers(body, ts=int(now + 301)), body, now=now)
    standard.verify([SECRET], _headers(body, ts=int(now - 299)), body, now=now)


def _order(**data) -> dict:
    base = {
        "order_id": 1001,
        "paid_at": "2026-11-20T10:00:00Z",
        "customer": {"name": "Sara", "phone": "0551234567"},
        "lines": [{"sku": "p-1", "quantity": 2}, {"sku": "OTHER", "quantity": 1}],
    }
    return {"type": "order.paid", "data": {**base, **data}}


def test_paid_order_is_normalised():
    event = standard.normalise(STORE, _order())
    assert isinstance(event, OrderPaid)
    assert event.order_key == "standard:s1:1001"
    assert [(line.sku, line.quantity) for line in event.lines] == [("SKU-A", 2), ("OTHER", 1)]
    assert event.customer.phone == "+966551234567"
    assert event.customer.locale == "en"  # the store's default
    assert event.store_name == "Store One"


def test_the_same_order_always_gets_the_same_event_id():
    first = standard.normalise(STORE, _order())
    again = standard.normalise(STORE, json.loads(json.dumps(_order())))
    assert first is not None and again is not None
    assert first.event_id == again.event_id


def test_cancellation_and_unrelated_events():
    cancelled = standard.normalise(STORE, {"type": "order.refunded", "data": {"order_id": "9"}})
    assert isinstance(cancelled, OrderCancelled)
    assert standard.normalise(STORE, {"type": "customer.created", "data": {}}) is None


@pytest.mark.parametrize(
    "payload",
    [
        [],
        {"type": "order.paid"},
        {"type": "order.paid", "data": {"order_id": "1", "lines": []}},
        _order(lines=[{"sku": "x", "quantity": 0}]),
        _order(customer={"name": "no contact"}),
        _order(order_id=None),
    ],
)
def test_payloads_that_are_not_orders_are_invalid(payload):
    with pytest.raises(InvalidOrder):
        standard.normalise(STORE, payload)
