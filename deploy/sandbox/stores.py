"""Store platforms that sign and send paid-order webhooks, each in its own wire format."""

from __future__ import annotations

import itertools
import json
import logging
import secrets
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from deploy.sandbox import platforms
from deploy.sandbox.config import CONFIG, StoreConfig
from deploy.sandbox.http import json_error, read_json
from deploy.sandbox.platforms import Webhook

logger = logging.getLogger(__name__)

GATEWAY_TIMEOUT = aiohttp.ClientTimeout(total=30)  # what platforms such as Salla allow


sign = platforms.sign_standard  # kept under its old name for callers and tests


class Line(BaseModel):
    sku: str = Field(min_length=1)
    quantity: int = Field(ge=1, le=10_000)
    title: str | None = None
    price: Decimal | None = Field(default=None, ge=0)


class Customer(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    phone: str | None = None
    email: str | None = None
    locale: str = "ar"


class OrderRequest(BaseModel):
    lines: list[Line] | None = Field(default=None, min_length=1)
    customer: Customer | None = None
    order_id: str | None = Field(default=None, min_length=1, max_length=128)


class CancelRequest(BaseModel):
    reason: str = "cancelled by the store"


class Storefront:
    def __init__(self) -> None:
        self.paid: dict[tuple[str, str], Webhook] = {}
        self.cancelled: dict[tuple[str, str], Webhook] = {}
        self._numbers = itertools.count(1)

    def new_order_id(self, platform: str = "standard") -> str:
        if platform != "standard":
            return platforms.numeric_order_id()
        return f"SBX-{next(self._numbers):06d}-{secrets.token_hex(3).upper()}"


STOREFRONT = web.AppKey("storefront", Storefront)
GATEWAY_CLIENT = web.AppKey("gateway_client", aiohttp.ClientSession)


async def gateway_client(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession(timeout=GATEWAY_TIMEOUT) as session:
        app[GATEWAY_CLIENT] = session
        yield


def _paid_order(
    store: StoreConfig, order_id: str, lines: list[Line], customer: Customer
) -> Webhook:
    total = Decimal(0)
    sold = []
    for line in lines:
        price = line.price if line.price is not None else store.prices.get(line.sku)
        price = price if price is not None else store.default_price
        total += price * line.quantity
        sold.append(
            {
                "sku": line.sku,
                "quantity": line.quantity,
                "title": line.title or line.sku,
                "price": str(price.quantize(Decimal("0.01"))),
            }
        )
    sale = platforms.Sale(
        order_id=order_id,
        lines=sold,
        customer=customer.model_dump(),
        total=str(total.quantize(Decimal("0.01"))),
    )
    return platforms.paid(store, sale)


async def _deliver(request: web.Request, store: StoreConfig, webhook: Webhook) -> tuple[int, Any]:
    """POST the webhook to the gateway; (status, JSON answer or None). Raises on no answer."""
    headers = platforms.delivery_headers(store, webhook)
    url = f"{request.app[CONFIG].gateway}/webhooks/{store.platform}/{store.id}"
    if webhook.query:
        url += "?" + webhook.query
    async with request.app[GATEWAY_CLIENT].post(url, data=webhook.body, headers=headers) as reply:
        text = await reply.text()
        try:
            answer = json.loads(text) if text else None
        except ValueError:
            answer = None
        return reply.status, answer


async def _send(
    request: web.Request, store: StoreConfig, order_id: str, webhook: Webhook
) -> web.Response:
    try:
        status, answer = await _deliver(request, store, webhook)
    except (aiohttp.ClientError, TimeoutError) as exc:
        error = f"gateway unreachable: {type(exc).__name__}: {exc}"
        logger.warning("store %s: order %s: %s", store.id, order_id, error)
        return web.json_response(
            {"order_id": order_id, "status": None, "gateway": None, "error": error},
            status=502,
        )
    logger.info("store %s: order %s webhook answered %d", store.id, order_id, status)
    return web.json_response({"order_id": order_id, "status": status, "gateway": answer})


routes = web.RouteTableDef()


@routes.post("/stores/{store_id}/orders")
async def send_order(request: web.Request) -> web.Response:
    store = request.app[CONFIG].store(request.match_info["store_id"])
    if store is None:
        return json_error(404, f"unknown store {request.match_info['store_id']!r}")
    try:
        order = OrderRequest.model_validate(await read_json(request))
    except ValueError as exc:
        return json_error(400, str(exc))
    storefront = request.app[STOREFRONT]
    order_id = order.order_id or storefront.new_order_id(store.platform)
    webhook = storefront.paid.get((store.id, order_id))
    if webhook is None:
        if order.lines is None or order.customer is None:
            return json_error(400, "a new order needs lines and customer")
        webhook = _paid_order(store, order_id, order.lines, order.customer)
        storefront.paid[(store.id, order_id)] = webhook
    return await _send(request, store, order_id, webhook)


@routes.post("/stores/{store_id}/orders/{order_id}/cancel")
async def cancel_order(request: web.Request) -> web.Response:
    store = request.app[CONFIG].store(request.match_info["store_id"])
    if store is None:
        return json_error(404, f"unknown store {request.match_info['store_id']!r}")
    order_id = request.match_info["order_id"]
    storefront = request.app[STOREFRONT]
    if (store.id, order_id) not in storefront.paid:
        return json_error(404, f"store {store.id!r} sent no order {order_id!r}")
    try:
        raw = await request.read()
        cancel = CancelRequest.model_validate_json(raw) if raw.strip() else CancelRequest()
    except ValueError as exc:
        return json_error(400, str(exc))
    webhook = storefront.cancelled.get((store.id, order_id))
    if webhook is None:
        webhook = platforms.cancelled(store, order_id, cancel.reason)
        storefront.cancelled[(store.id, order_id)] = webhook
    return await _send(request, store, order_id, webhook)
