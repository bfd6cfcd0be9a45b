"""Shopify: base64 HMAC of the body with the app secret; the topic header routes the event.

The header is not signed, so it only routes: `orders/cancelled` cancels only a body that says
the order is cancelled (`cancelled_at` set) or its money returned; a paid body re-sent under
it is ignored, and the genuine paid webhook still counts.

`X-Shopify-Event-Id` repeats across retries, but the event id we publish comes from the order
key, which also folds `orders/paid` and a later `orders/updated` of the same order together.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.ingest import orders
from services.ingest.errors import InvalidOrder, InvalidSignature
from services.ingest.stores import Store
from shared.events import OrderCancelled, OrderPaid, validation_summary

PLATFORM = "shopify"
PAID_TOPICS = {"orders/paid", "orders/create", "orders/updated"}
CANCEL_TOPICS = {"orders/cancelled", "refunds/create"}
UNPAID_STATUSES = {"refunded", "voided"}


def verify(store: Store, headers: Mapping[str, str], raw: bytes) -> None:
    if not orders.matches_any(store.secrets, headers.get("X-Shopify-Hmac-Sha256", ""), raw, "b64"):
        raise InvalidSignature("X-Shopify-Hmac-Sha256 is missing or does not match")


class _Loose(BaseModel):
    model_config = ConfigDict(coerce_numbers_to_str=True, extra="ignore")


class _Customer(_Loose):
    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    phone: str | None = None


class _Address(_Loose):
    phone: str | None = None


class _Item(_Loose):
    sku: str | None = None
    variant_id: str | None = None
    product_id: str | None = None
    title: str = ""
    quantity: int = Field(ge=1, le=100)


class _Order(_Loose):
    id: str = Field(min_length=1, max_length=128)
    email: str | None = None
    phone: str | None = None
    currency: str | None = None
    total_price: str | None = None
    financial_status: str | None = None
    cancelled_at: str | None = None
    customer_locale: str | None = None
    customer: _Customer | None = None
    billing_address: _Address | None = None
    line_items: list[_Item] = []


class _Refund(_Loose):
    order_id: str = Field(min_length=1, max_length=128)


def normalise(
    store: Store, headers: Mapping[str, str], payload: Any
) -> OrderPaid | OrderCancelled | None:
    topic = headers.get("X-Shopify-Topic", "")
    if topic not in PAID_TOPICS | CANCEL_TOPICS:
        return None
    try:
        if topic == "refunds/create":
            return orders.cancelled(store, _Refund.model_validate(payload).order_id, topic)
        order = _Order.model_validate(payload)
    except ValidationError as exc:
        raise InvalidOrder(validation_summary(exc)) from None
    if order.cancelled_at or order.financial_status in UNPAID_STATUSES:
        return orders.cancelled(store, order.id, f"{topic}: {order.financial_status or ''}")
    if topic == "orders/cancelled" or order.financial_status != "paid":
        return None  # a live body under the cancel topic: the unsigned header does not decide
    customer = order.customer or _Customer()
    phone = order.phone or customer.phone or (order.billing_address or _Address()).phone
    return orders.paid(
        store,
        order.id,
        [
            orders.Line(i.sku or i.variant_id or i.product_id or "", i.quantity, i.title)
            for i in order.line_items
        ],
        name=f"{customer.first_name or ''} {customer.last_name or ''}",
        phone=phone,
        email=order.email or customer.email,
        locale=orders.locale_of(order.customer_locale),
        currency=order.currency,
        total=order.total_price,
    )
