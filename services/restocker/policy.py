"""When to buy, and how much: a pure function of a sku's state, so it is easy to test.

A purchase is "in flight" from the moment it is decided until the vault's cumulative
`received_total` shows its codes. Its client reference is derived from the state
(`{sku}-{expected received_total}`), so resuming it after a crash reuses the reference and the
supplier cannot charge twice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from shared.events import InventoryLevel


@dataclass
class SkuState:
    available: int = 0
    backordered: int = 0
    received_total: int = 0
    pending_reference: str | None = None
    pending_quantity: int = 0
    pending_expected_total: int = 0
    pending_since: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object] | None) -> SkuState:
        return cls(**data) if data else cls()  # type: ignore[arg-type]


@dataclass(frozen=True)
class Policy:
    reorder_point: int
    order_quantity: int
    resume_after_s: float


@dataclass(frozen=True)
class Purchase:
    reference: str
    quantity: int


def observe(state: SkuState, level: InventoryLevel) -> None:
    """Fold an inventory level into the state; a landed purchase stops being in flight."""
    state.available = level.available
    state.backordered = level.backordered
    state.received_total = max(state.received_total, level.received_total)
    if state.pending_reference and state.received_total >= state.pending_expected_total:
        state.pending_reference = None
        state.pending_quantity = 0


def decide(state: SkuState, sku: str, policy: Policy, now: float) -> Purchase | None:
    """The purchase to make now (new, or an in-flight one to resume), or None."""
    if state.pending_reference:
        if now - state.pending_since >= policy.resume_after_s:
            state.pending_since = now
            return Purchase(state.pending_reference, state.pending_quantity)
        return None
    cover = state.available - state.backordered
    if cover >= policy.reorder_point:
        return None
    quantity = max(policy.order_quantity, state.backordered + policy.reorder_point)
    state.pending_expected_total = state.received_total + quantity
    state.pending_reference = f"{sku}-{state.pending_expected_total}"
    state.pending_quantity = quantity
    state.pending_since = now
    return Purchase(state.pending_reference, quantity)
