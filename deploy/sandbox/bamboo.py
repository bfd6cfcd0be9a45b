"""A Bamboo-like wholesale supplier: asynchronous orders that answer at once and complete later.

`POST orders/checkout {RequestId (GUID), AccountId, Products:[{ProductId, Quantity, Value}]}`
charges and accepts the order; `GET orders/{RequestId}` shows it "Processing" until its cards
are ready (after `processing_s`, and never while the `pending` fault is on). Basic auth with
the client id and secret. 400 on out of stock or insufficient funds, 429 with Retry-After.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import itertools
import logging
import secrets
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deploy.sandbox.config import BambooConfig
from deploy.sandbox.faults import FAULTS
from deploy.sandbox.http import now_iso, read_json

logger = logging.getLogger(__name__)

PARTY = "bamboo"
CURRENCY = "USD"
PREFIX = "/bamboo/api/integration"


class CheckoutProduct(BaseModel):
    model_config = ConfigDict(extra="ignore")

    ProductId: int
    Quantity: int = Field(ge=1, le=10_000)
    Value: Decimal = Field(gt=0)


class CheckoutRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    RequestId: uuid.UUID
    AccountId: int
    Products: list[CheckoutProduct] = Field(min_length=1, max_length=1)


@dataclass
class BambooOrder:
    order_id: int
    request_id: str
    product_id: int
    quantity: int
    unit_price: Decimal
    created: str
    ready_at: float
    cards: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self, ready: bool) -> dict[str, Any]:
        return {
            "orderId": self.order_id,
            "requestId": self.request_id,
            "status": "Succeeded" if ready else "Processing",
            "createdDate": self.created,
            "total": float(self.unit_price * self.quantity),
            "currency": CURRENCY,
            "items": [
                {
                    "productId": self.product_id,
                    "productFaceValue": float(self.unit_price),
                    "quantity": self.quantity,
                    "currencyCode": CURRENCY,
                    "cards": self.cards if ready else [],
                }
            ],
        }


class Bamboo:
    def __init__(self, config: BambooConfig) -> None:
        self.config = config
        self.balance = config.balance
        self.skus = {product_id: sku for sku, product_id in config.products.items()}
        self.orders: dict[str, BambooOrder] = {}
        self.card_codes: set[str] = set()
        self._ids = itertools.count(secrets.randbelow(900_000) + 100_000)

    def cards(self, quantity: int) -> list[dict[str, Any]]:
        cards = []
        for _ in range(quantity):
            while (code := f"{self.config.code_prefix}-{secrets.token_hex(6).upper()}") in (
                self.card_codes
            ):
                pass
            self.card_codes.add(code)
            cards.append(
                {
                    "id": next(self._ids),
                    "serialNumber": secrets.token_hex(8),
                    "cardCode": code,
                    "pin": None,
                    "expirationDate": None,
                    "status": "Sold",
                }
            )
        return cards

    def ready(self, order: BambooOrder, pending: bool) -> bool:
        return not pending and time.monotonic() >= order.ready_at


BAMBOO = web.AppKey("bamboo", Bamboo)


def bamboo_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)


def unavailable(random_error: bool) -> web.Response:
    return bamboo_error(503, "SERVICE_UNAVAILABLE", "Service unavailable")


def _unauthorized(request: web.Request) -> web.Response | None:
    config = request.app[BAMBOO].config
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    try:
        user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        user = password = ""
    if scheme.lower() == "basic" and (
        hmac.compare_digest(user.encode(), config.client_id.encode())
        and hmac.compare_digest(password.encode(), config.client_secret.encode())
    ):
        return None
    return bamboo_error(401, "UNAUTHORIZED", "Invalid client credentials")


routes = web.RouteTableDef()


@routes.get(PREFIX + "/v2.0/catalog")
async def catalog(request: web.Request) -> web.Response:
    if denied := _unauthorized(request):
        return denied
    config = request.app[BAMBOO].config
    price = float(config.unit_price)
    products = [
        {
            "id": product_id,
            "name": f"{sku} gift card",
            "minFaceValue": price,
            "maxFaceValue": price,
            "count": None,
            "price": {"min": price, "max": price, "currencyCode": CURRENCY},
        }
        for sku, product_id in config.products.items()
    ]
    return web.json_response(
        {
            "pageIndex": 0,
            "pageSize": len(products),
            "count": len(products),
            "items": [{"name": "Sandbox brands", "currencyCode": CURRENCY, "products": products}],
        }
    )


@routes.get(PREFIX + "/v1.0/accounts")
async def accounts(request: web.Request) -> web.Response:
    if denied := _unauthorized(request):
        return denied
    bamboo = request.app[BAMBOO]
    account = {
        "id": bamboo.config.account_id,
        "currency": CURRENCY,
        "balance": float(bamboo.balance),
        "isActive": True,
        "sandboxMode": True,
    }
    return web.json_response({"accounts": [account]})


@routes.post(PREFIX + "/v1.0/orders/checkout")
async def checkout(request: web.Request) -> web.Response:
    if denied := _unauthorized(request):
        return denied
    bamboo = request.app[BAMBOO]
    switched = request.app[FAULTS].state[PARTY]
    try:
        asked = CheckoutRequest.model_validate(await read_json(request))
    except ValidationError as exc:
        fields = ", ".join(".".join(map(str, error["loc"])) for error in exc.errors())
        return bamboo_error(400, "BAD_REQUEST", f"Invalid fields: {fields}")
    except ValueError:
        return bamboo_error(400, "BAD_REQUEST", "The body is not JSON")
    if switched.rate_limited:
        response = bamboo_error(429, "TOO_MANY_REQUESTS", "Too many requests")
        response.headers["Retry-After"] = "1"
        return response
    request_id = str(asked.RequestId)
    if request_id in bamboo.orders:
        return bamboo_error(409, "DUPLICATE_REQUEST_ID", "An order with this RequestId exists")
    if asked.AccountId != bamboo.config.account_id:
        return bamboo_error(400, "INVALID_ACCOUNT", "Unknown account")
    line = asked.Products[0]
    if line.ProductId not in bamboo.skus:
        return bamboo_error(400, "PRODUCT_NOT_FOUND", "Unknown product")
    if switched.out_of_stock:
        return bamboo_error(400, "OUT_OF_STOCK", "Not enough stock for this product")
    cost = bamboo.config.unit_price * line.Quantity
    if cost > bamboo.balance or switched.insufficient_balance:
        return bamboo_error(400, "INSUFFICIENT_FUNDS", "Insufficient funds in the account")
    # no await between the checks and the record: the charge and the order are one step
    bamboo.balance -= cost
    bamboo.orders[request_id] = BambooOrder(
        order_id=next(bamboo._ids),
        request_id=request_id,
        product_id=line.ProductId,
        quantity=line.Quantity,
        unit_price=bamboo.config.unit_price,
        created=now_iso(),
        ready_at=time.monotonic() + bamboo.config.processing_s,
        cards=bamboo.cards(line.Quantity),
    )
    logger.info("bamboo: order %s accepted, %d cards", request_id, line.Quantity)
    if switched.charge_then_timeout:
        await asyncio.sleep(bamboo.config.charge_timeout_s)
    return web.json_response(request_id)


@routes.get(PREFIX + "/v1.0/orders/{request_id}")
async def get_order(request: web.Request) -> web.Response:
    if denied := _unauthorized(request):
        return denied
    bamboo = request.app[BAMBOO]
    order = bamboo.orders.get(request.match_info["request_id"].lower())
    if order is None:
        return bamboo_error(404, "ORDER_NOT_FOUND", "No order with this RequestId")
    pending = request.app[FAULTS].state[PARTY].pending
    return web.json_response(order.to_json(bamboo.ready(order, pending)))


control_routes = web.RouteTableDef()


@control_routes.get("/bamboo/_purchases")
async def purchases(request: web.Request) -> web.Response:
    bamboo = request.app[BAMBOO]
    return web.json_response(
        {
            "orders": [
                {
                    "requestId": order.request_id,
                    "productId": order.product_id,
                    "sku": bamboo.skus.get(order.product_id),
                    "quantity": order.quantity,
                }
                for order in bamboo.orders.values()
            ],
            "cards_issued": len(bamboo.card_codes),
            "balance": float(bamboo.balance),
        }
    )
