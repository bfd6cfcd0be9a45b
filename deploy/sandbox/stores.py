"""Store platforms that sign and send paid-order webhooks, each in its own wire format, and
Zid's orders API, which answers for the orders its store has taken (the gateway confirms every
Zid order there: Zid signs nothing)."""

from __future__ import annotations

import hmac
import itertools
import json
import logging
import secrets
from collections.abc import AsyncIterator, Mapping
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
    # Zid only: an order taken but not paid yet (its API says so); posting it again with
    # `paid` true pays it and sends the paid webhook
    paid: bool = True
    # false: the store takes the order (its API knows it) but sends no webhook, for a load
    # generator that posts the webhook to the gateway itself
    send: bool = True


class CancelRequest(BaseModel):
    reason: str = "cancelled by the store"


class Storefront:
    def __init__(self) -> None:
        self.paid: dict[tuple[str, str], Webhook] = {}
        self.cancelled: dict[tuple[str, str], Webhook] = {}
        self.unpaid: dict[tuple[str, str], Webhook] = {}
        self.sales: dict[tuple[str, str], platforms.Sale] = {}  # what the store's API answers
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


def _sale(
    store: StoreConfig, order_id: str, lines: list[Line], customer: Customer
) -> platforms.Sale:
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
    return platforms.Sale(
        order_id=order_id,
        lines=sold,
        customer=customer.model_dump(),
        total=str(total.quantize(Decimal("0.01"))),
    )


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
    if not order.paid and store.platform != "zid":
        return json_error(400, "only the Zid store takes unpaid orders")
    storefront = request.app[STOREFRONT]
    order_id = order.order_id or storefront.new_order_id(store.platform)
    key = (store.id, order_id)
    webhook = storefront.paid.get(key)
    if webhook is not None and not order.paid:
        return json_error(409, f"order {order_id!r} is paid already")
    if webhook is None:
        sale = storefront.sales.get(key)
        if sale is None:
            if order.lines is None or order.customer is None:
                return json_error(400, "a new order needs lines and customer")
            sale = storefront.sales[key] = _sale(store, order_id, order.lines, order.customer)
            if not order.paid:
                storefront.unpaid[key] = platforms.zid_unpaid(sale)
        if order.paid:
            storefront.unpaid.pop(key, None)
            webhook = storefront.paid[key] = platforms.paid(store, sale)
        else:
            webhook = storefront.unpaid[key]
    if not order.send:
        return web.json_response({"order_id": order_id, "status": None, "gateway": None})
    return await _send(request, store, order_id, webhook)


def _zid_store_for(stores: list[StoreConfig], headers: Mapping[str, str]) -> StoreConfig | None:
    """The Zid store whose API credential the request carries (Zid: the manager token is the
    store's; both headers are needed)."""
    scheme, _, authorization = headers.get("Authorization", "").partition(" ")
    offered = f"{authorization.strip()}:{headers.get('X-Manager-Token', '')}".encode()
    if scheme.lower() != "bearer":
        return None
    for store in stores:
        credential = (store.api_credential or "").encode()
        if store.platform == "zid" and credential and hmac.compare_digest(offered, credential):
            return store
    return None


@routes.get("/zid/v1/managers/store/orders/{order_id}/view")
async def zid_order_view(request: web.Request) -> web.Response:
    """Zid's `GET /managers/store/orders/{id}/view`: the order as the store has it now, paid or
    not, cancelled or not. The error bodies are the sandbox's: Zid's are not documented."""
    store = _zid_store_for(request.app[CONFIG].stores, request.headers)
    if store is None:
        return web.json_response({"message": "Unauthenticated."}, status=401)
    storefront = request.app[STOREFRONT]
    key = (store.id, request.match_info["order_id"])
    sale = storefront.sales.get(key)
    if sale is None:
        return web.json_response({"message": "order not found"}, status=404)
    view = platforms.zid_order_view(
        sale, paid=key not in storefront.unpaid, cancelled=key in storefront.cancelled
    )
    return web.json_response(view)


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
