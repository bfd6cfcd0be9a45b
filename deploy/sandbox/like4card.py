"""A Like4Card-like wholesale supplier: form POSTs with account credentials, encrypted serials.

Every call is a form POST under `/like4card/online/` carrying `deviceId`, `email`, `password`,
`securityCode` and `langId`. `create_order {productId, referenceId, quantity, time, hash}` answers
at once with `serials[{serialId, serialCode, serialNumber, validTo}]`; `order/details` finds an
order by `orderId` or `referenceId`. Replies are HTTP 200 with `"response": 1`, or
`"response": 0` and a `message` (plus a `code` naming the refusal); 429 when rate limited.

`hash` is the lowercase hex SHA-256 of `time + lowercase(email) + phone + hash_key`.
`serialCode` is encrypted as Like4Card documents it: AES-256-CBC with PKCS#7 padding, key = the
first 32 bytes of the hex SHA-256 of `secret_key`, IV = the first 16 bytes of the hex SHA-256 of
`secret_iv`, and the ciphertext base64-encoded twice.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import logging
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from deploy.sandbox.config import Like4CardConfig
from deploy.sandbox.faults import FAULTS
from deploy.sandbox.http import read_form

logger = logging.getLogger(__name__)

PARTY = "like4card"
CURRENCY = "SAR"
PREFIX = "/like4card/online"


def _keys(secret_key: str, secret_iv: str) -> tuple[bytes, bytes]:
    key = hashlib.sha256(secret_key.encode()).hexdigest()[:32].encode()
    iv = hashlib.sha256(secret_iv.encode()).hexdigest()[:16].encode()
    return key, iv


def encrypt_serial(plain: str, secret_key: str, secret_iv: str) -> str:
    """Encrypt a serial code the way Like4Card sends it."""
    key, iv = _keys(secret_key, secret_iv)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plain.encode()) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    raw = encryptor.update(padded) + encryptor.finalize()
    return base64.b64encode(base64.b64encode(raw)).decode()


def decrypt_serial(encrypted: str, secret_key: str, secret_iv: str) -> str:
    """The inverse of `encrypt_serial`; ValueError when it does not decrypt."""
    key, iv = _keys(secret_key, secret_iv)
    raw = base64.b64decode(base64.b64decode(encrypted))
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(raw) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return (unpadder.update(padded) + unpadder.finalize()).decode()


def order_hash(time_: str, email: str, phone: str, hash_key: str) -> str:
    return hashlib.sha256(f"{time_}{email.lower()}{phone}{hash_key}".encode()).hexdigest()


@dataclass
class Like4CardOrder:
    order_id: int
    reference_id: str
    product_id: int
    quantity: int
    unit_price: Decimal
    serials: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self, sku: str) -> dict[str, Any]:
        return {
            "response": 1,
            "orderId": str(self.order_id),
            "referenceId": self.reference_id,
            "orderPrice": str(self.unit_price * self.quantity),
            "orderPriceWithoutVat": str(self.unit_price * self.quantity),
            "productName": f"{sku} gift card",
            "productImage": "",
            "serials": self.serials,
        }


class Like4Card:
    def __init__(self, config: Like4CardConfig) -> None:
        self.config = config
        self.balance = config.balance
        self.skus = {product_id: sku for sku, product_id in config.products.items()}
        self.orders: dict[str, Like4CardOrder] = {}  # by referenceId
        self.codes: set[str] = set()
        self._ids = itertools.count(secrets.randbelow(900_000) + 100_000)

    def serials(self, quantity: int) -> list[dict[str, Any]]:
        valid_to = (datetime.now(UTC) + timedelta(days=365)).strftime("%d/%m/%Y")
        serials = []
        for _ in range(quantity):
            while (code := f"{self.config.code_prefix}-{secrets.token_hex(6).upper()}") in (
                self.codes
            ):
                pass
            self.codes.add(code)
            serials.append(
                {
                    "serialId": str(next(self._ids)),
                    "serialCode": encrypt_serial(
                        code, self.config.secret_key, self.config.secret_iv
                    ),
                    "serialNumber": secrets.token_hex(6),
                    "validTo": valid_to,
                }
            )
        return serials


LIKE4CARD = web.AppKey("like4card", Like4Card)


def refusal(code: str, message: str) -> web.Response:
    return web.json_response({"response": 0, "code": code, "message": message})


def unavailable(random_error: bool) -> web.Response:
    return web.json_response({"response": 0, "message": "Service unavailable"}, status=503)


async def _signed_in(request: web.Request) -> tuple[dict[str, str], web.Response | None]:
    """The form, and None when its account credentials are right (else the refusal)."""
    config = request.app[LIKE4CARD].config
    form = await read_form(request)
    expected = {
        "deviceId": config.device_id,
        "email": config.email,
        "password": config.password,
        "securityCode": config.security_code,
    }
    for name, value in expected.items():
        if not hmac.compare_digest(form.get(name, "").encode(), value.encode()):
            return form, refusal("unauthorized", "Incorrect login credentials")
    return form, None


routes = web.RouteTableDef()


@routes.post(PREFIX + "/check_balance")
async def check_balance(request: web.Request) -> web.Response:
    _, denied = await _signed_in(request)
    if denied:
        return denied
    like4card = request.app[LIKE4CARD]
    return web.json_response(
        {"response": 1, "userId": "1", "balance": str(like4card.balance), "currency": CURRENCY}
    )


@routes.post(PREFIX + "/products")
async def products(request: web.Request) -> web.Response:
    _, denied = await _signed_in(request)
    if denied:
        return denied
    like4card = request.app[LIKE4CARD]
    out_of_stock = request.app[FAULTS].state[PARTY].out_of_stock
    return web.json_response(
        {
            "response": 1,
            "data": [
                {
                    "productId": str(product_id),
                    "productName": f"{sku} gift card",
                    "productPrice": str(like4card.config.unit_price),
                    "productCurrency": CURRENCY,
                    "available": not out_of_stock,
                }
                for sku, product_id in like4card.config.products.items()
            ],
        }
    )


@routes.post(PREFIX + "/create_order")
async def create_order(request: web.Request) -> web.Response:
    form, denied = await _signed_in(request)
    if denied:
        return denied
    like4card = request.app[LIKE4CARD]
    config = like4card.config
    switched = request.app[FAULTS].state[PARTY]
    if switched.rate_limited:
        return web.json_response(
            {"response": 0, "message": "Too many requests"},
            status=429,
            headers={"Retry-After": "1"},
        )
    reference = form.get("referenceId", "")
    product = form.get("productId", "")
    quantity = form.get("quantity", "1")
    if not reference or not product.isdigit() or not quantity.isdigit() or int(quantity) < 1:
        return refusal("bad_request", "productId, referenceId and quantity are required")
    expected = order_hash(form.get("time", ""), config.email, config.phone, config.hash_key)
    if not hmac.compare_digest(form.get("hash", "").encode(), expected.encode()):
        return refusal("bad_hash", "Invalid hash")
    if reference in like4card.orders:
        return refusal("duplicate_reference", "This referenceId was already used")
    if int(product) not in like4card.skus:
        return refusal("product_not_found", "Product not found")
    if switched.out_of_stock:
        return refusal("out_of_stock", "Product is not available")
    cost = config.unit_price * int(quantity)
    if cost > like4card.balance or switched.insufficient_balance:
        return refusal("insufficient_balance", "Insufficient balance")
    # no await between the checks and the record: the charge and the order are one step
    like4card.balance -= cost
    order = Like4CardOrder(
        next(like4card._ids),
        reference,
        int(product),
        int(quantity),
        config.unit_price,
        like4card.serials(int(quantity)),
    )
    like4card.orders[reference] = order
    logger.info("like4card: order %d, %d serials", order.order_id, order.quantity)
    if switched.charge_then_timeout:
        await asyncio.sleep(config.charge_timeout_s)
    return web.json_response(order.to_json(like4card.skus[order.product_id]))


@routes.post(PREFIX + "/order/details")
async def order_details(request: web.Request) -> web.Response:
    form, denied = await _signed_in(request)
    if denied:
        return denied
    like4card = request.app[LIKE4CARD]
    order = like4card.orders.get(form.get("referenceId", ""))
    if order is None and form.get("orderId"):
        order = next(
            (o for o in like4card.orders.values() if str(o.order_id) == form["orderId"]), None
        )
    if order is None:
        return refusal("order_not_found", "No such order")
    return web.json_response(order.to_json(like4card.skus[order.product_id]))


control_routes = web.RouteTableDef()


@control_routes.get("/like4card/_purchases")
async def purchases(request: web.Request) -> web.Response:
    like4card = request.app[LIKE4CARD]
    return web.json_response(
        {
            "orders": [
                {
                    "referenceId": order.reference_id,
                    "productId": order.product_id,
                    "sku": like4card.skus.get(order.product_id),
                    "quantity": order.quantity,
                }
                for order in like4card.orders.values()
            ],
            "cards_issued": len(like4card.codes),
            "balance": float(like4card.balance),
        }
    )
