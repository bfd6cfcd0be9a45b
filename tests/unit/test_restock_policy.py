import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from services.restocker.policy import (
    Offer,
    Policy,
    SkuState,
    affordable,
    cover_minutes,
    decide,
    observe,
    rank,
)
from shared.events import InventoryLevel

POLICY = Policy(
    reorder_floor=20,
    min_order=100,
    max_order=500,
    safety_factor=2.0,
    target_cover_s=600,
    rate_window_s=60,
    lead_time_s=30,
)
T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def _level(
    available: int,
    backordered: int = 0,
    received: int = 0,
    sold: int = 0,
    at: float = 0.0,
) -> InventoryLevel:
    return InventoryLevel(
        event_id="e",
        sku="S",
        available=available,
        backordered=backordered,
        received_total=received,
        sold_since_last=sold,
        at=T0 + timedelta(seconds=at),
    )


def test_buys_once_below_the_reorder_point_until_the_purchase_lands():
    state = SkuState()
    observe(state, _level(50, received=50, at=1), POLICY)
    assert decide(state, "S", POLICY, now=0) is None
    observe(state, _level(19, received=50, at=2), POLICY)
    purchase = decide(state, "S", POLICY, now=1)
    assert purchase is not None and purchase.quantity == 100  # the minimum order
    assert purchase.reference == f"S-{50 + purchase.quantity}"
    # more low levels while the purchase is in flight: no second purchase
    observe(state, _level(5, received=50, at=3), POLICY)
    assert decide(state, "S", POLICY, now=2) is None
    # the codes landed: stock is healthy again, nothing to buy
    observe(state, _level(105, received=150, at=4), POLICY)
    assert state.purchase is None
    assert decide(state, "S", POLICY, now=3) is None


def test_the_sales_rate_follows_demand_and_decays():
    state = SkuState()
    for second in range(1, 121):  # two minutes of 2 units a second
        observe(state, _level(10_000, received=10_000, sold=2, at=second), POLICY)
    assert 1.7 < state.rate < 2.0  # converging on 2/s within a couple of windows
    busy = state.rate
    observe(state, _level(10_000, received=10_000, at=180), POLICY)  # a quiet minute
    assert state.rate == pytest.approx(busy * math.exp(-1))
    # units that found no code are demand too: backorders growing count as sales
    quiet = SkuState()
    observe(quiet, _level(0, backordered=30, at=1), POLICY)
    assert quiet.rate == 30 / 60


def test_reorder_point_and_order_size_scale_with_the_rate():
    state = SkuState(rate=2.0, rate_at=T0.timestamp())
    # reorder point: 2/s x 30 s lead x 2.0 safety = 120 units, above the floor of 20
    assert POLICY.reorder_point(state.rate) == 120
    observe(state, _level(130, received=1000, at=1), POLICY)
    assert decide(state, "S", POLICY, now=0) is None
    observe(state, _level(100, received=1000, at=2), POLICY)  # the rate decayed a little
    assert POLICY.reorder_point(state.rate) > 100
    purchase = decide(state, "S", POLICY, now=1)
    # 10 minutes' cover (~1200 units) is above the maximum order: capped at 500
    assert purchase is not None and purchase.quantity == 500


def test_backorders_are_bought_at_once_even_beyond_the_maximum():
    state = SkuState()
    observe(state, _level(0, backordered=750, received=10, at=1), POLICY)
    purchase = decide(state, "S", POLICY, now=0)
    assert purchase is not None and purchase.quantity >= 750


def test_a_redelivered_old_level_changes_nothing():
    state = SkuState()
    observe(state, _level(40, received=100, sold=10, at=10), POLICY)
    before = state.model_copy()
    observe(state, _level(90, received=100, sold=10, at=5), POLICY)
    assert state == before


def test_a_restored_purchase_keeps_its_reference_and_is_not_doubled():
    state = SkuState()
    observe(state, _level(0, received=0, at=1), POLICY)
    first = decide(state, "S", POLICY, now=0)
    restored = SkuState.from_dict(state.to_dict())  # as after a restart from the changelog
    observe(restored, _level(0, received=0, at=2), POLICY)
    assert decide(restored, "S", POLICY, now=100) is None
    assert first is not None and restored.purchase is not None
    assert restored.purchase.reference == first.reference
    assert restored.purchase.quantity == first.quantity


def test_suppliers_rank_by_priority_then_price():
    offers = [
        Offer("dear", 1, Decimal("9.9")),
        Offer("backup", 2, Decimal("1.0")),
        Offer("unknown", 1, None),
        Offer("cheap", 1, Decimal("9.1")),
    ]
    assert [o.supplier for o in rank(offers)] == ["cheap", "dear", "unknown", "backup"]


def test_spend_cap_limits_the_quantity():
    assert affordable(Decimal("10"), Decimal("0"), None, 50) == 50
    assert affordable(Decimal("10"), Decimal("900"), Decimal("1000"), 50) == 10
    assert affordable(Decimal("10"), Decimal("1000"), Decimal("1000"), 50) == 0


def test_cover_in_minutes():
    assert cover_minutes(SkuState(available=100)) is None  # no sales: it lasts
    assert cover_minutes(SkuState(available=120, rate=1.0)) == 2.0
