from datetime import UTC, datetime

from services.restocker.policy import Policy, SkuState, decide, observe
from shared.events import InventoryLevel

POLICY = Policy(reorder_point=20, order_quantity=100, resume_after_s=30)


def _level(available: int, backordered: int = 0, received: int = 0) -> InventoryLevel:
    return InventoryLevel(
        event_id="e",
        sku="S",
        available=available,
        backordered=backordered,
        received_total=received,
        at=datetime.now(UTC),
    )


def test_buys_once_below_the_reorder_point_until_the_purchase_lands():
    state = SkuState()
    observe(state, _level(50, received=50))
    assert decide(state, "S", POLICY, now=0) is None
    observe(state, _level(19, received=50))
    purchase = decide(state, "S", POLICY, now=1)
    assert purchase is not None and purchase.quantity == 100
    assert purchase.reference == "S-150"
    # more low levels while the purchase is in flight: no second purchase
    observe(state, _level(5, received=50))
    assert decide(state, "S", POLICY, now=2) is None
    # the codes landed: stock is healthy again, nothing to buy
    observe(state, _level(105, received=150))
    assert state.pending_reference is None
    assert decide(state, "S", POLICY, now=3) is None


def test_backorders_raise_the_order_size():
    state = SkuState()
    observe(state, _level(0, backordered=250, received=10))
    purchase = decide(state, "S", POLICY, now=0)
    assert purchase is not None and purchase.quantity == 270


def test_a_stuck_purchase_is_resumed_with_the_same_reference():
    state = SkuState()
    observe(state, _level(0, received=0))
    first = decide(state, "S", POLICY, now=0)
    restored = SkuState.from_dict(state.to_dict())  # as after a restart from the changelog
    observe(restored, _level(0, received=0))
    assert decide(restored, "S", POLICY, now=10) is None
    again = decide(restored, "S", POLICY, now=31)
    assert first is not None and again is not None
    assert again.reference == first.reference and again.quantity == first.quantity
