"""Zid: HTTP basic auth (no HMAC), and "paid" read from the order's payment status.

The body is the order itself with no event name, so the decision rests on the order:
`payment_status == "paid"` is paid, a cancelled or refunded status is a cancellation.
A store's Zid secrets are `username:password` pairs, two at once for rotation.

Basic auth proves who may call, nothing about what the body says: whoever holds the pair could
write any order, any buyer. So a webhook that claims a payment or a cancellation only names the
order; the gateway fetches it from Zid's orders API with the store's own credential and builds
the event from Zid's answer, which is the truth (lines, buyer, amount, status). A forged body
naming a real order then yields that order's genuine event (the same event id as Zid's own).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import re
from collections.abc import Mapping
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.ingest import orders
from services.ingest.errors import (
    InvalidOrder,
    InvalidSignature,
    PlatformUnavailable,
    StoreMisconfigured,
    UnconfirmedOrder,
    WrongMerchant,
)
from services.ingest.stores import Store
from shared.events import OrderCancelled, OrderPaid, validation_summary

log = logging.getLogger(__name__)

PLATFORM = "zid"
CANCELLED_CODES = {"cancelled", "canceled", "refunded", "reversed"}
ORDER_ID = re.compile(r"[0-9]{1,20}")  # Zid numbers its orders; nothing else goes in the URL
MAX_ANSWER_BYTES = 1024 * 1024


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
    store_id: str = ""
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
    if store.platform_store_id and order.store_id != store.platform_store_id:
        raise WrongMerchant("the order names another Zid store than this one")
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


class OrdersApi:
    """Zid's orders API (`GET /managers/store/orders/{id}/view`), asked with each store's own
    credential: Zid answers only for that store's orders."""

    def __init__(self, base_url: str, timeout_s: float):
        self.base_url = base_url.rstrip("/")
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout_s), raise_for_status=False
        )

    async def close(self) -> None:
        await self._session.close()

    async def order(self, store: Store, order_id: str) -> dict[str, Any] | None:
        """The order as Zid has it, or None when Zid does not know it for this store."""
        authorization, _, manager_token = store.api_credential.partition(":")
        if not authorization or not manager_token:
            raise StoreMisconfigured("this Zid store has no orders API credential")
        headers = {
            "Authorization": f"Bearer {authorization}",
            "X-Manager-Token": manager_token,
            "Accept": "application/json",
            "Accept-Language": "en",
        }
        if store.platform_store_id:
            headers["Store-Id"] = store.platform_store_id
        url = f"{self.base_url}/managers/store/orders/{order_id}/view"
        try:
            async with self._session.get(url, headers=headers, allow_redirects=False) as reply:
                status = reply.status
                raw = await _read_bounded(reply) if status == 200 else b""
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning(
                "Zid orders API unreachable for store %s: %s", store.store_id, type(exc).__name__
            )
            raise PlatformUnavailable("Zid's orders API did not answer; retry later") from None
        if status == 404:
            return None
        if status in (401, 403):
            log.warning("Zid refused store %s's API credential (HTTP %d)", store.store_id, status)
            raise StoreMisconfigured(
                f"Zid refused the store's orders API credential (HTTP {status})"
            )
        if status != 200:
            log.warning("Zid orders API answered %d for store %s", status, store.store_id)
            raise PlatformUnavailable(f"Zid's orders API answered {status}; retry later")
        try:
            order = json.loads(raw)["order"]
        except (ValueError, KeyError, TypeError):
            raise PlatformUnavailable("Zid's orders API answered without an order") from None
        if not isinstance(order, dict):
            raise PlatformUnavailable("Zid's orders API answered without an order")
        return order


async def _read_bounded(reply: aiohttp.ClientResponse) -> bytes:
    body = bytearray()
    async for chunk in reply.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:
            raise PlatformUnavailable("Zid's orders API answered over 1 MiB")
    return bytes(body)


async def confirm(
    api: OrdersApi, store: Store, claimed: OrderPaid | OrderCancelled
) -> OrderPaid | OrderCancelled | None:
    """The event Zid's own record of the order makes (None: not paid there, acknowledge only);
    UnconfirmedOrder when Zid does not know the order for this store."""
    if not ORDER_ID.fullmatch(claimed.order_id):
        raise UnconfirmedOrder("a Zid order id is a number")
    order = await api.order(store, claimed.order_id)
    if order is None:
        raise UnconfirmedOrder("Zid's orders API does not know this order for this store")
    if str(order.get("id")) != claimed.order_id:
        raise UnconfirmedOrder("Zid's orders API answered for another order")
    return normalise(store, {}, order)
