"""A Reloadly-like supplier: OAuth token, synchronous orders with `customIdentifier`, cards."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import aiohttp

from services.restocker.suppliers.base import (
    PENDING,
    Delivery,
    Outcome,
    Reason,
    Supplier,
    SupplierError,
    http_refusal,
)

REFUSALS = {
    "INSUFFICIENT_BALANCE": Reason.INSUFFICIENT_BALANCE,
    "PRODUCT_OUT_OF_STOCK": Reason.OUT_OF_STOCK,
    "ITEM_OUT_OF_STOCK": Reason.OUT_OF_STOCK,
    "PRODUCT_NOT_AVAILABLE": Reason.OUT_OF_STOCK,
}


class ReloadlyLike(Supplier):
    kind = "reloadly"

    def __init__(
        self,
        name: str,
        session: aiohttp.ClientSession,
        base_url: str,
        products: dict[str, str],
        priority: int,
        lead_time_s: float,
        client_id: str,
        client_secret: str,
    ) -> None:
        super().__init__(name, session, base_url, products, priority, lead_time_s)
        self.client_id = client_id
        self.client_secret = client_secret
        self._token: str | None = None
        self._signing_in = asyncio.Lock()

    async def _price_list(self) -> dict[str, Decimal]:
        status, body = await self._call("GET", "/products")
        if status != 200 or not isinstance(body, list):
            raise http_refusal(self.name, status, "product list")
        return {str(p["productId"]): Decimal(str(p["unitPrice"])) for p in body}

    async def find(self, sku: str, reference: str) -> Outcome | None:
        status, body = await self._call(
            "GET", "/orders", settled=False, params={"customIdentifier": reference}
        )
        if status == 404:
            return None
        if status != 200 or not isinstance(body, dict):
            raise SupplierError(
                f"{self.name}: order lookup failed ({status})", Reason.UNKNOWN_OUTCOME, False
            )
        return await self._cards(body)

    async def place(self, sku: str, quantity: int, reference: str) -> Outcome:
        order = {
            "productId": int(self.products[sku]),
            "quantity": quantity,
            "unitPrice": float(await self.unit_price(sku)),
            "customIdentifier": reference,
        }
        status, body = await self._call("POST", "/orders", json=order)
        if status == 200 and isinstance(body, dict):
            return await self._cards(body)
        if status == 409:  # the reference was used: that order is ours
            found = await self.find(sku, reference)
            if found is None:
                raise SupplierError(
                    f"{self.name}: duplicate reference but no order", Reason.UNKNOWN_OUTCOME, False
                )
            return found
        code = body.get("errorCode") if isinstance(body, dict) else None
        if status == 400 and code in REFUSALS:
            raise SupplierError(f"{self.name}: {code}", REFUSALS[code], settled=True)
        if code == "INVALID_UNIT_PRICE":
            self._prices = {}  # the price changed: read it again next time
        raise http_refusal(self.name, status, f"order ({code})")

    async def _cards(self, transaction: dict[str, Any]) -> Outcome:
        if transaction.get("status", "SUCCESSFUL") != "SUCCESSFUL":
            return PENDING
        path = f"/orders/transactions/{transaction['transactionId']}/cards"
        # the order exists (this is its transaction): no answer here settles it
        status, cards = await self._call("GET", path, settled=False)
        if status != 200 or not isinstance(cards, list):
            raise SupplierError(
                f"{self.name}: cards not available ({status})", Reason.UNKNOWN_OUTCOME, False
            )
        product = transaction.get("product") or {}
        price = product.get("unitPrice")
        return Delivery(
            [str(card["cardNumber"]) for card in cards],
            Decimal(str(price)) if price is not None else None,
        )

    async def _call(
        self, method: str, path: str, *, settled: bool = True, **kwargs: Any
    ) -> tuple[int, Any]:
        """`settled`: whether refused credentials prove no order exists (True for the order
        POST and reads before it; False once an order may exist)."""
        for _ in range(2):  # once more with a fresh token if it expired
            headers = {"Authorization": f"Bearer {await self._access_token()}"}
            status, body = await self._json(method, path, headers=headers, **kwargs)
            if status != 401:
                return status, body
            self._token = None
        raise SupplierError(f"{self.name}: credentials rejected", Reason.UNAVAILABLE, settled)

    async def _access_token(self) -> str:
        async with self._signing_in:  # one token for all purchases running at once
            return await self._fetch_token()

    async def _fetch_token(self) -> str:
        if self._token is None:
            status, body = await self._json(
                "POST",
                "/oauth/token",
                json={
                    "client_id": self.client_id,
                    "client_secret": self.client_secret,
                    "grant_type": "client_credentials",
                    "audience": self.base_url,
                },
            )
            if status != 200 or not isinstance(body, dict):
                raise http_refusal(self.name, status, "token")
            self._token = str(body["access_token"])
        return self._token
