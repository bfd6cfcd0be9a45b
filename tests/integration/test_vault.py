"""The code vault on a real PostgreSQL: never a code twice, FIFO backorders, expiry, dedupe."""

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from services.allocator import handlers, stock, vault
from services.allocator.main import SQL
from shared.codecrypt import SealedCode
from shared.db import connect_and_migrate
from shared.events import (
    CodeAllocated,
    CodeRevoked,
    CodesPurchased,
    Customer,
    MessageSent,
    OrderCancelled,
    OrderLine,
    OrderPaid,
    Stock,
    event_id_for,
)
from shared.kafka import RetriableError

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


async def import_codes(pool, cipher, sku, codes, expires_at=None, account="s1"):
    async with pool.acquire() as conn, conn.transaction():
        report = await vault.import_plain_codes(
            conn, cipher, Stock(account, sku), codes, source="test", expires_at=expires_at
        )
        applied = await handlers.distribute(conn, [Stock(account, sku)], report_levels=True)
    return report, applied.rows


async def allocate(pool, batch):
    async with pool.acquire() as conn, conn.transaction():
        return (await handlers.allocate(batch, conn)).rows


async def level(pool, sku, account="s1"):
    async with pool.acquire() as conn:
        (found,) = await vault.stock_levels(conn, [Stock(account, sku)])
    return found


def events_of(rows, model):
    return [
        model.model_validate_json(m.payload)
        for row in rows
        for m in row.messages
        if m.topic == model.topic
    ]


def opened(cipher, allocation: CodeAllocated) -> list[str]:
    return [cipher.open(SealedCode.from_text(c.sealed), c.sku) for c in allocation.codes]


async def test_import_deduplicates_in_the_file_and_across_skus(pool, cipher):
    report, _ = await import_codes(pool, cipher, "A", ["X-1", "x-1", "X-2", "", "X-3"])
    assert (report.added, report.duplicate_lines, [p.line for p in report.invalid]) == (3, [2], [4])
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
    stock = await level(pool, "A")
    assert (stock.available, stock.backordered) == (2, 0)


async def test_a_redelivered_batch_changes_nothing(pool, cipher):
    await import_codes(pool, cipher, "A", [f"A-{i}" for i in range(5)])
    batch = [paid("1", ("A", 2))]
    assert events_of(await allocate(pool, batch), CodeAllocated)
    assert await allocate(pool, batch) == []
    assert await pool.fetchval("SELECT count(*) FROM codes WHERE status = 'allocated'") == 2


async def test_the_same_order_under_another_event_id_changes_nothing(pool, cipher):
    await import_codes(pool, cipher, "A", [f"A-{i}" for i in range(5)])
    original = paid("1", ("A", 2))
    assert events_of(await allocate(pool, [original]), CodeAllocated)
    again = original.model_copy(update={"event_id": "another-subscription-same-order"})
    assert await allocate(pool, [again, again]) == []
    assert await pool.fetchval("SELECT count(*) FROM codes WHERE status = 'allocated'") == 2


async def test_two_allocators_on_the_same_orders_leave_them_to_the_first(pool, cipher):
    """Mid-rebalance, the partition's old and new owners can hold the same batch: the second
    waits for the first, then steps back without keeping (or losing) a code."""
    await import_codes(pool, cipher, "A", [f"A-{i}" for i in range(5)])
    batch = [paid("1", ("A", 2)), paid("2", ("A", 1))]
    async with pool.acquire() as first, pool.acquire() as second:
        tx = first.transaction()
        await tx.start()
        await handlers.allocate(batch, first)

        async def late_owner():
            async with second.transaction():
                return await handlers.allocate(batch, second)

        racing = asyncio.create_task(late_owner())
        await asyncio.sleep(0.3)
        assert not racing.done()  # waiting on the first owner's uncommitted orders
        await tx.commit()
        with pytest.raises(RetriableError):
            await racing
        async with second.transaction():
            assert (await handlers.allocate(batch, second)).rows == []  # the retry
    assert await pool.fetchval("SELECT count(*) FROM units WHERE code_id IS NOT NULL") == 3
    assert await pool.fetchval("SELECT count(*) FROM codes WHERE status = 'allocated'") == 3
    assert await pool.fetchval("SELECT count(*) FROM codes WHERE status = 'available'") == 2


async def test_short_stock_backorders_and_fills_first_in_first_out(pool, cipher):
    await import_codes(pool, cipher, "A", ["A-1"])
    rows = await allocate(pool, [paid("1", ("A", 2)), paid("2", ("A", 1))])
    (first,) = events_of(rows, CodeAllocated)
    assert first.order_key.endswith(":1") and len(first.codes) == 1
    assert [(b.sku, b.quantity) for b in first.backordered] == [("A", 1)]
    stock = await level(pool, "A")
    assert (stock.available, stock.backordered) == (0, 2)

    _, rows = await import_codes(pool, cipher, "A", ["A-2"])
    (second,) = events_of(rows, CodeAllocated)
    assert second.order_key.endswith(":1") and second.part == 2 and not second.backordered

    sealed = [cipher.seal("A-3", "A").to_text(), cipher.seal("A-4", "A").to_text()]
    purchase = CodesPurchased(
        event_id="p1",
        account="s1",
        sku="A",
        supplier="reloadly",
        reference="A-4",
        codes=sealed,
        purchased_at=datetime.now(UTC),
    )
    async with pool.acquire() as conn, conn.transaction():
        applied = await handlers.receive_codes([purchase, purchase], conn, cipher)
    (third,) = events_of(applied.rows, CodeAllocated)
    assert third.order_key.endswith(":2") and third.part == 1
    assert applied.sold == {Stock("s1", "A"): 1}
    stock = await level(pool, "A")
    assert (stock.available, stock.backordered, stock.received_total) == (1, 0, 4)


async def test_earliest_expiring_first_and_expired_never(pool, cipher):
    now = datetime.now(UTC)
    await import_codes(pool, cipher, "A", ["LATE"], expires_at=now + timedelta(days=30))
    await import_codes(pool, cipher, "A", ["SOON"], expires_at=now + timedelta(days=1))
    await import_codes(pool, cipher, "A", ["GONE"], expires_at=now + timedelta(days=1))
    # GONE expires while in the vault; an import refuses a code already expired, by line
    await pool.execute(
        "UPDATE codes SET expires_at = now() - interval '1 day'"
        " WHERE code_id = (SELECT max(code_id) FROM codes)"
    )
    report, _ = await import_codes(pool, cipher, "A", ["OLD"], expires_at=now - timedelta(days=1))
    assert report.added == 0
    assert [(p.line, p.reason.split(" (")[0]) for p in report.invalid] == [(1, "already expired")]
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


def cancelled(order_id: str) -> OrderCancelled:
    key = f"standard:s1:{order_id}"
    return OrderCancelled(
        event_id=event_id_for("order.cancelled", key),
        order_key=key,
        platform="standard",
        store_id="s1",
        order_id=order_id,
        reason="refunded",
        cancelled_at=datetime.now(UTC),
    )


def sent(allocation: CodeAllocated) -> MessageSent:
    now = datetime.now(UTC)
    return MessageSent(
        event_id=event_id_for("message.sent", allocation.event_id),
        order_key=allocation.order_key,
        part=allocation.part,
        allocation_event_id=allocation.event_id,
        channel="whatsapp",
        provider="whatsapp",
        provider_message_id="wamid.1",
        to="+966500000001",
        attempts=1,
        code_count=len(allocation.codes),
        paid_at=now,
        accepted_at=now,
        paid_to_accepted_ms=1.0,
    )


async def run(pool, work, batch):
    async with pool.acquire() as conn, conn.transaction():
        return (await work(batch, conn)).rows


async def test_cancelling_quarantines_codes_and_revokes_only_undelivered_ones(pool, cipher):
    await import_codes(pool, cipher, "A", ["A-1", "A-2", "A-3"])
    rows = await allocate(pool, [paid("1", ("A", 2)), paid("2", ("A", 2))])
    by_key = {a.order_key: a for a in events_of(rows, CodeAllocated)}
    first, second = by_key["standard:s1:1"], by_key["standard:s1:2"]
    assert [(b.sku, b.quantity) for b in second.backordered] == [("A", 1)]
    await run(pool, handlers.mark_delivered, [sent(first)])

    rows = await run(pool, handlers.cancel, [cancelled("1"), cancelled("2")])
    (revoked,) = events_of(rows, CodeRevoked)  # order 1 was delivered: nothing to withdraw
    assert revoked.order_key == second.order_key
    assert revoked.code_ids == [c.code_id for c in second.codes] and revoked.parts == [1]
    async with pool.acquire() as conn:
        (report,) = await stock.stock_report(conn, "s1", sku="A")
    assert (report.available, report.reserved, report.sold, report.backordered) == (0, 0, 0, 0)
    assert report.quarantined == 3  # withdrawn codes are never resold

    # new stock must not go to the cancelled order's dropped backorder
    _, rows = await import_codes(pool, cipher, "A", ["A-4"])
    assert events_of(rows, CodeAllocated) == []
    assert await run(pool, handlers.cancel, [cancelled("2")]) == []  # redelivered: no-op


async def test_a_cancellation_that_arrives_first_stops_the_allocation(pool, cipher):
    await import_codes(pool, cipher, "A", ["A-1"])
    await run(pool, handlers.cancel, [cancelled("early")])
    assert await allocate(pool, [paid("early", ("A", 1))]) == []
    assert await pool.fetchval("SELECT count(*) FROM codes WHERE status = 'available'") == 1


async def test_stock_report_and_masked_order_view(pool, cipher):
    now = datetime.now(UTC)
    await import_codes(pool, cipher, "A", ["SOON-0001"], expires_at=now + timedelta(days=2))
    await import_codes(pool, cipher, "A", ["LONG-0002", "LONG-0003", "LONG-0004"])
    rows = await allocate(pool, [paid("1", ("A", 2)), paid("2", ("A", 3))])
    first = next(a for a in events_of(rows, CodeAllocated) if a.order_key.endswith(":1"))
    await run(pool, handlers.mark_delivered, [sent(first)])
    async with pool.acquire() as conn:
        (report,) = await stock.stock_report(conn, "s1", expiring_days=7)
        view = await stock.order_allocation(conn, cipher, "s1", "standard:s1:1")
    assert (report.available, report.reserved, report.sold, report.backordered) == (0, 2, 2, 1)
    assert view is not None
    assert [u["state"] for u in view["units"]] == ["delivered", "delivered"]
    assert view["units"][0]["code"] == "XXXX-…-0001"  # the earliest-expiring code went first
    assert all("SOON" not in str(u) and "LONG" not in str(u) for u in view["units"])
