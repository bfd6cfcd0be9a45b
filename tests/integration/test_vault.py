"""The code vault on a real PostgreSQL: never a code twice, FIFO backorders, expiry, dedupe."""

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from services.allocator import handlers, vault
from services.allocator.main import SQL
from shared.codecrypt import SealedCode
from shared.db import connect_and_migrate
from shared.events import (
    CodeAllocated,
    CodesPurchased,
    Customer,
    InventoryLevel,
    OrderLine,
    OrderPaid,
    event_id_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool(database: str):
    pool = await connect_and_migrate(database, "allocator", SQL, max_size=10)
    yield pool
    await pool.close()


def paid(order_id: str, *lines: tuple[str, int]) -> OrderPaid:
    key = f"standard:s1:{order_id}"
    now = datetime.now(UTC)
    return OrderPaid(
        event_id=event_id_for("order.paid", key),
        order_key=key,
        platform="standard",
        store_id="s1",
        order_id=order_id,
        lines=[OrderLine(sku=sku, quantity=q) for sku, q in lines],
        customer=Customer(phone="+966500000001"),
        paid_at=now,
        received_at=now,
    )


async def import_codes(pool, cipher, sku, codes, expires_at=None):
    async with pool.acquire() as conn, conn.transaction():
        report = await vault.import_plain_codes(
            conn, cipher, sku, codes, source="test", expires_at=expires_at
        )
        rows = await handlers.distribute(conn, [sku], always_report=True)
    return report, rows


async def allocate(pool, batch):
    async with pool.acquire() as conn, conn.transaction():
        return await handlers.allocate(batch, conn)


def events_of(rows, model):
    return [model.model_validate_json(r.payload) for r in rows if r.topic == model.topic]


def opened(cipher, allocation: CodeAllocated) -> list[str]:
    return [cipher.open(SealedCode.from_text(c.sealed), c.sku) for c in allocation.codes]


async def test_import_deduplicates_in_the_file_and_across_skus(pool, cipher):
    report, _ = await import_codes(pool, cipher, "A", ["X-1", "x-1", "X-2", "", "X-3"])
    assert (report.added, report.duplicates, report.invalid) == (3, 1, 1)
    report, _ = await import_codes(pool, cipher, "B", ["X-2", "Y-1"])
    assert (report.added, report.duplicates) == (1, 1)
    stored = await pool.fetch("SELECT sealed FROM codes")
    assert all("X-" not in r["sealed"] for r in stored)  # sealed at rest


async def test_allocation_hands_out_codes_and_reports_stock(pool, cipher):
    await import_codes(pool, cipher, "A", [f"A-{i}" for i in range(5)])
    rows = await allocate(pool, [paid("1", ("A", 2)), paid("2", ("A", 1))])
    allocations = events_of(rows, CodeAllocated)
    assert sorted(len(a.codes) for a in allocations) == [1, 2]
    codes = [c for a in allocations for c in opened(cipher, a)]
    assert len(set(codes)) == 3
    (level,) = events_of(rows, InventoryLevel)
    assert (level.available, level.backordered, level.sold_since_last) == (2, 0, 3)


async def test_a_redelivered_batch_changes_nothing(pool, cipher):
    await import_codes(pool, cipher, "A", [f"A-{i}" for i in range(5)])
    batch = [paid("1", ("A", 2))]
    assert events_of(await allocate(pool, batch), CodeAllocated)
    assert await allocate(pool, batch) == []
    assert await pool.fetchval("SELECT count(*) FROM codes WHERE status = 'allocated'") == 2


async def test_short_stock_backorders_and_fills_first_in_first_out(pool, cipher):
    await import_codes(pool, cipher, "A", ["A-1"])
    rows = await allocate(pool, [paid("1", ("A", 2)), paid("2", ("A", 1))])
    (first,) = events_of(rows, CodeAllocated)
    assert first.order_key.endswith(":1") and len(first.codes) == 1
    assert [(b.sku, b.quantity) for b in first.backordered] == [("A", 1)]
    (level,) = events_of(rows, InventoryLevel)
    assert (level.available, level.backordered) == (0, 2)

    _, rows = await import_codes(pool, cipher, "A", ["A-2"])
    (second,) = events_of(rows, CodeAllocated)
    assert second.order_key.endswith(":1") and second.part == 2 and not second.backordered

    sealed = [cipher.seal("A-3", "A").to_text(), cipher.seal("A-4", "A").to_text()]
    purchase = CodesPurchased(
        event_id="p1",
        sku="A",
        supplier="reloadly",
        reference="A-4",
        codes=sealed,
        purchased_at=datetime.now(UTC),
    )
    async with pool.acquire() as conn, conn.transaction():
        rows = await handlers.receive_codes([purchase, purchase], conn, cipher)
    (third,) = events_of(rows, CodeAllocated)
    assert third.order_key.endswith(":2") and third.part == 1
    (level,) = events_of(rows, InventoryLevel)
    assert (level.available, level.backordered, level.received_total) == (1, 0, 4)


async def test_earliest_expiring_first_and_expired_never(pool, cipher):
    now = datetime.now(UTC)
    await import_codes(pool, cipher, "A", ["LATE"], expires_at=now + timedelta(days=30))
    await import_codes(pool, cipher, "A", ["SOON"], expires_at=now + timedelta(days=1))
    await import_codes(pool, cipher, "A", ["GONE"], expires_at=now - timedelta(days=1))
    await import_codes(pool, cipher, "A", ["NEVER"])
    rows = await allocate(pool, [paid(str(i), ("A", 1)) for i in range(4)])
    handed = [c for a in events_of(rows, CodeAllocated) for c in opened(cipher, a)]
    assert sorted(handed) == ["LATE", "NEVER", "SOON"]
    by_order = {a.order_key: opened(cipher, a) for a in events_of(rows, CodeAllocated)}
    assert by_order["standard:s1:0"] == ["SOON"]


async def test_racing_allocators_never_give_a_code_twice(pool, cipher):
    await import_codes(pool, cipher, "A", [f"A-{i}" for i in range(300)])
    await import_codes(pool, cipher, "B", [f"B-{i}" for i in range(300)])
    orders = [paid(str(i), ("A", 1 + i % 2), ("B", 1)) for i in range(400)]
    batches = [orders[i::8] for i in range(8)]

    async def worker(batch):
        for start in range(0, len(batch), 10):
            chunk = batch[start : start + 10]
            while True:
                try:
                    return_rows = await allocate(pool, chunk)
                    break
                except asyncpg.exceptions.DeadlockDetectedError:
                    continue
            del return_rows

    await asyncio.gather(*(worker(b) for b in batches))
    per_code = await pool.fetchval(
        "SELECT count(*) FROM (SELECT code_id FROM units WHERE code_id IS NOT NULL "
        "GROUP BY code_id HAVING count(*) > 1) t"
    )
    assert per_code == 0
    allocated = await pool.fetchval("SELECT count(*) FROM codes WHERE status = 'allocated'")
    filled = await pool.fetchval("SELECT count(*) FROM units WHERE code_id IS NOT NULL")
    waiting = await pool.fetchval("SELECT count(*) FROM units WHERE code_id IS NULL")
    assert allocated == filled == 600  # every code went to exactly one unit
    assert filled + waiting == sum(line.quantity for o in orders for line in o.lines)
