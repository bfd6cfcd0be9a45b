"""Allocator handlers: paid orders in, codes out; purchased codes in, backorders filled.

Each handler runs inside the caller's transaction and returns what it `Applied`: the outbox
rows to relay after commit, and the stock it touched (reported on `inventory.level` by
`levels.LevelReporter`, coalesced, off the hot path).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal

import asyncpg
import prometheus_client
import pydantic_core
from pydantic import TypeAdapter

from services.allocator import outbox, vault
from shared.codecrypt import CodeCipher
from shared.db import DbConn
from shared.events import (
    AllocatedCode,
    BackorderedUnits,
    CodeAllocated,
    CodeRevoked,
    CodesPurchased,
    Customer,
    Event,
    InventoryLevel,
    MessageSent,
    OrderCancelled,
    OrderLine,
    OrderPaid,
    Stock,
    event_id_for,
    utcnow,
)
from shared.kafka import PermanentError, RetriableError

ORDERS_REFUSED = prometheus_client.Counter(
    "tasleem_allocator_orders_refused_total",
    "Paid orders dead-lettered instead of allocated, by reason (alert on any)",
    ["reason"],
)


@dataclass
class Applied:
    """What a handler did: events to relay once committed, and the stock it moved."""

    rows: list[outbox.OutboxRow] = field(default_factory=list)
    sold: Counter[Stock] = field(default_factory=Counter)  # units that got a code, per stock
    touched: set[Stock] = field(default_factory=set)  # stocks whose level changed
    # stocks that left units of this batch waiting for a code: a buyer waits until the
    # restocker hears of it and buys them, so their level is reported at once
    short: set[Stock] = field(default_factory=set)

    def merge(self, other: Applied) -> Applied:
        self.rows.extend(other.rows)
        self.sold.update(other.sold)
        self.touched |= other.touched
        self.short |= other.short
        return self


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


def units_of(order: OrderPaid) -> int:
    return sum(line.quantity for line in order.lines)


def within_limit(
    batch: Sequence[OrderPaid], max_units: int
) -> tuple[list[OrderPaid], list[OrderPaid]]:
    """The orders the allocator takes, and those over its hard limit of units per order.

    The gateway caps orders per store; this is the allocator's own defence: one signed order
    of 2,000,000 units once wrote as many backorder rows and held every other store's orders
    up for 20 s. Such an order goes to the dead-letter topic for a human, whole."""
    kept: list[OrderPaid] = []
    refused: list[OrderPaid] = []
    for order in batch:
        (refused if units_of(order) > max_units else kept).append(order)
    return kept, refused


def refusal(order: OrderPaid, max_units: int) -> PermanentError:
    return PermanentError(
        f"order {order.order_key} has {units_of(order)} units, over the allocator's limit of "
        f"{max_units} per order: not allocated"
    )


def chunks(batch: Sequence[OrderPaid], max_units: int) -> Iterator[list[OrderPaid]]:
    """The batch in runs of at most `max_units` units (a run holds at least one order), each
    allocated in its own transaction: however large the orders of a batch, no transaction
    holds its locks, or the batch behind it, for longer than `max_units` units take."""
    run: list[OrderPaid] = []
    units = 0
    for order in batch:
        n = units_of(order)
        if run and units + n > max_units:
            yield run
            run, units = [], 0
        run.append(order)
        units += n
    if run:
        yield run


async def allocate(batch: Sequence[OrderPaid], conn: DbConn) -> Applied:
    """Allocate a batch of paid orders: claim codes for all its stocks at once, write the
    units with their codes, and queue what is short behind older backorders (first in, first
    out). Every unit draws only on its order's account (`OrderPaid.stock_account`).

    An order already in `orders` (a redelivery, or a duplicate with another event id) or
    already cancelled by its own account is skipped: the order key is the event's identity."""
    orders = _unique_by_key(batch)
    seen = await conn.fetch(
        """
        SELECT order_key FROM orders WHERE order_key = ANY($1::text[])
        UNION ALL
        SELECT c.order_key FROM cancellations c
        JOIN unnest($1::text[], $2::text[]) AS t(k, a)
          ON c.order_key = t.k AND (c.account IS NULL OR c.account = t.a)
        """,
        [o.order_key for o in orders],
        [o.stock_account for o in orders],
    )
    if seen:
        known = {r["order_key"] for r in seen}
        orders = [o for o in orders if o.order_key not in known]
    if not orders:
        return Applied()
    wanted = [
        (o.order_key, Stock(o.stock_account, line.sku), line_no, unit_no)
        for o in orders
        for line_no, line in enumerate(o.lines)
        for unit_no in range(line.quantity)
    ]
    stocks = {stock for _, stock, *_ in wanted}
    behind = await vault.stocks_with_backorders(conn, stocks)
    codes = await vault.claim_codes(conn, Counter(s for _, s, *_ in wanted if s not in behind))
    supply = {stock: iter(found) for stock, found in codes.items()}
    nothing: Iterator[vault.Claimed] = iter(())
    by_order: dict[str, list[vault.UnitRow]] = defaultdict(list)
    for key, stock, line_no, unit_no in wanted:
        code = next(supply.get(stock, nothing), None)
        by_order[key].append(
            vault.UnitRow(
                key, stock.account, line_no, unit_no, stock.sku, code, 1 if code else None
            )
        )
    served = {key for key, units in by_order.items() if any(u.code for u in units)}
    all_units = [u for units in by_order.values() for u in units]
    try:
        await _insert_orders(conn, orders, served)
        await vault.insert_units(conn, all_units)
    except asyncpg.UniqueViolationError as exc:
        # Only another allocator writing the same orders gets here (the partition's previous
        # owner, mid-rebalance): it won. Once it commits, the retry finds the orders and skips.
        raise RetriableError("these orders are being allocated elsewhere") from exc

    now = utcnow()
    events: list[Event | outbox.Message] = [
        _allocated(o, by_order[o.order_key], now) for o in orders if o.order_key in served
    ]
    applied = Applied(
        sold=Counter(u.stock for u in all_units if u.code),
        touched=stocks,
        short={u.stock for u in all_units if not u.code},
    )
    if behind:
        backlog_events, backlog = await fill_backorders(conn, behind)
        events.extend(backlog_events)
        applied.merge(backlog)
    applied.rows = await outbox.write(conn, events)
    return applied


async def _insert_orders(conn: DbConn, orders: Sequence[OrderPaid], served: set[str]) -> None:
    """New orders, by COPY: unlike INSERT … ON CONFLICT it takes a third of the time, and
    `allocate` has already left out the orders that exist."""
    await conn.copy_records_to_table(
        "orders",
        columns=_ORDER_COLUMNS,
        records=[
            (
                o.order_key,
                o.stock_account,
                o.store_id,
                o.store_name,
                o.order_id,
                o.customer.model_dump_json(),
                _LINES.dump_json(o.lines).decode(),
                o.paid_at,
                1 if o.order_key in served else 0,
            )
            for o in orders
        ],
    )


_LINES = TypeAdapter(list[OrderLine])
_ORDER_COLUMNS = (
    *("order_key", "account", "store_id", "store_name", "order_id"),
    *("customer", "lines", "paid_at", "parts"),
)


def _allocated(order: OrderPaid, units: Sequence[vault.UnitRow], now: datetime) -> outbox.Message:
    """Part 1 of an order, serialised straight from validated data: the hot path skips
    building a `CodeAllocated` (tests/unit/test_events.py holds the two equal)."""
    codes: list[dict[str, object]] = []
    waiting: dict[str, int] = {}
    for u in units:  # one pass, no Counter: this runs for every order of a surge
        if u.code is None:
            waiting[u.sku] = waiting.get(u.sku, 0) + 1
        else:
            codes.append(
                {
                    "code_id": u.code.code_id,
                    "sku": u.sku,
                    "sealed": u.code.sealed,
                    "expires_at": u.code.expires_at,
                }
            )
    payload = pydantic_core.to_json(
        {
            "schema_version": 1,
            "event_id": event_id_for("code.allocated", order.order_key, 1),
            "order_key": order.order_key,
            "part": 1,
            "store_id": order.store_id,
            "store_name": order.store_name,
            "order_id": order.order_id,
            "customer": order.customer,
            "codes": codes,
            "lines": order.lines,
            "backordered": [{"sku": s, "quantity": n} for s, n in waiting.items()],
            "paid_at": order.paid_at,
            "allocated_at": now,
        }
    )
    return outbox.Message(CodeAllocated.topic, order.order_key.encode(), payload)


def _code(unit: vault.UnitRow) -> AllocatedCode:
    assert unit.code is not None
    return AllocatedCode(
        code_id=unit.code.code_id,
        sku=unit.sku,
        sealed=unit.code.sealed,
        expires_at=unit.code.expires_at,
    )


async def receive_codes(
    batch: Sequence[CodesPurchased], conn: DbConn, cipher: CodeCipher
) -> Applied:
    """Store codes bought by the restocker (deduplicated) into the account they were bought
    for, and fill that account's backorders with them. A purchase that names no account
    (published before accounts) is held in ':legacy' for an operator to hand over."""
    new_ids = await claim_new(conn, batch)
    stocks = set()
    for event in batch:
        if event.event_id not in new_ids:
            continue
        stock = Stock(event.account or vault.LEGACY_ACCOUNT, event.sku)
        cost = Decimal(event.unit_cost) if event.unit_cost else None
        codes = [
            replace(code, expires_at=event.expires_at, cost=cost, batch=event.reference)
            for code in vault.fingerprint_sealed(cipher, event.sku, event.codes)
        ]
        await vault.store_codes(conn, stock, codes, source=event.supplier)
        stocks.add(stock)
    applied = await distribute(conn, stocks)
    if stocks:
        # buyers still wait: the restocker buys the next lot once it sees this one landed
        applied.short |= await vault.stocks_with_backorders(conn, stocks)
    return applied


async def cancel(batch: Sequence[OrderCancelled], conn: DbConn) -> Applied:
    """Withdraw cancelled orders: waiting units dropped, codes quarantined (never resold), and
    `code.revoked` for codes not yet delivered so the notifier does not send them."""
    new_ids = await claim_new(conn, batch)
    cancels = {e.order_key: e for e in batch if e.event_id in new_ids}
    if not cancels:
        return Applied()
    keys = sorted(cancels)
    accounts = [cancels[k].stock_account for k in keys]
    await conn.execute(
        """
        INSERT INTO cancellations (order_key, reason, cancelled_at, account)
        SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[])
        ON CONFLICT DO NOTHING
        """,
        keys,
        [cancels[k].reason for k in keys],
        [cancels[k].cancelled_at for k in keys],
        accounts,
    )
    # only orders of the cancelling account: another account's order under the same key is
    # not its to withdraw
    rows = await conn.fetch(
        """
        UPDATE orders SET cancelled_at = now()
        FROM unnest($1::text[], $2::text[]) AS t(k, a)
        WHERE orders.order_key = t.k AND orders.account = t.a
        RETURNING orders.order_key
        """,
        keys,
        accounts,
    )
    keys = sorted(r["order_key"] for r in rows)
    dropped = await conn.fetch(
        "DELETE FROM units WHERE order_key = ANY($1::text[]) AND code_id IS NULL "
        "RETURNING account, sku",
        keys,
    )
    withdrawn = await conn.fetch(
        """
        UPDATE units SET revoked_at = now()
        WHERE order_key = ANY($1::text[]) AND code_id IS NOT NULL AND revoked_at IS NULL
        RETURNING order_key, code_id, part, account, sku, delivered_at
        """,
        keys,
    )
    await conn.execute(
        "UPDATE codes SET status = 'revoked' WHERE code_id = ANY($1::bigint[])",
        [r["code_id"] for r in withdrawn],
    )
    undelivered: dict[str, list[asyncpg.Record]] = defaultdict(list)
    for row in withdrawn:
        if row["delivered_at"] is None:
            undelivered[row["order_key"]].append(row)
    events: list[Event] = [
        CodeRevoked(
            event_id=event_id_for("code.revoked", key),
            order_key=key,
            code_ids=sorted(r["code_id"] for r in rows),
            parts=sorted({r["part"] for r in rows if r["part"] is not None}),
            reason=cancels[key].reason or "order cancelled",
        )
        for key, rows in undelivered.items()
    ]
    stocks = {Stock(r["account"], r["sku"]) for r in (*dropped, *withdrawn)}
    return Applied(rows=await outbox.write(conn, events), touched=stocks)


async def mark_delivered(batch: Sequence[MessageSent], conn: DbConn) -> Applied:
    """Codes whose message the provider accepted count as sold, not merely reserved."""
    await conn.execute(
        """
        UPDATE units SET delivered_at = t.at
        FROM unnest($1::text[], $2::int[], $3::timestamptz[]) AS t(k, p, at)
        WHERE units.order_key = t.k AND units.part = t.p AND units.delivered_at IS NULL
        """,
        [e.order_key for e in batch],
        [e.part for e in batch],
        [e.accepted_at for e in batch],
    )
    return Applied()


async def distribute(conn: DbConn, stocks: Iterable[Stock], report_levels: bool = False) -> Applied:
    """Fill backorders of `stocks` after stock arrived; with `report_levels`, also write each
    stock's `inventory.level` to the outbox (for writers outside the allocator process, which
    have no level reporter)."""
    stocks = set(stocks)
    events, applied = await fill_backorders(conn, stocks)
    applied.touched |= stocks
    if report_levels:
        now = utcnow()
        for level in await vault.stock_levels(conn, reportable(stocks)):
            events.append(level_event(level, applied.sold[level.stock], now))
    applied.rows = await outbox.write(conn, events)
    return applied


def reportable(stocks: Iterable[Stock]) -> list[Stock]:
    """Stocks whose level is published: not those held outside every store (':legacy')."""
    return sorted(s for s in stocks if not s.account.startswith(":"))


def level_event(level: vault.StockLevel, sold: int, now: datetime) -> InventoryLevel:
    account, sku = level.stock
    return InventoryLevel(
        event_id=event_id_for("inventory.level", account, sku, now.isoformat()),
        account=account,
        sku=sku,
        available=level.available,
        backordered=level.backordered,
        sold_since_last=sold,
        received_total=level.received_total,
        at=now,
    )


async def fill_backorders(conn: DbConn, stocks: Iterable[Stock]) -> tuple[list[Event], Applied]:
    """Give waiting units their codes, oldest first; one new part per order served."""
    stocks = set(stocks)
    filled = await vault.fill_waiting(conn, stocks)
    if not filled:
        return [], Applied()
    by_order: dict[str, list[vault.UnitRow]] = defaultdict(list)
    for unit in filled:
        by_order[unit.order_key].append(unit)
    keys = sorted(by_order)
    orders = await conn.fetch(
        """
        UPDATE orders SET parts = parts + 1 WHERE order_key = ANY($1::text[])
        RETURNING order_key, parts, store_id, store_name, order_id, customer, lines, paid_at
        """,
        keys,
    )
    part_of = {o["order_key"]: o["parts"] for o in orders}
    filled = [replace(u, part=part_of[u.order_key]) for u in filled]
    await vault.assign(conn, filled)
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
                codes=[_code(u) for u in units],
                backordered=still_waiting.get(key, []),
                paid_at=order["paid_at"],
                allocated_at=now,
            )
        )
    return events, Applied(sold=Counter(u.stock for u in filled), touched=set(stocks))


def _unique_by_key(events: Iterable[OrderPaid]) -> list[OrderPaid]:
    seen: dict[str, OrderPaid] = {}
    for event in events:
        seen.setdefault(event.order_key, event)
    return list(seen.values())
