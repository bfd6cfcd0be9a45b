"""Zid: HTTP basic auth (no HMAC), and "paid" read from the order's payment status.

The body is the order itself with no event name, so the decision rests on the order:
`payment_status == "paid"` is paid, a cancelled or refunded status is a cancellation.
A store's Zid secrets are `username:password` pairs, two at once for rotation.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.ingest import orders
from services.ingest.errors import InvalidOrder, InvalidSignature
from services.ingest.stores import Store
from shared.events import OrderCancelled, OrderPaid, validation_summary

PLATFORM = "zid"
CANCELLED_CODES = {"cancelled", "canceled", "refunded", "reversed"}


def basic_auth(credentials: str) -> str:
    """The Authorization header for `username:password`."""
    return "Basic " + base64.b64encode(credentials.encode()).decode()


def verify(store: Store, headers: Mapping[str, str], raw: bytes) -> None:
    scheme, _, token = headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "basic" or not token:
        raise InvalidSignature("Zid deliveries must carry basic auth")
    try:
        offered = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidSignature("basic auth credentials are not base64") from None
    if not any(hmac.compare_digest(offered, s.encode()) for s in store.secrets):
        raise InvalidSignature("basic auth credentials do not match")


class _Loose(BaseModel):
    model_config = ConfigDict(coerce_numbers_to_str=True, extra="ignore")


class _Status(_Loose):
    code: str = ""
    name: str = ""


class _Customer(_Loose):
    name: str = ""
    email: str | None = None
    mobile: str | None = None


class _Product(_Loose):
    id: str | None = None
    sku: str | None = None
    name: str = ""
    quantity: int = Field(ge=1, le=100)


class _Order(_Loose):
    id: str = Field(min_length=1, max_length=128)
    order_status: _Status = _Status()
    payment_status: str = ""
    currency_code: str | None = None
    order_total: str | None = None
    customer: _Customer = _Customer()
    products: list[_Product] = []


def normalise(
    store: Store, headers: Mapping[str, str], payload: Any
) -> OrderPaid | OrderCancelled | None:
    try:
        order = _Order.model_validate(payload)
    except ValidationError as exc:
        raise InvalidOrder(validation_summary(exc)) from None
    if order.order_status.code in CANCELLED_CODES:
        return orders.cancelled(store, order.id, f"status {order.order_status.code}")
    if order.payment_status != "paid":
        return None
    mobile = order.customer.mobile
    if mobile and not mobile.startswith(("+", "0")):
        mobile = "+" + mobile  # Zid sends `9665…`: the country code without the plus
    return orders.paid(
        store,
        order.id,
        [orders.Line(p.sku or p.id or "", p.quantity, p.name) for p in order.products],
        name=order.customer.name,
        phone=mobile,
        email=order.customer.email,
        currency=order.currency_code,
        total=order.order_total,
    )
