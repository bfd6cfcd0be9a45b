"""What every supplier adapter is: find an order by our reference, place one, price a sku.

The purchase runner, not the adapter, decides when to look up and when to order again: it
records that an order was sent before sending it, and after any doubt it calls `find` first.
"""

from __future__ import annotations

import abc
import asyncio
import time
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

import aiohttp

from shared.failures import Failure, Fate


class Reason(StrEnum):
    OUT_OF_STOCK = "out_of_stock"
    INSUFFICIENT_BALANCE = "insufficient_balance"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    REFUSED = "refused"
    UNKNOWN_OUTCOME = "unknown_outcome"


# the supplier said no for good: try the next one now rather than again later
FAIL_OVER_AT_ONCE = frozenset({Reason.OUT_OF_STOCK, Reason.INSUFFICIENT_BALANCE, Reason.REFUSED})


class SupplierError(Failure):
    """A supplier call failed. `settled` is True when the supplier surely holds no order
    for the reference (it answered, and said no), so another supplier may be used.

    Its fate: a supplier out of stock, out of balance or refusing fails over to the next one at
    once; anything else (busy, down, an unknown outcome) is tried again later."""

    status = 502

    def __init__(self, message: str, reason: Reason, settled: bool) -> None:
        super().__init__(message)
        self.reason = reason
        self.settled = settled
        self.code = f"supplier_{reason.value}"
        self.fate = Fate.FAIL_OVER if reason in FAIL_OVER_AT_ONCE else Fate.RETRY


@dataclass(frozen=True)
class Delivery:
    """The order is complete: its plain codes (never logged) and what one unit cost."""

    codes: list[str]
    unit_cost: Decimal | None = None


class Pending:
    """The supplier accepted the order and completes it later: ask `find` again."""

    def __repr__(self) -> str:
        return "Pending"


PENDING = Pending()
Outcome = Delivery | Pending


class Supplier(abc.ABC):
    kind: str = ""

    def __init__(
        self,
        name: str,
        session: aiohttp.ClientSession,
        base_url: str,
        products: dict[str, str],
        priority: int,
        lead_time_s: float,
    ) -> None:
        self.name = name
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.products = products
        self.priority = priority
        self.lead_time_s = lead_time_s
        self._prices: dict[str, Decimal] = {}
        self._prices_at = 0.0
        self._refreshing = asyncio.Lock()  # one price-list fetch for many purchases at once

    def sells(self, sku: str) -> bool:
        return sku in self.products

    async def unit_price(self, sku: str, max_age_s: float = 300.0) -> Decimal:
        """What one unit of `sku` costs here (the price list is cached for a while)."""
        if sku not in self.products:
            raise SupplierError(f"{self.name} has no product for {sku}", Reason.REFUSED, True)
        async with self._refreshing:
            if not self._prices or time.monotonic() - self._prices_at > max_age_s:
                self._prices = await self._price_list()
                self._prices_at = time.monotonic()
        price = self._prices.get(self.products[sku])
        if price is None:
            raise SupplierError(f"{self.name} does not sell {sku} now", Reason.OUT_OF_STOCK, True)
        return price

    @abc.abstractmethod
    async def _price_list(self) -> dict[str, Decimal]:
        """Supplier product id -> unit price, for the products it can sell now."""

    @abc.abstractmethod
    async def find(self, sku: str, reference: str) -> Outcome | None:
        """The order placed under `reference`, or None when the supplier has none."""

    @abc.abstractmethod
    async def place(self, sku: str, quantity: int, reference: str) -> Outcome:
        """Order `quantity` codes of `sku` under `reference` (idempotent at the supplier)."""

    async def _json(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        """One HTTP call; a lost answer is an unknown outcome, never a refusal."""
        try:
            async with self.session.request(method, self.base_url + path, **kwargs) as resp:
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = None
                return resp.status, body
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise SupplierError(
                f"{self.name}: {method} {path} got no answer ({type(exc).__name__})",
                Reason.UNKNOWN_OUTCOME,
                settled=False,
            ) from None


def http_refusal(name: str, status: int, what: str) -> SupplierError:
    """The error for an HTTP answer that is not a success: a clear answer settles the order."""
    if status == 429:
        return SupplierError(f"{name}: {what}: rate limited", Reason.RATE_LIMITED, True)
    if status == 503:  # a gateway's 502/504 may hide an order that went through
        return SupplierError(f"{name}: {what}: unavailable ({status})", Reason.UNAVAILABLE, True)
    if status >= 500:
        return SupplierError(f"{name}: {what}: error {status}", Reason.UNKNOWN_OUTCOME, False)
    return SupplierError(f"{name}: {what}: refused ({status})", Reason.REFUSED, True)
