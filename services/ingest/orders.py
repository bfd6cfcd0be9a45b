"""What every platform adapter shares: building our events, and checking an HMAC."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from services.ingest import fields
from services.ingest.errors import InvalidOrder, OrderTooLarge, UnknownSku
from services.ingest.phones import to_e164
from services.ingest.stores import Store
from shared.events import (
    Customer,
    OrderCancelled,
    OrderLine,
    OrderPaid,
    event_id_for,
    order_key,
    utcnow,
    validation_summary,
)


@dataclass(frozen=True)
class Line:
    """One order line as the platform names it (sku, else product id)."""

    platform_sku: str
    quantity: int
    title: str = ""


def paid(
    store: Store,
    order_id: str,
    lines: list[Line],
    *,
    name: str = "",
    phone: str | None = None,
    email: str | None = None,
    locale: str | None = None,
    paid_at: datetime | None = None,
    currency: str | None = None,
    total: str | None = None,
) -> OrderPaid:
    """The `order.paid` event: every field fit to store and show (see `fields`), skus mapped,
    the store's caps kept, phone in E.164, id stable for the same order."""
    _check_order_id(order_id)
    mapped = _lines(store, lines)
    e164 = to_e164(phone) if phone and not fields.has_hidden(phone) else None
    address = fields.usable_email(email)
    if not e164 and not address:
        raise InvalidOrder("customer: a phone or an email is needed to deliver the code")
    if currency and not fields.valid_currency(currency):
        raise InvalidOrder("currency must be a three-letter ISO 4217 code")
    key = order_key(store.platform, store.store_id, order_id)
    now = utcnow()
    try:
        return OrderPaid(
            event_id=event_id_for("order.paid", key),
            order_key=key,
            platform=store.platform,
            store_id=store.store_id,
            account=store.account,
            store_name=store.name,
            order_id=order_id,
            lines=mapped,
            customer=Customer(
                name=fields.clean_text(name, fields.MAX_NAME),
                phone=e164,
                email=address,
                locale=locale if locale in ("ar", "en") else store.locale,  # type: ignore[arg-type]
            ),
            paid_at=paid_at or now,
            received_at=now,
            currency=currency.upper() if currency else "SAR",
            total=fields.amount_or_none(total),
        )
    except ValidationError as exc:  # our own contract refuses it: still the sender's input
        raise InvalidOrder(validation_summary(exc)) from None


def _lines(store: Store, lines: list[Line]) -> list[OrderLine]:
    """The order's lines in internal skus, within the store's caps and catalogue."""
    if not lines:
        raise InvalidOrder("an order needs at least one line")
    if len(lines) > store.max_lines:
        raise OrderTooLarge(f"{len(lines)} lines: this store allows {store.max_lines} per order")
    units = sum(line.quantity for line in lines)
    if units > store.max_units:
        raise OrderTooLarge(f"{units} units: this store allows {store.max_units} per order")
    mapped = []
    for n, line in enumerate(lines):
        if not line.platform_sku or not 1 <= line.quantity <= 100:
            raise InvalidOrder("each line needs a sku and a quantity between 1 and 100")
        if not fields.valid_sku(line.platform_sku):
            raise InvalidOrder(f"line {n}: the sku is not 1-128 letters, digits and ._:/+#@-")
        if not store.sells(line.platform_sku):
            raise UnknownSku(f"line {n}: the sku is not in this store's catalogue")
        sku = store.internal_sku(line.platform_sku)
        if not fields.valid_sku(sku):
            raise InvalidOrder(f"line {n}: the store maps this sku to an invalid one")
        title = fields.clean_text(line.title, fields.MAX_TITLE)
        mapped.append(OrderLine(sku=sku, quantity=line.quantity, title=title))
    return mapped


def _check_order_id(order_id: str) -> None:
    problem = fields.order_id_problem(order_id)
    if problem:
        raise InvalidOrder(problem)


def cancelled(
    store: Store, order_id: str, reason: str, at: datetime | None = None
) -> OrderCancelled:
    _check_order_id(order_id)
    key = order_key(store.platform, store.store_id, order_id)
    return OrderCancelled(
        event_id=event_id_for("order.cancelled", key),
        order_key=key,
        platform=store.platform,
        store_id=store.store_id,
        account=store.account,
        order_id=order_id,
        reason=fields.clean_text(reason, fields.MAX_TITLE),
        cancelled_at=at or utcnow(),
    )


def locale_of(tag: object) -> str | None:
    """`ar`/`en` from a language tag such as `en-US`; None when it is neither."""
    if not isinstance(tag, str):
        return None
    lang = tag.split("-")[0].split("_")[0].lower()
    return lang if lang in ("ar", "en") else None


def hmac_sha256(secret: str, body: bytes) -> bytes:
    return hmac.new(secret.encode(), body, hashlib.sha256).digest()


def matches_any(secrets: Iterable[str], offered: str, body: bytes, encoding: str) -> bool:
    """Does `offered` (hex or base64 HMAC-SHA256 of the body) match any current secret?"""
    if not offered:
        return False
    wanted = offered.strip().encode()
    for secret in secrets:
        digest = hmac_sha256(secret, body)
        expected = digest.hex() if encoding == "hex" else base64.b64encode(digest).decode()
        if hmac.compare_digest(expected.encode(), wanted.lower() if encoding == "hex" else wanted):
            return True
    return False
