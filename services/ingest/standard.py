"""Standard Webhooks: verify the sender, and turn its order payload into our events.

Signed content is `{webhook-id}.{webhook-timestamp}.{raw body}`, HMAC-SHA256 keyed with the
base64-decoded secret after `whsec_`; `webhook-signature` holds space-separated `v1,<base64>`
entries and any match is accepted. Timestamps more than 5 minutes off are rejected.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.ingest import orders
from services.ingest.errors import InvalidOrder, InvalidSignature
from services.ingest.stores import Store
from shared.events import OrderCancelled, OrderPaid, validation_summary

TOLERANCE_S = 5 * 60
PLATFORM = "standard"


def _secret_bytes(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `v1,<base64>` signature of one message."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    secrets: Iterable[str], headers: Mapping[str, str], body: bytes, now: float | None = None
) -> str:
    """Check the signature against every current secret; returns the webhook id."""
    msg_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    signatures = headers.get("webhook-signature", "")
    if not msg_id or not timestamp or not signatures:
        raise InvalidSignature("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise InvalidSignature("webhook-timestamp is not unix seconds") from None
    now = datetime.now(UTC).timestamp() if now is None else now
    if abs(now - sent_at) > TOLERANCE_S:
        raise InvalidSignature("webhook-timestamp is more than 5 minutes off")
    offered = [
        entry.partition(",")[2].encode() for entry in signatures.split() if entry.startswith("v1,")
    ]
    for secret in secrets:
        try:
            expected = sign(secret, msg_id, sent_at, body).partition(",")[2].encode()
        except (binascii.Error, ValueError):
            continue  # a malformed stored secret must not turn into a 5xx
        if any(hmac.compare_digest(expected, sig) for sig in offered):
            return msg_id
    raise InvalidSignature("no signature matches")


class _Line(BaseModel):
    sku: str = Field(min_length=1, max_length=128)
    quantity: int = Field(ge=1, le=100)
    title: str = ""


class _Customer(BaseModel):
    name: str = ""
    phone: str | None = None
    email: str | None = None
    locale: Literal["ar", "en"] | None = None


class _OrderData(BaseModel):
    model_config = ConfigDict(coerce_numbers_to_str=True)

    order_id: str = Field(min_length=1, max_length=128)
    paid_at: datetime | None = None
    cancelled_at: datetime | None = None
    currency: str = "SAR"
    total: str | None = None
    customer: _Customer = _Customer()
    lines: list[_Line] = []
    reason: str = ""


class _Envelope(BaseModel):
    type: str = Field(min_length=1)
    timestamp: datetime | None = None
    data: dict[str, Any]


PAID_TYPES = {"order.paid"}
CANCELLED_TYPES = {"order.cancelled", "order.refunded"}


def normalise(store: Store, payload: Any) -> OrderPaid | OrderCancelled | None:
    """The event this payload means, or None for an event type we only acknowledge."""
    try:
        envelope = _Envelope.model_validate(payload)
        if envelope.type not in PAID_TYPES | CANCELLED_TYPES:
            return None
        data = _OrderData.model_validate(envelope.data)
    except ValidationError as exc:
        raise InvalidOrder(validation_summary(exc)) from None
    if envelope.type in CANCELLED_TYPES:
        return orders.cancelled(
            store, data.order_id, data.reason or envelope.type, data.cancelled_at
        )
    return orders.paid(
        store,
        data.order_id,
        [orders.Line(line.sku, line.quantity, line.title) for line in data.lines],
        name=data.customer.name,
        phone=data.customer.phone,
        email=data.customer.email,
        locale=data.customer.locale,
        paid_at=data.paid_at or envelope.timestamp,
        currency=data.currency,
        total=data.total,
    )
