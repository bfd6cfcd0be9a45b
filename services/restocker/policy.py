"""When to buy, how much, and from whom: pure functions of a sku's state, easy to test.

The sales rate is an exponentially weighted rate over event time (`InventoryLevel.at`), so it
follows a surge within about one `rate_window_s` and forgets it as quickly. A purchase is in
flight from the moment it is decided until the vault's cumulative `received_total` shows its
codes. Its client reference is `{stem}-{expected received_total}`, where the stem names the
stock (`reference_stem`: the sku and a digest of the account), so resuming it after a crash
reuses the reference and the supplier cannot charge twice, and two accounts buying the same
sku never share a reference (the supplier would hand one the other's order).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel

from shared.events import InventoryLevel, Stock


class PurchaseStatus(StrEnum):
    """Where a purchase stands. The values are what the restocker's table holds."""

    ROUTING = "routing"  # choosing a supplier
    ORDERING = "ordering"  # the order is being sent to `supplier`
    PENDING = "pending"  # the supplier holds it and has not delivered yet
    RETRYING = "retrying"  # every supplier said no or failed this round; waits `next_try_at`
    BLOCKED = "blocked"  # no supplier may be used (caps, prices): an operator must act
    PUBLISHED = "published"  # its codes are on codes.purchased


class Purchase(BaseModel):
    """A purchase in flight. Written to the table before any supplier hears of it."""

    reference: str
    quantity: int
    base_total: int  # the vault's received_total when it was decided
    expected_total: int  # ... and once its codes are in
    decided_at: float
    supplier: str | None = None  # the supplier it is being bought from now
    sent: bool = False  # an order may exist at `supplier` under `reference`: look it up first
    tried: list[str] = []  # suppliers that said no to it (this round)
    failures: int = 0
    next_try_at: float = 0.0
    unit_price: str | None = None
    reserved: str = "0"  # spend reserved against the store's daily cap
    reserved_day: str = ""
    status: PurchaseStatus = PurchaseStatus.ROUTING
    published_at: float = 0.0
    republished: bool = False
    last_error: str = ""


class SkuState(BaseModel):
    available: int = 0
    backordered: int = 0
    received_total: int = 0
    rate: float = 0.0  # units sold per second, exponentially weighted
    rate_at: float = 0.0  # event time of the last level folded in
    purchase: Purchase | None = None
    spend: dict[str, str] = {}  # UTC day -> amount reserved or spent for this sku
    alert: str = ""  # why no supplier can restock it now; empty when all is well
    purchases: int = 0
    bought: int = 0

    def to_dict(self) -> dict[str, object]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, object] | None) -> SkuState:
        return cls.model_validate(data) if data else cls()

    def spent(self, day: str) -> Decimal:
        return Decimal(self.spend.get(day, "0"))


@dataclass(frozen=True)
class Policy:
    reorder_floor: int = 20  # never let the reorder point fall below this
    min_order: int = 100
    max_order: int = 1000  # backorders may exceed it: missing units are always bought
    safety_factor: float = 1.5
    target_cover_s: float = 3600.0  # an order brings stock up to this much of sales
    rate_window_s: float = 300.0
    lead_time_s: float = 30.0  # of the supplier tried first

    def reorder_point(self, rate: float) -> int:
        return max(self.reorder_floor, math.ceil(rate * self.lead_time_s * self.safety_factor))


def observe(state: SkuState, level: InventoryLevel, policy: Policy) -> None:
    """Fold an inventory level into the state; a landed purchase stops being in flight."""
    state.received_total = max(state.received_total, level.received_total)
    at = level.at.timestamp()
    if at > state.rate_at:  # an older level (a redelivery) neither moves stock nor counts twice
        if state.rate_at:
            state.rate *= math.exp(-(at - state.rate_at) / policy.rate_window_s)
        # demand, not sales: units that found no code (new backorders) were wanted too
        demand = max(0, level.sold_since_last + level.backordered - state.backordered)
        state.rate += demand / policy.rate_window_s
        state.rate_at = at
        state.available = level.available
        state.backordered = level.backordered
    purchase = state.purchase
    if purchase and state.received_total >= purchase.expected_total:
        state.purchase = None


def reference_stem(stock: Stock) -> str:
    """The stock's part of a purchase reference: readable (the sku) and unique per account
    (a digest of the stock's key, whatever characters the account and sku hold)."""
    return f"{stock.sku}-{hashlib.sha256(stock.key()).hexdigest()[:12]}"


def decide(state: SkuState, stem: str, policy: Policy, now: float) -> Purchase | None:
    """A new purchase to make now (also recorded in the state), or None; `stem` starts its
    reference (`reference_stem`)."""
    if state.purchase is not None:
        return None  # one purchase in flight per sku: it is resumed, never doubled
    position = state.available - state.backordered
    reorder_point = policy.reorder_point(state.rate)
    if position >= reorder_point:
        return None
    wanted = math.ceil(state.rate * policy.target_cover_s) + reorder_point - position
    quantity = max(min(max(wanted, policy.min_order), policy.max_order), state.backordered)
    expected = state.received_total + quantity
    state.purchase = Purchase(
        reference=f"{stem}-{expected}",
        quantity=quantity,
        base_total=state.received_total,
        expected_total=expected,
        decided_at=now,
    )
    return state.purchase


def resize(purchase: Purchase, quantity: int) -> None:
    """Buy fewer (to stay under a spend cap); only before any supplier has the order."""
    assert not purchase.sent
    stem = purchase.reference.rsplit("-", 1)[0]
    purchase.quantity = quantity
    purchase.expected_total = purchase.base_total + quantity
    purchase.reference = f"{stem}-{purchase.expected_total}"


@dataclass(frozen=True)
class Offer:
    supplier: str
    priority: int
    unit_price: Decimal | None  # None when the price list could not be read


def rank(offers: list[Offer]) -> list[Offer]:
    """By priority, then by price; an unknown price after the known ones of its priority."""
    return sorted(
        offers,
        key=lambda o: (o.priority, o.unit_price is None, o.unit_price or Decimal(0)),
    )


def affordable(unit_price: Decimal, spent: Decimal, cap: Decimal | None, quantity: int) -> int:
    """How many of `quantity` units fit under the day's spend cap."""
    if cap is None:
        return quantity
    room = cap - spent
    if room <= 0 or unit_price <= 0:
        return 0 if room <= 0 else quantity
    return min(quantity, int(room // unit_price))


def cover_minutes(state: SkuState) -> float | None:
    """How long the available units last at the current sales rate (None: no sales)."""
    if state.rate <= 1e-9:
        return None
    return state.available / state.rate / 60
