"""A Bamboo-like supplier: the checkout is accepted at once and its cards appear later.

Bamboo wants a GUID `RequestId`; ours is derived from our client reference (uuid5), so the
same purchase always carries the same RequestId, also after a restart.
"""

from __future__ import annotations

import uuid
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

REQUEST_IDS = uuid.UUID("0b6f2a39-1c5e-4f0e-8a53-6d1f6f2b7c44")
REFUSALS = {
    "OUT_OF_STOCK": Reason.OUT_OF_STOCK,
    "INSUFFICIENT_FUNDS": Reason.INSUFFICIENT_BALANCE,
}


def request_id(reference: str) -> str:
    return str(uuid.uuid5(REQUEST_IDS, reference))


class BambooLike(Supplier):
    kind = "bamboo"

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
        account_id: int,
    ) -> None:
        super().__init__(name, session, base_url, products, priority, lead_time_s)
        self.auth = {"Authorization": aiohttp.encode_basic_auth(client_id, client_secret)}
        self.account_id = account_id

    async def _price_list(self) -> dict[str, Decimal]:
        status, body = await self._json("GET", "/v2.0/catalog", headers=self.auth)
        if status != 200 or not isinstance(body, dict):
            raise http_refusal(self.name, status, "catalog")
        return {
            str(product["id"]): Decimal(str(product["price"]["min"]))
            for brand in body.get("items", [])
            for product in brand.get("products", [])
        }

    async def find(self, sku: str, reference: str) -> Outcome | None:
        status, body = await self._json(
            "GET", f"/v1.0/orders/{request_id(reference)}", headers=self.auth
        )
        if status == 404:
            return None
        if status != 200 or not isinstance(body, dict):
            raise SupplierError(
                f"{self.name}: order lookup failed ({status})", Reason.UNKNOWN_OUTCOME, False
            )
        return self._outcome(body)

    async def place(self, sku: str, quantity: int, reference: str) -> Outcome:
        price = await self.unit_price(sku)
        checkout = {
            "RequestId": request_id(reference),
            "AccountId": self.account_id,
            "Products": [
                {"ProductId": int(self.products[sku]), "Quantity": quantity, "Value": float(price)}
            ],
        }
        status, body = await self._json(
            "POST", "/v1.0/orders/checkout", json=checkout, headers=self.auth
        )
        if status in (200, 409):  # accepted now, or already under this RequestId
            return PENDING
        code = body.get("code") if isinstance(body, dict) else None
        if status == 400 and code in REFUSALS:
            raise SupplierError(f"{self.name}: {code}", REFUSALS[code], settled=True)
        raise http_refusal(self.name, status, f"checkout ({code})")

    def _outcome(self, order: dict[str, Any]) -> Outcome:
        state = order.get("status")
        if state in ("Created", "Processing"):
            return PENDING
        if state != "Succeeded":
            # a failed order is not charged: the purchase may go elsewhere
            raise SupplierError(f"{self.name}: order {state}", Reason.REFUSED, settled=True)
        items = order.get("items") or []
        codes = [str(card["cardCode"]) for item in items for card in item.get("cards") or []]
        price = items[0].get("productFaceValue") if items else None
        return Delivery(codes, Decimal(str(price)) if price is not None else None)
