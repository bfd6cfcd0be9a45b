"""A Reloadly-like wholesale supplier: OAuth token, balance, products, idempotent orders, cards."""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

from deploy.sandbox.config import CONFIG, ReloadlyConfig
from deploy.sandbox.faults import FAULTS
from deploy.sandbox.http import now_iso, read_json

logger = logging.getLogger(__name__)

PARTY = "reloadly"
CURRENCY = "USD"


class TokenRequest(BaseModel):
    client_id: str
    client_secret: str
    grant_type: str
    audience: str | None = None


class OrderRequest(BaseModel):
    productId: int
    quantity: int = Field(ge=1, le=10_000)
    unitPrice: Decimal = Field(gt=0)
    customIdentifier: str = Field(min_length=1, max_length=150)  # always required here


@dataclass
class Transaction:
    transaction_id: int
    custom_identifier: str
    product_id: int
    sku: str
    quantity: int
    unit_price: Decimal
    created: str
    cards: list[dict[str, str]] = field(default_factory=list)

    @property
    def amount(self) -> Decimal:
        return self.unit_price * self.quantity

    def to_json(self) -> dict[str, Any]:
        return {
            "transactionId": self.transaction_id,
            "amount": float(self.amount),
            "discount": 0.0,
            "currencyCode": CURRENCY,
            "fee": 0.0,
            "customIdentifier": self.custom_identifier,
            "status": "SUCCESSFUL",
            "product": {
                "productId": self.product_id,
                "productName": _product_name(self.sku),
                "sku": self.sku,
                "quantity": self.quantity,
                "unitPrice": float(self.unit_price),
                "totalPrice": float(self.amount),
                "currencyCode": CURRENCY,
            },
            "transactionCreatedTime": self.created,
        }


class Supplier:
    def __init__(self, config: ReloadlyConfig) -> None:
        self.config = config
        self.balance = config.balance
        self.skus = {product_id: sku for sku, product_id in config.products.items()}
        self.tokens: dict[str, float] = {}  # access token -> monotonic expiry
        self.transactions: dict[int, Transaction] = {}
        self.by_reference: dict[str, Transaction] = {}
        self.card_numbers: set[str] = set()
        self._ids = itertools.count(secrets.randbelow(900_000) + 100_000)

    def issue_token(self) -> str:
        token = secrets.token_urlsafe(32)
        self.tokens[token] = time.monotonic() + self.config.token_ttl_s
        return token

    def order(self, product_id: int, quantity: int) -> tuple[int, str, list[dict[str, str]]]:
        cards = []
        for _ in range(quantity):
            number = self._card_number()
            cards.append({"cardNumber": number, "pinCode": f"{secrets.randbelow(10**8):08d}"})
        return next(self._ids), self.skus[product_id], cards

    def _card_number(self) -> str:
        while True:
            number = f"{self.config.code_prefix}-{secrets.token_hex(6).upper()}"
            if number not in self.card_numbers:
                self.card_numbers.add(number)
                return number


SUPPLIER = web.AppKey("reloadly", Supplier)


def _product_name(sku: str) -> str:
    return f"{sku} gift card"


def reloadly_error(request: web.Request, status: int, code: str, message: str) -> web.Response:
    body: dict[str, Any] = {
        "timeStamp": now_iso(),
        "message": message,
        "path": request.path,
        "errorCode": code,
        "infoLink": None,
        "details": [],
    }
    return web.json_response(body, status=status)


def unavailable(random_error: bool) -> web.Response:
    body: dict[str, Any] = {
        "message": "Service unavailable",
        "errorCode": "SERVICE_UNAVAILABLE",
        "details": [],
    }
    return web.json_response(body, status=503)


def _unauthorized(request: web.Request) -> web.Response | None:
    """None when the request carries a live token, else the 401 to answer."""
    supplier = request.app[SUPPLIER]
    token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    expiry = supplier.tokens.get(token)
    if expiry is None:
        return reloadly_error(
            request, 401, "INVALID_TOKEN", "Full authentication is required to access this resource"
        )
    if expiry < time.monotonic():
        del supplier.tokens[token]
        return reloadly_error(request, 401, "TOKEN_EXPIRED", "The access token has expired")
    return None


routes = web.RouteTableDef()


@routes.post("/reloadly/oauth/token")
async def token(request: web.Request) -> web.Response:
    config = request.app[CONFIG].suppliers.reloadly
    try:
        asked = TokenRequest.model_validate(await read_json(request))
    except ValueError:
        return reloadly_error(request, 400, "BAD_REQUEST", "client_id and client_secret needed")
    if asked.grant_type != "client_credentials":
        return reloadly_error(request, 400, "UNSUPPORTED_GRANT_TYPE", "Unsupported grant type")
    if not (
        hmac.compare_digest(asked.client_id.encode(), config.client_id.encode())
        and hmac.compare_digest(asked.client_secret.encode(), config.client_secret.encode())
    ):
        return reloadly_error(request, 401, "INVALID_CREDENTIALS", "Access Denied")
    return web.json_response(
        {
            "access_token": request.app[SUPPLIER].issue_token(),
            "scope": "developer",
            "expires_in": config.token_ttl_s,
            "token_type": "Bearer",
        }
    )


@routes.get("/reloadly/accounts/balance")
async def balance(request: web.Request) -> web.Response:
    if denied := _unauthorized(request):
        return denied
    supplier = request.app[SUPPLIER]
    return web.json_response(
        {
            "balance": float(supplier.balance),
            "currencyCode": CURRENCY,
            "currencyName": "US Dollar",
            "updatedAt": now_iso(),
        }
    )


@routes.get("/reloadly/products")
async def products(request: web.Request) -> web.Response:
    if denied := _unauthorized(request):
        return denied
    config = request.app[SUPPLIER].config
    return web.json_response(
        [
            {
                "productId": product_id,
                "productName": _product_name(sku),
                "sku": sku,
                "unitPrice": float(config.unit_price),
                "currencyCode": CURRENCY,
                "denominationType": "FIXED",
                "fixedRecipientDenominations": [float(config.unit_price)],
            }
            for sku, product_id in config.products.items()
        ]
    )


@routes.post("/reloadly/orders")
async def order(request: web.Request) -> web.Response:
    if denied := _unauthorized(request):
        return denied
    supplier = request.app[SUPPLIER]
    try:
        asked = OrderRequest.model_validate(await read_json(request))
    except ValidationError as exc:
        fields = ", ".join(".".join(map(str, error["loc"])) for error in exc.errors())
        return reloadly_error(request, 400, "BAD_REQUEST", f"Invalid fields: {fields}")
    except ValueError:
        return reloadly_error(request, 400, "BAD_REQUEST", "The body is not JSON")
    switched = request.app[FAULTS].state[PARTY]
    if switched.rate_limited:
        response = reloadly_error(request, 429, "TOO_MANY_REQUESTS", "Rate limit exceeded")
        response.headers["Retry-After"] = "1"
        return response
    if asked.customIdentifier in supplier.by_reference:
        return reloadly_error(
            request, 409, "DUPLICATE_CUSTOM_IDENTIFIER", "This custom identifier was already used"
        )
    if asked.productId not in supplier.skus:
        return reloadly_error(request, 404, "PRODUCT_NOT_FOUND", "Product not found")
    if asked.unitPrice != supplier.config.unit_price:
        return reloadly_error(
            request, 400, "INVALID_UNIT_PRICE", f"unitPrice must be {supplier.config.unit_price}"
        )
    if switched.out_of_stock:
        return reloadly_error(
            request, 400, "PRODUCT_OUT_OF_STOCK", "This product is currently out of stock"
        )
    cost = supplier.config.unit_price * asked.quantity
    if cost > supplier.balance or switched.insufficient_balance:
        return reloadly_error(
            request, 400, "INSUFFICIENT_BALANCE", "Your balance is too low for this order"
        )
    # from here to the answer nothing awaits: the check, the charge and the record are one step
    transaction_id, sku, cards = supplier.order(asked.productId, asked.quantity)
    transaction = Transaction(
        transaction_id,
        asked.customIdentifier,
        asked.productId,
        sku,
        asked.quantity,
        supplier.config.unit_price,
        datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        cards,
    )
    supplier.balance -= cost
    supplier.transactions[transaction_id] = transaction
    supplier.by_reference[transaction.custom_identifier] = transaction
    logger.info("reloadly: transaction %d, %d cards", transaction_id, asked.quantity)
    if request.app[FAULTS].state[PARTY].charge_then_timeout:
        await asyncio.sleep(supplier.config.charge_timeout_s)
    return web.json_response(transaction.to_json())


@routes.get("/reloadly/orders")
async def find_order(request: web.Request) -> web.Response:
    if denied := _unauthorized(request):
        return denied
    reference = request.query.get("customIdentifier")
    if not reference:
        return reloadly_error(request, 400, "BAD_REQUEST", "customIdentifier is required")
    transaction = request.app[SUPPLIER].by_reference.get(reference)
    if transaction is None:
        return reloadly_error(request, 404, "TRANSACTION_NOT_FOUND", "No such transaction")
    return web.json_response(transaction.to_json())


@routes.get("/reloadly/orders/transactions/{transaction_id}/cards")
async def cards(request: web.Request) -> web.Response:
    if denied := _unauthorized(request):
        return denied
    raw_id = request.match_info["transaction_id"]
    transaction = request.app[SUPPLIER].transactions.get(int(raw_id)) if raw_id.isdigit() else None
    if transaction is None:
        return reloadly_error(request, 404, "TRANSACTION_NOT_FOUND", "No such transaction")
    return web.json_response(transaction.cards)


control_routes = web.RouteTableDef()


@control_routes.get("/reloadly/_purchases")
async def purchases(request: web.Request) -> web.Response:
    supplier = request.app[SUPPLIER]
    return web.json_response(
        {
            "orders": [
                {**transaction.to_json(), "quantity": transaction.quantity}
                for transaction in supplier.transactions.values()
            ],
            "cards_issued": len(supplier.card_numbers),
            "balance": float(supplier.balance),
        }
    )
