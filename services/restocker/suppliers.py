"""A Reloadly-like supplier: OAuth token, order with a client reference, then fetch the cards.

Every order carries our client reference (`customIdentifier`). After a timeout or a
"duplicate reference" answer the order is looked up by that reference instead of placed
again, because the supplier may already have charged for it.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp

log = logging.getLogger(__name__)


class SupplierError(Exception):
    """The supplier could not complete a purchase; `retriable` says whether to try later."""

    def __init__(self, message: str, retriable: bool):
        super().__init__(message)
        self.retriable = retriable


class ReloadlyLike:
    name = "reloadly"

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        client_id: str,
        client_secret: str,
        products: dict[str, int],
    ):
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self.client_secret = client_secret
        self.products = products
        self._token: str | None = None
        self._prices: dict[int, float] = {}

    async def buy(self, sku: str, quantity: int, reference: str) -> list[str]:
        """Buy `quantity` codes of `sku` exactly once for `reference`; returns the codes."""
        product_id = self.products.get(sku)
        if product_id is None:
            raise SupplierError(f"no supplier product for sku {sku}", retriable=False)
        transaction = await self._find(reference)
        if transaction is None:
            try:
                status, body = await self._call(
                    "POST",
                    "/orders",
                    json={
                        "productId": product_id,
                        "quantity": quantity,
                        "unitPrice": await self._unit_price(product_id),
                        "customIdentifier": reference,
                    },
                )
            except (TimeoutError, aiohttp.ClientError):
                # it may have charged us before the answer was lost: look before buying again
                transaction = await self._find(reference)
                if transaction is None:
                    raise SupplierError("order timed out and is unknown", retriable=True) from None
            else:
                if status == 200:
                    transaction = body
                elif status == 409:
                    transaction = await self._find(reference)
                else:
                    code = body.get("errorCode", status) if isinstance(body, dict) else status
                    raise SupplierError(f"order refused: {code}", retriable=status >= 500)
        if transaction is None:
            raise SupplierError("order reference vanished", retriable=True)
        status, cards = await self._call(
            "GET", f"/orders/transactions/{transaction['transactionId']}/cards"
        )
        if status != 200 or not isinstance(cards, list):
            raise SupplierError(f"cards not available ({status})", retriable=True)
        return [card["cardNumber"] for card in cards]

    async def _unit_price(self, product_id: int) -> float:
        """The supplier wants the price we expect to pay, so a price change fails loudly."""
        if product_id not in self._prices:
            status, body = await self._call("GET", "/products")
            if status != 200 or not isinstance(body, list):
                raise SupplierError(f"product list unavailable ({status})", retriable=True)
            self._prices = {int(p["productId"]): float(p["unitPrice"]) for p in body}
        if product_id not in self._prices:
            raise SupplierError(f"supplier does not sell product {product_id}", retriable=False)
        return self._prices[product_id]

    async def _find(self, reference: str) -> dict[str, Any] | None:
        status, body = await self._call("GET", "/orders", params={"customIdentifier": reference})
        if status == 200 and isinstance(body, dict):
            return body
        if status == 404:
            return None
        raise SupplierError(f"order lookup failed ({status})", retriable=True)

    async def _call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        for _ in range(2):  # once more with a fresh token if it expired
            headers = {"Authorization": f"Bearer {await self._access_token()}"}
            async with self.session.request(
                method, self.base_url + path, headers=headers, **kwargs
            ) as resp:
                body = await resp.json(content_type=None)
                if resp.status != 401:
                    return resp.status, body
                self._token = None
        raise SupplierError("supplier rejected our credentials", retriable=True)

    async def _access_token(self) -> str:
        if self._token is None:
            async with self.session.post(
                self.base_url + "/oauth/token",
                json={
                    "client_id": self.client_id,
                    "client_secret": self.client_secret,
                    "grant_type": "client_credentials",
                    "audience": self.base_url,
                },
            ) as resp:
                body = await resp.json(content_type=None)
                if resp.status != 200:
                    raise SupplierError("supplier refused our credentials", retriable=True)
                self._token = str(body["access_token"])
        return self._token
