"""The restocker's handling of `inventory.level`: fold each level into its stock's state, decide,
and leave the buying to the stock's purchase task (purchasing.py); plus what `/stock` shows.

The faust app, its table and the resources around them are wired in main.py.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web
from faust.types import TP
from prometheus_client import Gauge

from services.restocker.policy import SkuState, cover_minutes, decide, observe, reference_stem
from services.restocker.purchasing import (
    CODES_BOUGHT,
    FAILOVERS,
    PURCHASES,
    SUPPLIER_ERRORS,
    Ledger,
    Purchasing,
)
from services.restocker.settings import RestockerSettings
from services.restocker.suppliers import Reason, SupplierSettings
from shared import metrics
from shared.admin_auth import admin_guard
from shared.events import InventoryLevel, Stock

log = logging.getLogger(__name__)

SERVICE = "restocker"
LAG_INTERVAL_S = 5.0  # how often tasleem_consumer_lag is measured (the others: every batch)
STOCK_COVER = Gauge(
    "tasleem_restocker_stock_cover_seconds",
    "How long the available stock lasts at the current sales rate (+Inf: no sales)",
    ["account", "sku"],
)
SALES_RATE = Gauge("tasleem_restocker_sales_per_minute", "Weighted sales rate", ["account", "sku"])


class TableLedger:
    """The faust table seen as Stock -> SkuState, keyed by `Stock.key()`."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def get(self, stock: Stock) -> SkuState:
        return SkuState.from_dict(self.table.get(stock.key()))

    def put(self, stock: Stock, state: SkuState) -> None:
        self.table[stock.key()] = state.to_dict()

    def stocks(self) -> Iterable[Stock]:
        found = []
        for key in self.table:
            try:
                found.append(Stock.from_key(key))
            except ValueError:  # a sku's bare key, from before accounts: no account to buy for
                continue
        return found


def cover_seconds(state: SkuState) -> float:
    """The stock's cover in seconds, Prometheus' base unit; +Inf while nothing sells."""
    cover = cover_minutes(state)
    return math.inf if cover is None else cover * 60


def init_series(suppliers: Iterable[SupplierSettings]) -> None:
    """The dead-letter and every configured supplier's (and its skus') series at zero from
    the start, so `increase(...)` has a series before the first dead letter or purchase."""
    metrics.DEAD_LETTERS.labels(SERVICE, InventoryLevel.topic)
    for outcome in ("ok", "dead_lettered"):
        metrics.MESSAGES.labels(SERVICE, InventoryLevel.topic, outcome)
    for config in suppliers:
        PURCHASES.labels(config.name)
        FAILOVERS.labels(config.name)
        for reason in Reason:
            SUPPLIER_ERRORS.labels(config.name, reason.value)
        for sku in config.products:
            CODES_BOUGHT.labels(sku, config.name)


async def export_consumer_lag(consumer: Any, group: str, topic: str, exported: set[TP]) -> None:
    """`tasleem_consumer_lag` of this worker's partitions of `topic`, the family the aiokafka
    services export: the partition's end offset (asked of the broker, so a partition faust has
    paused still counts) minus the offset committed. Faust keeps the committed offset per
    partition: read from the broker after each assignment, moved on every commit; before the
    first commit the fetch position stands in. `exported` holds the partitions reported last
    time: a partition no longer assigned loses its series."""
    try:
        assigned = {tp for tp in consumer.assignment() if tp.topic == topic}
        ends = await consumer.highwaters(*assigned) if assigned else {}
        committed = getattr(consumer, "_committed_offset", {})  # faust's own bookkeeping
        lags = {}
        for tp in assigned:
            done = committed.get(tp)
            if done is None:
                done = await consumer.position(tp)
            if ends.get(tp) is not None and done is not None:
                lags[tp] = max(ends[tp] - done, 0)
    except Exception as exc:  # a timer that raises would stop the worker
        log.warning("consumer lag of %s not measured: %r", topic, exc)
        return
    for tp, lag in lags.items():
        metrics.CONSUMER_LAG.labels(SERVICE, group, tp.topic, tp.partition).set(lag)
    for tp in exported - assigned:
        metrics.CONSUMER_LAG.remove(SERVICE, group, tp.topic, tp.partition)
    exported.intersection_update(assigned)
    exported.update(lags)


def stock_report(ledger: Ledger, settings: RestockerSettings, lead: dict[str, float]) -> dict:
    """What GET /stock shows: per stock (account and sku) its cover in minutes and whether it
    is `stock.low`."""
    rows = []
    for stock in sorted(ledger.stocks()):
        state = ledger.get(stock)
        cover = cover_minutes(state)
        policy = settings.policy(stock.sku, lead.get(stock.sku, 30.0))
        purchase = state.purchase
        rows.append(
            {
                "account": stock.account,
                "sku": stock.sku,
                "state": "stock.low" if state.alert else ("buying" if purchase else "ok"),
                "alert": state.alert or None,
                "available": state.available,
                "backordered": state.backordered,
                "received_total": state.received_total,
                "sales_per_minute": round(state.rate * 60, 3),
                "cover_minutes": None if cover is None else round(cover, 1),
                "reorder_point": policy.reorder_point(state.rate),
                "purchases": state.purchases,
                "bought": state.bought,
                "purchase": None
                if purchase is None
                else purchase.model_dump(
                    include={
                        "reference",
                        "quantity",
                        "supplier",
                        "status",
                        "tried",
                        "failures",
                        "last_error",
                    }
                ),
            }
        )
    low = [f"{row['account']}/{row['sku']}" for row in rows if row["alert"]]
    return {"skus": rows, "stock_low": low}


StockReport = Callable[[], dict[str, Any]]
STOCK_REPORT: web.AppKey[StockReport] = web.AppKey("stock_report")


async def stock(request: web.Request) -> web.Response:
    return web.json_response(request.app[STOCK_REPORT]())


def add_stock_route(app: web.Application, settings: RestockerSettings, report: StockReport) -> None:
    """`GET /stock` behind the restocker's admin tokens: it shows stock, sales rates, suppliers
    and purchase references, which are nobody else's business."""
    tokens = settings.restocker_admin_tokens.get_secret_value()
    app.middlewares.append(admin_guard(SERVICE, tokens, prefixes=("/admin/", "/stock")))
    app[STOCK_REPORT] = report
    app.router.add_get("/stock", stock)


def lead_times(suppliers: Iterable[SupplierSettings]) -> dict[str, float]:
    """Lead time per sku: that of the first supplier (by priority) selling it."""
    lead: dict[str, float] = {}
    for config in sorted(suppliers, key=lambda c: c.priority):
        for sku in config.products:
            lead.setdefault(sku, config.lead_time_s)
    return lead


class Refused(Exception):
    """An `inventory.level` record the restocker cannot use: dead-lettered with the reason."""


def restock(
    key: bytes | None,
    raw: bytes,
    ledger: Ledger,
    buyer: Purchasing,
    settings: RestockerSettings,
    lead: dict[str, float],
) -> None:
    """Fold one level into the stock's state, decide, and wake its purchase task. Raises
    `Refused` for a record to dead-letter."""
    try:
        level = InventoryLevel.from_kafka(raw)
    except ValueError as exc:
        raise Refused(f"not an InventoryLevel: {str(exc)[:500]}") from None
    stock = Stock(level.account, level.sku)
    if not level.account:
        # from an allocator before accounts: its stock has no owner to buy for, and
        # the same stock arrives again with its account
        return
    if key != stock.key():
        # the table row is written under the body's stock, on the key's partition:
        # a record whose two disagree would land on a partition another worker owns
        raise Refused("the record key is not the level's Stock.key()")
    policy = settings.policy(level.sku, lead.get(level.sku, 30.0))
    state = ledger.get(stock)
    observe(state, level, policy)
    purchase = None
    if buyer.known(stock.sku):
        purchase = decide(state, reference_stem(stock), policy, time.time())
        STOCK_COVER.labels(*stock).set(cover_seconds(state))
        SALES_RATE.labels(*stock).set(state.rate * 60)
    else:
        # nothing can buy it: alerted in aggregate, with no series or log line of its own
        buyer.unsellable(stock, state, policy)
    ledger.put(stock, state)  # recorded before any supplier hears of it
    if purchase is not None:
        log.info(
            "buying %d of %s for %s (ref %s): %d available, %d backordered, %.1f/min",
            purchase.quantity,
            stock.sku,
            stock.account,
            purchase.reference,
            state.available,
            state.backordered,
            state.rate * 60,
        )
    buyer.kick(stock)
