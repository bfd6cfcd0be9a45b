"""Allocator handlers: paid orders in, codes out; purchased codes in, backorders filled."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

from services.allocator import outbox, vault
from shared.codecrypt import CodeCipher
from shared.db import DbConn
from shared.events import (
    AllocatedCode,
    BackorderedUnits,
    CodeAllocated,
    CodesPurchased,
    Customer,
    Event,
    InventoryLevel,
    OrderLine,
    OrderPaid,
    event_id_for,
    utcnow,
)


async def claim_new(conn: DbConn, events: Sequence[Event]) -> set[str]:
    """Record event ids; returns those not seen before (the rest are redeliveries)."""
    rows = await conn.fetch(
        """
        INSERT INTO processed_events (event_id) SELECT unnest($1::text[])
        ON CONFLICT DO NOTHING RETURNING event_id
        """,
        [e.event_id for e in events],
    )
    return {r["event_id"] for r in rows}


async def allocate(batch: Sequence[OrderPaid], conn: DbConn) -> list[outbox.OutboxRow]:
    """Allocate a batch of paid orders in the caller's transaction; returns the outbox rows."""
    new_ids = await claim_new(conn, batch)
    orders = _unique_by_key(e for e in batch if e.event_id in new_ids)
    if not orders:
        return []
    await conn.execute(
        """
        INSERT INTO orders (order_key, store_id, store_name, order_id, customer, lines, paid_at)
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[],
                             $6::jsonb[], $7::timestamptz[])
        ON CONFLICT DO NOTHING
        """,
        [o.order_key for o in orders],
        [o.store_id for o in orders],
        [o.store_name for o in orders],
        [o.order_id for o in orders],
        [o.customer.model_dump_json() for o in orders],
        [json.dumps([line.model_dump() for line in o.lines]) for o in orders],
        [o.paid_at for o in orders],
    )
    units = [
        (o.order_key, line_no, unit_no, line.sku)
        for o in orders
        for line_no, line in enumerate(o.lines)
        for unit_no in range(line.quantity)
    ]
    await vault.queue_units(conn, units)
    return await distribute(conn, {u[3] for u in units})


async def receive_codes(
    batch: Sequence[CodesPurchased], conn: DbConn, cipher: CodeCipher
) -> list[outbox.OutboxRow]:
    """Store codes bought by the restocker (deduplicated) and fill backorders with them."""
    new_ids = await claim_new(conn, batch)
    skus = set()
    for event in batch:
        if event.event_id not in new_ids:
            continue
        sealed = vault.fingerprint_sealed(cipher, event.sku, event.codes)
        await vault.store_codes(
            conn,
            event.sku,
            sealed,
            source=f"{event.supplier}:{event.reference}",
            expires_at=event.expires_at,
        )
        skus.add(event.sku)
    return await distribute(conn, skus, always_report=True)


async def distribute(
    conn: DbConn, skus: Iterable[str], always_report: bool = False
) -> list[outbox.OutboxRow]:
    """Fill waiting units of `skus`; write `code.allocated` per order part and one
    `inventory.level` per sku to the outbox."""
    filled: list[vault.FilledUnit] = []
    skus = sorted(skus)
    for sku in skus:
        filled.extend(await vault.fill(conn, sku))
    events: list[Event] = await _allocation_events(conn, filled)
    sold = Counter(u.sku for u in filled)
    now = utcnow()
    for level in await vault.stock_levels(conn, skus):
        if sold[level.sku] or always_report or level.backordered:
            events.append(
                InventoryLevel(
                    event_id=event_id_for("inventory.level", level.sku, now.isoformat()),
                    sku=level.sku,
                    available=level.available,
                    backordered=level.backordered,
                    sold_since_last=sold[level.sku],
                    received_total=level.received_total,
                    at=now,
                )
            )
    return await outbox.write(conn, events)


async def _allocation_events(conn: DbConn, filled: Sequence[vault.FilledUnit]) -> list[Event]:
    if not filled:
        return []
    by_order: dict[str, list[vault.FilledUnit]] = defaultdict(list)
    for unit in filled:
        by_order[unit.order_key].append(unit)
    keys = list(by_order)
    orders = await conn.fetch(
        """
        UPDATE orders SET parts = parts + 1 WHERE order_key = ANY($1::text[])
        RETURNING order_key, parts, store_id, store_name, order_id, customer, lines, paid_at
        """,
        keys,
    )
    await conn.execute(
        """
        UPDATE units SET part = o.parts FROM orders o
        WHERE o.order_key = units.order_key AND units.order_key = ANY($1::text[])
          AND units.code_id = ANY($2::bigint[])
        """,
        keys,
        [u.code_id for u in filled],
    )
    waiting = await conn.fetch(
        """
        SELECT order_key, sku, count(*) AS n FROM units
        WHERE order_key = ANY($1::text[]) AND code_id IS NULL GROUP BY order_key, sku
        """,
        keys,
    )
    still_waiting: dict[str, list[BackorderedUnits]] = defaultdict(list)
    for row in waiting:
        still_waiting[row["order_key"]].append(BackorderedUnits(sku=row["sku"], quantity=row["n"]))
    now = utcnow()
    events: list[Event] = []
    for order in orders:
        key = order["order_key"]
        units = sorted(by_order[key], key=lambda u: (u.line_no, u.unit_no))
        events.append(
            CodeAllocated(
                event_id=event_id_for("code.allocated", key, order["parts"]),
                order_key=key,
                part=order["parts"],
                store_id=order["store_id"],
                store_name=order["store_name"],
                order_id=order["order_id"],
                customer=Customer.model_validate_json(order["customer"]),
                lines=[OrderLine.model_validate(line) for line in json.loads(order["lines"])],
                codes=[
                    AllocatedCode(
                        code_id=u.code_id, sku=u.sku, sealed=u.sealed, expires_at=u.expires_at
                    )
                    for u in units
                ],
                backordered=still_waiting.get(key, []),
                paid_at=order["paid_at"],
                allocated_at=now,
            )
        )
    return events


def _unique_by_key(events: Iterable[OrderPaid]) -> list[OrderPaid]:
    seen: dict[str, OrderPaid] = {}
    for event in events:
        seen.setdefault(event.order_key, event)
    return list(seen.values())
