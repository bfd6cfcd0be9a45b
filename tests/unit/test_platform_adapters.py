"""Each store platform's adapter, with payloads as PLATFORMS.md describes them: signature,
paid detection, the same order twice, and input that is not an order."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
from typing import Any

import pytest

from services.ingest import salla, shopify, woocommerce, zid
from services.ingest.errors import InvalidOrder, InvalidSignature
from services.ingest.platforms import ADAPTERS
from services.ingest.stores import Store
from shared.events import OrderCancelled, OrderPaid

KEY = "shpss_0123456789abcdef"
OLD = "previous-secret-still-valid"


def store(platform: str, **kw: Any) -> Store:
    secrets = ("ops:pa55:word", "ops:old") if platform == "zid" else (KEY, OLD)
    # the catalogue: p-1 sold as SKU-A, Shopify's variant 10 (a line without a sku) as itself
    catalogue = {"p-1": "SKU-A", "10": "10"}
    return Store(f"{platform}-1", platform, "Cards", secrets, sku_map=catalogue, **kw)


def hex_sig(body: bytes, secret: str = KEY) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def b64_sig(body: bytes, secret: str = KEY) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


# ---- Salla ---------------------------------------------------------------------------------

SALLA_ORDER: dict[str, Any] = {
    "event": "order.created",
    "merchant": 1305146709,
    "created_at": "Thu Nov 20 2026 10:00:00 GMT+0300 (Arabian Standard Time)",
    "data": {
        "id": 251403942,
        "reference_id": 60192812,
        "status": {"id": 1473353380, "name": "قيد التنفيذ", "slug": "in_progress"},
        "payment_method": "mada",
        "currency": "SAR",
        "is_pending_payment": False,
        "amounts": {"total": {"amount": 115, "currency": "SAR"}},
        "customer": {
            "id": 1,
            "first_name": "سارة",
            "last_name": "القحطاني",
            "mobile": 551234567,
            "mobile_code": "+966",
            "email": "sara@example.com",
        },
        "items": [
            {
                "id": 9,
                "name": "بطاقة",
                "sku": "p-1",
                "quantity": 2,
                "product": {"id": 77, "type": "codes", "sku": "p-1", "name": "بطاقة"},
            }
        ],
    },
}
SALLA_STATUS_UPDATED: dict[str, Any] = {
    "event": "order.status.updated",
    "merchant": 1305146709,
    "created_at": "2026-11-20T10:05:00+03:00",
    "data": {
        "id": 88,
        "status": "مكتمل",
        "order": {
            "id": 251403942,
            "reference_id": 60192812,
            "status": {"slug": "completed"},
            "customer": {"name": "سارة", "mobile": "+966551234567", "email": None},
            "items": [{"id": 9, "product_id": 77, "sku": "p-1", "quantity": 2}],
        },
    },
}


def test_salla_signature_is_lowercase_hex_hmac_with_either_secret():
    body = json.dumps(SALLA_ORDER).encode()
    s = store("salla")
    salla.verify(s, {"X-Salla-Signature": hex_sig(body)}, body)
    salla.verify(s, {"X-Salla-Signature": hex_sig(body, OLD).upper()}, body)
    for headers, raw in [
        ({}, body),
        ({"X-Salla-Signature": hex_sig(body)}, body + b" "),
        ({"X-Salla-Signature": hex_sig(body, "other")}, body),
        ({"X-Salla-Signature": b64_sig(body)}, body),
    ]:
        with pytest.raises(InvalidSignature):
            salla.verify(s, headers, raw)


def test_salla_token_strategy_takes_bearer_or_bare_token_and_nothing_else():
    s = store("salla", salla_strategy="token")
    salla.verify(s, {"Authorization": f"Bearer {KEY}"}, b"{}")
    salla.verify(s, {"Authorization": OLD}, b"{}")
    # auth schemes are case-insensitive (RFC 7235)
    salla.verify(s, {"Authorization": f"bearer {KEY}"}, b"{}")
    salla.verify(s, {"Authorization": f"BEARER  {KEY} "}, b"{}")
    for value in ("", "Bearer ", "Bearer nope", f"Basic {KEY}x"):
        with pytest.raises(InvalidSignature):
            salla.verify(s, {"Authorization": value}, b"{}")
    with pytest.raises(InvalidSignature):  # a signature is no use to a token store
        salla.verify(s, {"X-Salla-Signature": hex_sig(b"{}")}, b"{}")


def test_salla_paid_order_and_its_status_update_are_one_event():
    s = store("salla")
    created = salla.normalise(s, {}, SALLA_ORDER)
    assert isinstance(created, OrderPaid)
    assert created.order_key == "salla:salla-1:251403942"
    assert [(line.sku, line.quantity) for line in created.lines] == [("SKU-A", 2)]
    assert created.customer.phone == "+966551234567"
    assert created.customer.name == "سارة القحطاني"
    assert created.total == "115" and created.currency == "SAR"
    # a status update says nothing of `is_pending_payment`: missing is not paid
    assert salla.normalise(s, {}, SALLA_STATUS_UPDATED) is None
    confirmed = copy.deepcopy(SALLA_STATUS_UPDATED)
    confirmed["data"]["order"]["is_pending_payment"] = False
    updated = salla.normalise(s, {}, confirmed)
    assert isinstance(updated, OrderPaid)
    assert updated.event_id == created.event_id
    assert updated.customer.phone == "+966551234567"


@pytest.mark.parametrize(
    ("slug", "pending"),
    [
        ("payment_pending", True),
        ("waiting_for_payment_confirmation", True),
        ("payment_failed", False),
        ("in_progress", True),
    ],
)
def test_salla_orders_not_yet_paid_are_only_acknowledged(slug, pending):
    payload = copy.deepcopy(SALLA_ORDER)
    payload["data"]["status"]["slug"] = slug
    payload["data"]["is_pending_payment"] = pending
    assert salla.normalise(store("salla"), {}, payload) is None


def test_salla_cancel_refund_and_other_events():
    s = store("salla")
    for event in ("order.cancelled", "order.refunded"):
        got = salla.normalise(s, {}, {**SALLA_ORDER, "event": event})
        assert isinstance(got, OrderCancelled) and got.order_key == "salla:salla-1:251403942"
    canceled = copy.deepcopy(SALLA_ORDER)
    canceled["event"] = "order.updated"
    canceled["data"]["status"]["slug"] = "canceled"
    assert isinstance(salla.normalise(s, {}, canceled), OrderCancelled)
    assert salla.normalise(s, {}, {**SALLA_ORDER, "event": "product.created"}) is None


@pytest.mark.parametrize(
    "payload",
    [
        [],
        {"event": "order.created"},
        {"event": "order.created", "data": {"status": {"slug": "completed"}}},
        {"event": "order.status.updated", "data": {"id": 1, "status": "x"}},
        {**SALLA_ORDER, "data": {**SALLA_ORDER["data"], "items": []}},
        {**SALLA_ORDER, "data": {**SALLA_ORDER["data"], "customer": {"first_name": "x"}}},
        {**SALLA_ORDER, "data": {**SALLA_ORDER["data"], "items": [{"sku": "p-1", "quantity": 0}]}},
    ],
)
def test_salla_payloads_that_are_not_orders_are_invalid(payload):
    with pytest.raises(InvalidOrder):
        salla.normalise(store("salla"), {}, payload)


# ---- Zid -----------------------------------------------------------------------------------

ZID_ORDER: dict[str, Any] = {
    "id": 3500412,
    "code": "Z9QX1",
    "store_id": 45678,
    "order_status": {"name": "جديد", "code": "new"},
    "payment_status": "paid",
    "currency_code": "SAR",
    "order_total": "230.00",
    "created_at": "2026-11-20 10:00:00",
    "customer": {"id": 3, "name": "Omar", "email": "omar@example.com", "mobile": "966551234567"},
    "products": [
        {
            "id": "6b1b1d1e-0000-4000-8000-000000000001",
            "sku": "p-1",
            "name": "Card",
            "price": "115",
            "quantity": 2,
        }
    ],
}


def _basic(credentials: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


def test_zid_basic_auth_with_either_credential_pair():
    s = store("zid")
    zid.verify(s, _basic("ops:pa55:word"), b"{}")  # a colon inside the password is fine
    zid.verify(s, _basic("ops:old"), b"{}")
    for headers in (
        {},
        _basic("ops:wrong"),
        {"Authorization": "Basic !!!"},
        {"Authorization": "Bearer ops:old"},
        {"Authorization": "Basic"},
    ):
        with pytest.raises(InvalidSignature):
            zid.verify(s, headers, b"{}")


def test_zid_paid_is_the_payment_status_and_a_redelivery_is_the_same_event():
    s = store("zid")
    first = zid.normalise(s, {}, ZID_ORDER)
    assert isinstance(first, OrderPaid)
    assert first.order_key == "zid:zid-1:3500412"
    assert first.customer.phone == "+966551234567"
    assert [(line.sku, line.quantity) for line in first.lines] == [("SKU-A", 2)]
    status_update = {**ZID_ORDER, "order_status": {"name": "جاهز", "code": "ready"}}
    again = zid.normalise(s, {}, status_update)
    assert again is not None and again.event_id == first.event_id
    assert zid.normalise(s, {}, {**ZID_ORDER, "payment_status": "unpaid"}) is None
    refunded = zid.normalise(s, {}, {**ZID_ORDER, "order_status": {"code": "refunded"}})
    assert isinstance(refunded, OrderCancelled) and refunded.order_key == first.order_key


@pytest.mark.parametrize(
    "payload",
    [
        "order",
        {"payment_status": "paid"},
        {**ZID_ORDER, "products": []},
        {**ZID_ORDER, "products": [{"sku": "p-1", "quantity": "many"}]},
        {**ZID_ORDER, "customer": {"name": "no contact"}},
    ],
)
def test_zid_payloads_that_are_not_orders_are_invalid(payload):
    with pytest.raises(InvalidOrder):
        zid.normalise(store("zid"), {}, payload)


# ---- Shopify -------------------------------------------------------------------------------

SHOPIFY_ORDER: dict[str, Any] = {
    "id": 820982911946154508,
    "name": "#1001",
    "email": "jon@example.com",
    "phone": None,
    "currency": "USD",
    "total_price": "199.65",
    "financial_status": "paid",
    "customer_locale": "en-US",
    "line_items": [
        {
            "id": 1,
            "product_id": 632910392,
            "variant_id": 808950810,
            "sku": "p-1",
            "title": "Key",
            "quantity": 1,
            "price": "199.00",
        },
        {
            "id": 2,
            "product_id": 9,
            "variant_id": 10,
            "sku": "",
            "title": "No sku",
            "quantity": 1,
            "price": "1",
        },
    ],
    "customer": {
        "id": 1,
        "email": "jon@example.com",
        "first_name": "Jon",
        "last_name": "Snow",
        "phone": "+971501234567",
    },
}


def test_shopify_signature_is_base64_hmac():
    body = json.dumps(SHOPIFY_ORDER).encode()
    s = store("shopify")
    shopify.verify(s, {"X-Shopify-Hmac-Sha256": b64_sig(body)}, body)
    shopify.verify(s, {"X-Shopify-Hmac-Sha256": b64_sig(body, OLD)}, body)
    for headers in (
        {},
        {"X-Shopify-Hmac-Sha256": hex_sig(body)},
        {"X-Shopify-Hmac-Sha256": b64_sig(body + b"x")},
    ):
        with pytest.raises(InvalidSignature):
            shopify.verify(s, headers, body)


def test_shopify_orders_paid_and_later_updates_are_one_event():
    s = store("shopify")
    paid = shopify.normalise(s, {"X-Shopify-Topic": "orders/paid"}, SHOPIFY_ORDER)
    assert isinstance(paid, OrderPaid)
    assert paid.order_key == "shopify:shopify-1:820982911946154508"
    assert [line.sku for line in paid.lines] == ["SKU-A", "10"]  # no sku: the variant id
    assert paid.customer.phone == "+971501234567" and paid.customer.locale == "en"
    updated = shopify.normalise(s, {"X-Shopify-Topic": "orders/updated"}, SHOPIFY_ORDER)
    assert updated is not None and updated.event_id == paid.event_id
    pending = {**SHOPIFY_ORDER, "financial_status": "pending"}
    assert shopify.normalise(s, {"X-Shopify-Topic": "orders/create"}, pending) is None
    assert shopify.normalise(s, {"X-Shopify-Topic": "products/update"}, SHOPIFY_ORDER) is None
    refund = shopify.normalise(
        s, {"X-Shopify-Topic": "refunds/create"}, {"id": 5, "order_id": SHOPIFY_ORDER["id"]}
    )
    assert isinstance(refund, OrderCancelled) and refund.order_key == paid.order_key


@pytest.mark.parametrize(
    "payload",
    [
        {"financial_status": "paid"},
        {**SHOPIFY_ORDER, "line_items": []},
        {**SHOPIFY_ORDER, "email": None, "customer": None},
        [1, 2],
    ],
)
def test_shopify_payloads_that_are_not_orders_are_invalid(payload):
    with pytest.raises(InvalidOrder):
        shopify.normalise(store("shopify"), {"X-Shopify-Topic": "orders/paid"}, payload)


# ---- WooCommerce ---------------------------------------------------------------------------

WOO_ORDER: dict[str, Any] = {
    "id": 727,
    "number": "727",
    "status": "processing",
    "currency": "SAR",
    "total": "29.35",
    "date_paid": "2026-11-20T10:00:00",
    "billing": {
        "first_name": "Lina",
        "last_name": "K",
        "email": "lina@example.com",
        "phone": "0551234567",
    },
    "line_items": [{"id": 315, "product_id": 93, "sku": "p-1", "name": "Card", "quantity": 3}],
}
WOO = {"X-WC-Webhook-Topic": "order.updated"}


def test_woocommerce_signature_and_the_unsigned_creation_ping():
    body = json.dumps(WOO_ORDER).encode()
    s = store("woocommerce")
    woocommerce.verify(s, {"X-WC-Webhook-Signature": b64_sig(body)}, body)
    with pytest.raises(InvalidSignature):
        woocommerce.verify(s, {"X-WC-Webhook-Signature": b64_sig(body, "x")}, body)
    with pytest.raises(InvalidSignature):
        woocommerce.verify(s, {}, body)
    assert woocommerce.is_ping("application/x-www-form-urlencoded", b"webhook_id=17")
    assert not woocommerce.is_ping("application/json", b"webhook_id=17")
    assert not woocommerce.is_ping("application/x-www-form-urlencoded", b"webhook_id=17&x=1")


def test_woocommerce_paid_needs_a_paid_status_and_date_paid():
    s = store("woocommerce")
    paid = woocommerce.normalise(s, WOO, WOO_ORDER)
    assert isinstance(paid, OrderPaid) and paid.order_key == "woocommerce:woocommerce-1:727"
    assert paid.lines[0].sku == "SKU-A" and paid.lines[0].quantity == 3
    completed = woocommerce.normalise(s, WOO, {**WOO_ORDER, "status": "completed"})
    assert completed is not None and completed.event_id == paid.event_id
    assert woocommerce.normalise(s, WOO, {**WOO_ORDER, "date_paid": None}) is None
    assert woocommerce.normalise(s, WOO, {**WOO_ORDER, "status": "pending"}) is None
    assert woocommerce.normalise(s, {"X-WC-Webhook-Topic": "product.created"}, {}) is None
    refunded = woocommerce.normalise(s, WOO, {**WOO_ORDER, "status": "refunded"})
    assert isinstance(refunded, OrderCancelled) and refunded.order_key == paid.order_key


@pytest.mark.parametrize(
    "payload",
    [
        {"status": "processing"},
        {**WOO_ORDER, "line_items": []},
        {**WOO_ORDER, "billing": {"first_name": "x"}},
        {**WOO_ORDER, "id": ""},
    ],
)
def test_woocommerce_payloads_that_are_not_orders_are_invalid(payload):
    with pytest.raises(InvalidOrder):
        woocommerce.normalise(store("woocommerce"), WOO, payload)


# ---- every adapter -------------------------------------------------------------------------


def test_every_platform_has_an_adapter_and_keys_orders_by_platform():
    assert set(ADAPTERS) == {"standard", "salla", "zid", "shopify", "woocommerce"}
    a = salla.normalise(store("salla"), {}, SALLA_ORDER)
    s2 = Store("salla-2", "salla", "Other", (KEY,))
    b = salla.normalise(s2, {}, SALLA_ORDER)
    assert a is not None and b is not None and a.event_id != b.event_id  # same id, other store


def test_error_details_never_echo_the_payload():
    payload = {**SHOPIFY_ORDER, "line_items": [{"sku": "SECRET-CODE-123", "quantity": "x"}]}
    with pytest.raises(InvalidOrder) as caught:
        shopify.normalise(store("shopify"), {"X-Shopify-Topic": "orders/paid"}, payload)
    assert "SECRET-CODE-123" not in caught.value.detail
