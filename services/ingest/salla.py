"""Salla: signature or token strategy, and "paid" read from the order's status slug.

Salla has no `order.paid` event: an order is paid once its status slug is past payment and
`is_pending_payment` is explicitly false (missing is not paid: a bank transfer awaiting review
came without it). Cash on delivery is paid only once delivered, and `under_review` (a bank
transfer the merchant has not checked) never is. The event id comes from the order key, so
`order.created`, `order.updated` and `order.status.updated` for one paid order are one event.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.ingest import orders
from services.ingest.errors import InvalidOrder, InvalidSignature, WrongMerchant
from services.ingest.stores import Store
from shared.admin_auth import bearer_token
from shared.events import OrderCancelled, OrderPaid, validation_summary

PLATFORM = "salla"
PAID_SLUGS = {"in_progress", "completed", "delivering", "delivered", "shipped"}
# the cash is collected by the courier: only a delivered (or completed) order has paid
CASH_ON_DELIVERY = {"cod", "cash_on_delivery"}
COD_PAID_SLUGS = {"completed", "delivered"}
CANCELLED_SLUGS = {"canceled", "cancelled", "refunded"}
CANCEL_EVENTS = {"order.cancelled", "order.refunded", "order.deleted"}
ORDER_EVENTS = {"order.created", "order.updated", "order.payment.updated", "order.status.updated"}


def verify(store: Store, headers: Mapping[str, str], raw: bytes) -> None:
    """`Signature`: hex HMAC-SHA256 of the body; `Token`: the secret in Authorization."""
    if store.salla_strategy == "token":
        # Salla sends the token bare or as a bearer credential, in any case of the scheme
        authorization = headers.get("Authorization", "").strip()
        offered = bearer_token(authorization) or authorization
        if offered and any(
            hmac.compare_digest(offered.encode(), s.encode()) for s in store.secrets
        ):
            return
        raise InvalidSignature("Authorization does not carry the store's webhook token")
    if not orders.matches_any(store.secrets, headers.get("X-Salla-Signature", ""), raw, "hex"):
        raise InvalidSignature("X-Salla-Signature is missing or does not match")


class _Loose(BaseModel):
    model_config = ConfigDict(coerce_numbers_to_str=True, extra="ignore")


class _Status(_Loose):
    slug: str = ""


class _Customer(_Loose):
    name: str = ""
    first_name: str = ""
    last_name: str = ""
    mobile: str | None = None
    mobile_code: str | None = None
    email: str | None = None


class _Product(_Loose):
    id: str | None = None
    sku: str | None = None
    name: str = ""


class _Item(_Loose):
    sku: str | None = None
    product_id: str | None = None
    name: str = ""
    quantity: int = Field(ge=1, le=100)
    product: _Product | None = None


class _Amount(_Loose):
    amount: str | None = None
    currency: str | None = None


class _Amounts(_Loose):
    total: _Amount | None = None


class _Order(_Loose):
    id: str = Field(min_length=1, max_length=128)
    status: _Status | str | None = None
    is_pending_payment: bool | None = None
    payment_method: str = ""
    currency: str | None = None
    amounts: _Amounts | None = None
    customer: _Customer = _Customer()
    items: list[_Item] = []


class _StatusUpdate(_Loose):
    order: _Order


class _Envelope(BaseModel):
    event: str = Field(min_length=1)
    merchant: int | str | None = None
    created_at: str | None = None
    data: dict[str, Any]


def normalise(
    store: Store, headers: Mapping[str, str], payload: Any
) -> OrderPaid | OrderCancelled | None:
    try:
        envelope = _Envelope.model_validate(payload)
        if envelope.event not in ORDER_EVENTS | CANCEL_EVENTS:
            return None
        if envelope.event == "order.status.updated":
            order = _StatusUpdate.model_validate(envelope.data).order
        else:
            order = _Order.model_validate(envelope.data)
    except ValidationError as exc:
        raise InvalidOrder(validation_summary(exc)) from None
    _check_merchant(store, envelope.merchant)
    slug = order.status.slug if isinstance(order.status, _Status) else ""
    if envelope.event in CANCEL_EVENTS or slug in CANCELLED_SLUGS:
        reason = envelope.event if envelope.event in CANCEL_EVENTS else f"status {slug}"
        return orders.cancelled(store, order.id, reason)
    if not is_paid(slug, order.is_pending_payment, order.payment_method):
        return None  # created but not paid yet: Salla sends another event when it is
    customer = order.customer
    name = customer.name or f"{customer.first_name} {customer.last_name}"
    phone = customer.mobile
    if phone and customer.mobile_code and not phone.startswith("+"):
        phone = customer.mobile_code + phone
    total = order.amounts.total if order.amounts else None
    return orders.paid(
        store,
        order.id,
        [_line(item) for item in order.items],
        name=name,
        phone=phone,
        email=customer.email,
        paid_at=_when(envelope.created_at),
        currency=order.currency or (total.currency if total else None),
        total=total.amount if total else None,
    )


def is_paid(slug: str, pending: bool | None, payment_method: str) -> bool:
    """Paid only on the signed body's word: a paid slug and `is_pending_payment` false."""
    if pending is not False or slug not in PAID_SLUGS:
        return False
    return payment_method.lower() not in CASH_ON_DELIVERY or slug in COD_PAID_SLUGS


def _check_merchant(store: Store, merchant: int | str | None) -> None:
    """The signed envelope names the Salla merchant: it must be this store's (when known)."""
    if store.platform_store_id and str(merchant) != store.platform_store_id:
        raise WrongMerchant("the webhook names another Salla merchant than this store's")


def _line(item: _Item) -> orders.Line:
    product = item.product
    sku = item.sku or (product.sku if product else None) or item.product_id
    sku = sku or (product.id if product else None) or ""
    return orders.Line(sku, item.quantity, item.name or (product.name if product else ""))


def _when(text: str | None) -> datetime | None:
    """ISO 8601 when it is; Salla also sends JS `Date.toString()` text, which we leave alone."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else None
