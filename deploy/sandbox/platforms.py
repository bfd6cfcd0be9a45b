"""How each store platform words and signs its order webhooks (PLATFORMS.md), for the sandbox.

A `Webhook` is an event as first sent; a platform retry re-sends the same body and the same
stable headers, signed again where the platform signs per attempt.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from deploy.sandbox.config import StoreConfig
from deploy.sandbox.http import now_iso

SALLA_PAID_SLUG = "in_progress"


@dataclass(frozen=True)
class Webhook:
    """One event as first sent: a platform retry re-sends exactly this."""

    msg_id: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)  # stable across retries
    query: str = ""


@dataclass(frozen=True)
class Sale:
    """A paid order in platform-neutral terms."""

    order_id: str
    lines: list[dict[str, Any]]  # sku, quantity, title, price (Decimal string)
    customer: dict[str, Any]  # name, phone, email, locale
    total: str
    currency: str = "SAR"


def sign_standard(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks `webhook-signature` value for one delivery."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def _hmac(secret: str, body: bytes) -> bytes:
    return hmac.new(secret.encode(), body, hashlib.sha256).digest()


def _dumps(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def numeric_order_id() -> str:
    """Salla, Zid, Shopify and WooCommerce number their orders."""
    return str(secrets.randbelow(9 * 10**11) + 10**11)


def paid(store: StoreConfig, sale: Sale) -> Webhook:
    if store.platform == "salla":
        return _salla_paid(sale, salla_merchant_id(store.id))
    return _PAID[store.platform](sale)


def cancelled(store: StoreConfig, order_id: str, reason: str) -> Webhook:
    if store.platform == "salla":
        return _salla_cancelled(order_id, reason, salla_merchant_id(store.id))
    return _CANCELLED[store.platform](order_id, reason)


def salla_merchant_id(store_id: str) -> int:
    """The Salla merchant id the sandbox gives a store: stable, and different per store, so a
    gateway holding the store's merchant id can check the envelope's `merchant`."""
    return 10**9 + int.from_bytes(hashlib.sha256(store_id.encode()).digest()[:4]) % (9 * 10**9)


def delivery_headers(store: StoreConfig, webhook: Webhook) -> dict[str, str]:
    """What the platform puts on this attempt: content type, stable headers, its signature."""
    headers = {"content-type": "application/json", **webhook.headers}
    platform = store.platform
    if platform == "standard":
        timestamp = int(time.time())
        headers["webhook-id"] = webhook.msg_id
        headers["webhook-timestamp"] = str(timestamp)
        headers["webhook-signature"] = sign_standard(
            store.secret, webhook.msg_id, timestamp, webhook.body
        )
    elif platform == "salla":
        if store.salla_strategy == "token":
            headers["X-Salla-Security-Strategy"] = "Token"
            headers["Authorization"] = f"Bearer {store.secret}"
        else:
            headers["X-Salla-Security-Strategy"] = "Signature"
            headers["X-Salla-Signature"] = _hmac(store.secret, webhook.body).hex()
    elif platform == "zid":
        headers["Authorization"] = "Basic " + base64.b64encode(store.secret.encode()).decode()
    elif platform == "shopify":
        headers["X-Shopify-Hmac-Sha256"] = base64.b64encode(
            _hmac(store.secret, webhook.body)
        ).decode()
        headers["X-Shopify-Triggered-At"] = now_iso()
    elif platform == "woocommerce":
        headers["X-WC-Webhook-Signature"] = base64.b64encode(
            _hmac(store.secret, webhook.body)
        ).decode()
        headers["X-WC-Webhook-Delivery-ID"] = str(secrets.randbelow(10**9))  # new per attempt
    return headers


# ---- Standard Webhooks ---------------------------------------------------------------------


def _standard(event_type: str, data: dict[str, Any]) -> Webhook:
    body = {"type": event_type, "timestamp": now_iso(), "data": data}
    return Webhook("msg_" + secrets.token_urlsafe(18), _dumps(body))


def _standard_paid(sale: Sale) -> Webhook:
    data = {
        "order_id": sale.order_id,
        "paid_at": now_iso(),
        "currency": sale.currency,
        "total": sale.total,
        "customer": sale.customer,
        "lines": [
            {"sku": line["sku"], "quantity": line["quantity"], "title": line["title"]}
            for line in sale.lines
        ],
    }
    return _standard("order.paid", data)


def _standard_cancelled(order_id: str, reason: str) -> Webhook:
    return _standard(
        "order.cancelled", {"order_id": order_id, "cancelled_at": now_iso(), "reason": reason}
    )


# ---- Salla ---------------------------------------------------------------------------------


def _split_phone(phone: str | None) -> tuple[str, int | None]:
    """Salla's (`mobile_code`, `mobile`): "+966" and the national number as an integer."""
    digits = re.sub(r"\D", "", phone or "")
    if not digits:
        return "+966", None
    if (phone or "").startswith("+"):
        return "+" + digits[:3], int(digits[3:])
    return "+966", int(digits.lstrip("0") or "0")


def _names(customer: dict[str, Any]) -> tuple[str, str]:
    first, _, last = str(customer.get("name") or "").partition(" ")
    return first, last


def _salla_envelope(event: str, data: dict[str, Any], merchant: int) -> bytes:
    # Salla sends `created_at` both as ISO 8601 and as JS Date.toString(); the sandbox sends both.
    created = datetime.now(UTC).strftime(
        "%a %b %d %Y %H:%M:%S GMT+0000 (Coordinated Universal Time)"
    )
    return _dumps({"event": event, "merchant": merchant, "created_at": created, "data": data})


def _salla_paid(sale: Sale, merchant: int) -> Webhook:
    code, mobile = _split_phone(sale.customer.get("phone"))
    first, last = _names(sale.customer)
    data = {
        "id": int(sale.order_id),
        "reference_id": int(sale.order_id) % 10**8,
        "status": {"id": 1473353380, "name": "قيد التنفيذ", "slug": SALLA_PAID_SLUG},
        "payment_method": "mada",
        "currency": sale.currency,
        "is_pending_payment": False,
        "amounts": {"total": {"amount": float(sale.total), "currency": sale.currency}},
        "customer": {
            "id": 9001,
            "first_name": first,
            "last_name": last,
            "mobile": mobile,
            "mobile_code": code,
            "email": sale.customer.get("email"),
        },
        "items": [
            {
                "id": 500 + n,
                "name": line["title"],
                "sku": line["sku"],
                "quantity": line["quantity"],
                "amounts": {"total": {"amount": float(line["price"]), "currency": sale.currency}},
                "product": {
                    "id": 7000 + n,
                    "type": "codes",
                    "sku": line["sku"],
                    "name": line["title"],
                    "price": {"amount": float(line["price"]), "currency": sale.currency},
                },
            }
            for n, line in enumerate(sale.lines)
        ],
    }
    body = _salla_envelope("order.created", data, merchant)
    return Webhook("salla-" + secrets.token_hex(8), body)


def _salla_cancelled(order_id: str, reason: str, merchant: int) -> Webhook:
    data = {"id": int(order_id), "status": {"slug": "canceled", "name": reason}}
    body = _salla_envelope("order.cancelled", data, merchant)
    return Webhook("salla-" + secrets.token_hex(8), body)


# ---- Zid -----------------------------------------------------------------------------------


def _zid_order(order_id: str, status: str, payment: str, sale: Sale | None) -> dict[str, Any]:
    customer = sale.customer if sale else {}
    phone = re.sub(r"\D", "", customer.get("phone") or "")
    if phone.startswith("05"):
        phone = "966" + phone[1:]
    return {
        "id": int(order_id),
        "code": f"Z{order_id[-6:]}",
        "store_id": 45678,
        "order_status": {"name": status, "code": status},
        "payment_status": payment,
        "currency_code": sale.currency if sale else "SAR",
        "order_total": sale.total if sale else "0.00",
        "created_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "customer": {
            "id": 3003,
            "name": customer.get("name", ""),
            "email": customer.get("email"),
            "mobile": phone or None,
        },
        "products": [
            {
                "id": f"{n:08x}-0000-4000-8000-{int(order_id) % 10**12:012d}",
                "sku": line["sku"],
                "name": line["title"],
                "price": line["price"],
                "quantity": line["quantity"],
            }
            for n, line in enumerate(sale.lines if sale else [])
        ],
    }


def _zid_paid(sale: Sale) -> Webhook:
    body = _dumps(_zid_order(sale.order_id, "new", "paid", sale))
    return Webhook("zid-" + secrets.token_hex(8), body, query="event=order.payment_status.update")


def _zid_cancelled(order_id: str, reason: str) -> Webhook:
    body = _dumps(_zid_order(order_id, "cancelled", "paid", None))
    return Webhook("zid-" + secrets.token_hex(8), body, query="event=order.status.update")


def zid_unpaid(sale: Sale) -> Webhook:
    """Zid's `order.create` for an order not paid yet (bank transfer, cash on delivery)."""
    body = _dumps(_zid_order(sale.order_id, "new", "unpaid", sale))
    return Webhook("zid-" + secrets.token_hex(8), body, query="event=order.create")


def zid_order_view(sale: Sale, *, paid: bool, cancelled: bool) -> dict[str, Any]:
    """`GET /managers/store/orders/{id}/view`'s answer: `{"order": {...}}`, the order as Zid
    has it now (the fields PLATFORMS.md lists; no others are invented)."""
    status = "cancelled" if cancelled else "new"
    return {"order": _zid_order(sale.order_id, status, "paid" if paid else "unpaid", sale)}


# ---- Shopify -------------------------------------------------------------------------------


def _shopify_headers(topic: str) -> dict[str, str]:
    return {
        "X-Shopify-Topic": topic,
        "X-Shopify-Shop-Domain": "sandbox-shop.myshopify.com",
        "X-Shopify-Event-Id": secrets.token_hex(16),
        "X-Shopify-Webhook-Id": secrets.token_hex(16),
        "X-Shopify-API-Version": "2025-10",
    }


def _shopify_paid(sale: Sale) -> Webhook:
    first, last = _names(sale.customer)
    body = {
        "id": int(sale.order_id),
        "name": f"#{int(sale.order_id) % 10**5}",
        "email": sale.customer.get("email"),
        "phone": sale.customer.get("phone"),
        "currency": sale.currency,
        "total_price": sale.total,
        "financial_status": "paid",
        "customer_locale": sale.customer.get("locale", "ar"),
        "line_items": [
            {
                "id": 900 + n,
                "product_id": 8000 + n,
                "variant_id": 8800 + n,
                "sku": line["sku"],
                "title": line["title"],
                "quantity": line["quantity"],
                "price": line["price"],
            }
            for n, line in enumerate(sale.lines)
        ],
        "customer": {
            "id": 77,
            "email": sale.customer.get("email"),
            "first_name": first,
            "last_name": last,
            "phone": sale.customer.get("phone"),
        },
    }
    headers = _shopify_headers("orders/paid")
    return Webhook(headers["X-Shopify-Event-Id"], _dumps(body), headers)


def _shopify_cancelled(order_id: str, reason: str) -> Webhook:
    body = {
        "id": int(order_id),
        "cancel_reason": reason,
        "cancelled_at": now_iso(),
        "financial_status": "refunded",
    }
    headers = _shopify_headers("orders/cancelled")
    return Webhook(headers["X-Shopify-Event-Id"], _dumps(body), headers)


# ---- WooCommerce ---------------------------------------------------------------------------


def _woo_headers(topic: str) -> dict[str, str]:
    resource, _, event = topic.partition(".")
    return {
        "X-WC-Webhook-Topic": topic,
        "X-WC-Webhook-Resource": resource,
        "X-WC-Webhook-Event": event,
        "X-WC-Webhook-Source": "https://sandbox-woo.example/",
        "X-WC-Webhook-ID": "17",
    }


def _woo_paid(sale: Sale) -> Webhook:
    first, last = _names(sale.customer)
    body = {
        "id": int(sale.order_id),
        "number": sale.order_id,
        "status": "processing",
        "payment_method": "stripe",
        "payment_method_title": "Credit card (Stripe)",
        "currency": sale.currency,
        "total": sale.total,
        "date_paid": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        "billing": {
            "first_name": first,
            "last_name": last,
            "email": sale.customer.get("email"),
            "phone": sale.customer.get("phone"),
        },
        "line_items": [
            {
                "id": 600 + n,
                "product_id": 4000 + n,
                "sku": line["sku"],
                "name": line["title"],
                "quantity": line["quantity"],
            }
            for n, line in enumerate(sale.lines)
        ],
    }
    return Webhook("wc-" + secrets.token_hex(8), _dumps(body), _woo_headers("order.updated"))


def _woo_cancelled(order_id: str, reason: str) -> Webhook:
    body = {"id": int(order_id), "status": "cancelled", "customer_note": reason}
    return Webhook("wc-" + secrets.token_hex(8), _dumps(body), _woo_headers("order.updated"))


_PAID = {
    "standard": _standard_paid,
    "zid": _zid_paid,
    "shopify": _shopify_paid,
    "woocommerce": _woo_paid,
}
_CANCELLED = {
    "standard": _standard_cancelled,
    "zid": _zid_cancelled,
    "shopify": _shopify_cancelled,
    "woocommerce": _woo_cancelled,
}
