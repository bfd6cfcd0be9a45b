"""WooCommerce: base64 HMAC of the body; paid and cancelled are read from the signed order.

Paid = `completed`, or `processing` with `date_paid` set for a method whose money has arrived.
WooCommerce stamps `date_paid` on any order entering processing, cash on delivery included, so
a `cod` order is paid only once completed. Bank transfer and cheque orders wait `on-hold` until
the merchant confirms the money, and only then reach processing. The topic header only routes:
a signed paid body re-sent as `order.deleted` is not a cancellation.

When a webhook is created WooCommerce sends an unsigned form ping (`webhook_id=<id>`) and
disables the webhook unless it gets 200, so that ping is answered without a signature.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.ingest import orders
from services.ingest.errors import InvalidOrder, InvalidSignature
from services.ingest.stores import Store
from shared.events import OrderCancelled, OrderPaid, validation_summary

PLATFORM = "woocommerce"
PAID_STATUSES = {"processing", "completed"}
CANCELLED_STATUSES = {"cancelled", "refunded"}
# what an `order.deleted` body may say: only the id (a deleted order), or the bin / a cancel
DELETED_STATUSES = {"", "trash"} | CANCELLED_STATUSES
CASH_ON_DELIVERY = {"cod"}
ORDER_TOPICS = {"order.created", "order.updated", "order.restored"}
_PING = re.compile(rb"^webhook_id=\d{1,20}$")


def is_ping(content_type: str, raw: bytes) -> bool:
    return content_type == "application/x-www-form-urlencoded" and bool(_PING.match(raw.strip()))


def verify(store: Store, headers: Mapping[str, str], raw: bytes) -> None:
    if not orders.matches_any(store.secrets, headers.get("X-WC-Webhook-Signature", ""), raw, "b64"):
        raise InvalidSignature("X-WC-Webhook-Signature is missing or does not match")


class _Loose(BaseModel):
    model_config = ConfigDict(coerce_numbers_to_str=True, extra="ignore")


class _Billing(_Loose):
    first_name: str = ""
    last_name: str = ""
    email: str | None = None
    phone: str | None = None


class _Item(_Loose):
    sku: str | None = None
    product_id: str | None = None
    name: str = ""
    quantity: int = Field(ge=1, le=100)


class _Order(_Loose):
    id: str = Field(min_length=1, max_length=128)
    status: str = ""
    payment_method: str = ""
    currency: str | None = None
    total: str | None = None
    date_paid: str | None = None
    billing: _Billing = _Billing()
    line_items: list[_Item] = []


def is_paid(status: str, date_paid: str | None, payment_method: str) -> bool:
    if status not in PAID_STATUSES or not date_paid:
        return False
    # processing and cash on delivery: the courier has not collected yet. An empty method is
    # an order the merchant entered and marked paid by hand.
    return status == "completed" or payment_method.lower() not in CASH_ON_DELIVERY


def normalise(
    store: Store, headers: Mapping[str, str], payload: Any
) -> OrderPaid | OrderCancelled | None:
    topic = headers.get("X-WC-Webhook-Topic", "")
    if topic not in ORDER_TOPICS | {"order.deleted"}:
        return None
    try:
        order = _Order.model_validate(payload)
    except ValidationError as exc:
        raise InvalidOrder(validation_summary(exc)) from None
    if topic == "order.deleted":
        if order.status not in DELETED_STATUSES:
            return None  # a live order's body under a delete topic: the header does not decide
        return orders.cancelled(store, order.id, topic)
    if order.status in CANCELLED_STATUSES:
        return orders.cancelled(store, order.id, order.status)
    if not is_paid(order.status, order.date_paid, order.payment_method):
        return None
    billing = order.billing
    return orders.paid(
        store,
        order.id,
        [orders.Line(i.sku or i.product_id or "", i.quantity, i.name) for i in order.line_items],
        name=f"{billing.first_name} {billing.last_name}",
        phone=billing.phone,
        email=billing.email,
        currency=order.currency,
        total=order.total,
    )
