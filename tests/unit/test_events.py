"""The hand-made fast paths of the event contracts say exactly what the models say."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.allocator import handlers, vault
from shared.events import (
    EVENT_NAMESPACE,
    AllocatedCode,
    BackorderedUnits,
    CodeAllocated,
    Customer,
    OrderLine,
    OrderPaid,
    event_id_for,
)


@given(st.lists(st.one_of(st.text(), st.integers(), st.floats(allow_nan=False), st.none())))
def test_event_ids_are_uuid5_of_the_joined_parts(parts):
    expected = uuid.uuid5(EVENT_NAMESPACE, "|".join(str(p) for p in parts))
    assert event_id_for(*parts) == str(expected)


def test_the_allocated_payload_is_the_code_allocated_event():
    paid_at = datetime(2026, 11, 27, 21, 0, 5, 123456, tzinfo=UTC)
    order = OrderPaid(
        event_id=event_id_for("order.paid", "salla:s1:77"),
        order_key="salla:s1:77",
        platform="salla",
        store_id="s1",
        store_name="متجر الهدايا",
        order_id="77",
        lines=[
            OrderLine(sku="PSN-50", quantity=2, title="PSN $50"),
            OrderLine(sku="XBOX", quantity=1),
        ],
        customer=Customer(name="سارة", phone="+966500000001", email="s@example.com", locale="en"),
        paid_at=paid_at,
        received_at=paid_at,
    )
    expires = paid_at + timedelta(days=90)
    units = [
        vault.UnitRow(
            order.order_key, "s1", 0, 0, "PSN-50", vault.Claimed(7, "PSN-50", "k1:AAA", expires), 1
        ),
        vault.UnitRow(
            order.order_key, "s1", 0, 1, "PSN-50", vault.Claimed(9, "PSN-50", "k1:BBB", None), 1
        ),
        vault.UnitRow(order.order_key, "s1", 1, 0, "XBOX"),
    ]
    allocated_at = paid_at + timedelta(milliseconds=40)

    message = handlers._allocated(order, units, allocated_at)

    expected = CodeAllocated(
        event_id=event_id_for("code.allocated", order.order_key, 1),
        order_key=order.order_key,
        part=1,
        store_id="s1",
        store_name="متجر الهدايا",
        order_id="77",
        customer=order.customer,
        codes=[
            AllocatedCode(code_id=7, sku="PSN-50", sealed="k1:AAA", expires_at=expires),
            AllocatedCode(code_id=9, sku="PSN-50", sealed="k1:BBB"),
        ],
        lines=order.lines,
        backordered=[BackorderedUnits(sku="XBOX", quantity=1)],
        paid_at=paid_at,
        allocated_at=allocated_at,
    )
    assert (message.topic, message.key) == (CodeAllocated.topic, expected.kafka_key())
    assert message.payload == expected.to_bytes()


def test_a_consumer_reads_its_topic_s_version_and_refuses_another():
    from shared.events import InventoryLevel, UnsupportedVersion

    level = InventoryLevel(event_id="e1", sku="S", available=1, backordered=0, at=datetime.now(UTC))
    raw = level.to_bytes()
    assert InventoryLevel.from_kafka(raw) == level
    # a new optional field is fine: added fields are ignored by older consumers
    assert InventoryLevel.from_kafka(raw[:-1] + b', "new_field": 1}') == level
    with pytest.raises(UnsupportedVersion, match="schema_version 2"):
        InventoryLevel.from_kafka(raw.replace(b'"schema_version":1', b'"schema_version":2'))
