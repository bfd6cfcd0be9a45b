"""The restocker: a faust-streaming app over `inventory.level` that buys before stock runs out.

State per stock (an account's sku: its stock, sales rate, the purchase in flight, spend) lives
in the faust table `skus`, backed by its changelog topic and restored after a restart. The
agent only folds levels into the table and decides; purchases run in per-stock tasks
(purchasing.py), so a slow supplier never stalls the stream. The table is keyed by the same
bytes as `inventory.level` (`Stock.key()`: account and sku) and partitioned like it (the
producer's default partitioner on the same key), which is what lets the purchase tasks and the
sweep timer write to it outside the stream. Each account's stock is bought for separately,
from suppliers whose products map per sku, and its codes go to that account's vault.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp
import faust
from aiohttp import web
from faust.types import TP
from prometheus_client import Gauge

from services.restocker.policy import (
    Purchase,
    SkuState,
    cover_minutes,
    decide,
    observe,
    reference_stem,
)
from services.restocker.purchasing import (
    CODES_BOUGHT,
    FAILOVERS,
    PURCHASES,
    SUPPLIER_ERRORS,
    Ledger,
    Purchasing,
)
from services.restocker.settings import RestockerSettings
from services.restocker.suppliers import Delivery, Reason, Supplier, SupplierSettings, build
from shared import kafka_clients, metrics, runtime
from shared.admin_auth import admin_guard
from shared.codecrypt import CodeCipher
from shared.events import (
    CodesPurchased,
    InventoryLevel,
    Stock,
    dlq_topic,
    event_id_for,
    utcnow,
)

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


def add_stock_route(
    app: web.Application, settings: RestockerSettings, report: Callable[[], dict[str, Any]]
) -> None:
    """`GET /stock` behind the restocker's admin tokens: it shows stock, sales rates, suppliers
    and purchase references, which are nobody else's business."""
    tokens = settings.restocker_admin_tokens.get_secret_value()
    app.middlewares.append(admin_guard(SERVICE, tokens, prefixes=("/admin/", "/stock")))

    async def stock(_: web.Request) -> web.Response:
        return web.json_response(report())

    app.router.add_get("/stock", stock)


def create_app(settings: RestockerSettings) -> faust.App:
    cipher = CodeCipher.from_settings(settings)
    supplier_settings = settings.supplier_list()
    app = faust.App(
        settings.app_id,
        **kafka_clients.faust_broker(settings),  # the same TLS/SASL as every other client
        store="memory://",  # tables are rebuilt from their changelog topics after a restart
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication_factor,
        producer_acks=-1,
        broker_session_timeout=settings.kafka_session_timeout_ms / 1000,
        broker_heartbeat_interval=settings.kafka_heartbeat_interval_ms / 1000,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        processing_guarantee="at_least_once",  # the embedded broker has no transactions
    )
    levels_topic = app.topic(
        InventoryLevel.topic,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.topic_partitions,
    )
    purchased_topic = app.topic(CodesPurchased.topic, key_serializer="raw", value_serializer="raw")
    dead_letters = app.topic(
        dlq_topic(InventoryLevel.topic), key_serializer="raw", value_serializer="raw"
    )
    # raw keys and the producer's partitioner: a write lands on the sku's inventory.level
    # partition whether it comes from the agent or from a purchase task
    skus = app.Table(
        "skus",
        partitions=settings.topic_partitions,
        key_type=bytes,  # raw keys on the changelog
        use_partitioner=True,
    )
    ledger = TableLedger(skus)
    # lead time per sku: that of the first supplier (by priority) selling it
    lead: dict[str, float] = {}
    for config in sorted(supplier_settings, key=lambda c: c.priority):
        for sku in config.products:
            lead.setdefault(sku, config.lead_time_s)
    held: dict[str, Any] = {}
    init_series(supplier_settings)

    async def publish(stock: Stock, supplier: str, purchase: Purchase, delivery: Delivery) -> None:
        event = CodesPurchased(
            event_id=event_id_for("codes.purchased", purchase.reference),
            account=stock.account,  # bought for this account: its vault gets them
            sku=stock.sku,
            supplier=supplier,
            reference=purchase.reference,
            codes=[cipher.seal(code, stock.sku).to_text() for code in delivery.codes],
            unit_cost=str(delivery.unit_cost) if delivery.unit_cost is not None else None,
            purchased_at=utcnow(),
        )
        sent = await purchased_topic.send(key=event.kafka_key(), value=event.to_bytes())
        await sent  # the broker has it before the purchase is marked published

    def purchasing() -> Purchasing:
        if "purchasing" not in held:
            session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=settings.supplier_timeout_s)
            )
            suppliers: list[Supplier] = [build(c, session) for c in supplier_settings]
            held["session"] = session
            held["purchasing"] = Purchasing(
                ledger,
                suppliers,
                publish,
                settings.limits(),
                durable=app.producer.flush,
                known_skus=settings.sku_policies,
            )
        return held["purchasing"]

    def recovered() -> bool:
        recovery = app.tables.recovery  # type: ignore[attr-defined]
        return bool(recovery.completed.is_set()) and not app.in_recovery

    @app.agent(levels_topic)
    async def restock(stream: Any) -> None:
        async for key, raw in stream.items():
            try:
                level = InventoryLevel.from_kafka(raw)
            except ValueError as exc:
                message = stream.current_event.message
                source = f"{message.topic}/{message.partition}/{message.offset}"
                reason = f"not an InventoryLevel: {str(exc)[:500]}"
                await dead_letters.send(
                    key=key,
                    value=raw,
                    headers=[
                        ("dlq-reason", reason.encode()),
                        ("dlq-source", source.encode()),
                        ("dlq-service", b"restocker"),
                    ],
                )
                log.error("dead-lettered %s: %s", source, reason)
                metrics.DEAD_LETTERS.labels(SERVICE, InventoryLevel.topic).inc()
                metrics.MESSAGES.labels(SERVICE, InventoryLevel.topic, "dead_lettered").inc()
                continue
            stock = Stock(level.account, level.sku)
            if not level.account:
                # from an allocator before accounts: its stock has no owner to buy for, and
                # the same stock arrives again with its account
                metrics.MESSAGES.labels(SERVICE, InventoryLevel.topic, "ok").inc()
                continue
            if key != stock.key():
                # the table row is written under the body's stock, on the key's partition:
                # a record whose two disagree would land on a partition another worker owns
                message = stream.current_event.message
                source = f"{message.topic}/{message.partition}/{message.offset}"
                reason = "the record key is not the level's Stock.key()"
                await dead_letters.send(
                    key=key,
                    value=raw,
                    headers=[
                        ("dlq-reason", reason.encode()),
                        ("dlq-source", source.encode()),
                        ("dlq-service", b"restocker"),
                    ],
                )
                log.error("dead-lettered %s: %s", source, reason)
                metrics.DEAD_LETTERS.labels(SERVICE, InventoryLevel.topic).inc()
                metrics.MESSAGES.labels(SERVICE, InventoryLevel.topic, "dead_lettered").inc()
                continue
            buyer = purchasing()
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
            metrics.MESSAGES.labels(SERVICE, InventoryLevel.topic, "ok").inc()

    @app.timer(interval=settings.sweep_interval_s)
    async def sweep() -> None:
        # retries that are due, pending orders, and purchases restored after a restart
        if recovered() and app.consumer.assignment():
            purchasing().sweep()
        purchasing().report_unknown()  # one line for every unsellable stock found short

    lag_exported: set[TP] = set()

    @app.timer(interval=LAG_INTERVAL_S)
    async def consumer_lag() -> None:
        await export_consumer_lag(app.consumer, settings.app_id, InventoryLevel.topic, lag_exported)

    @app.task
    async def admin_server() -> None:
        rt = runtime.Runtime("restocker", settings, web.Application())
        rt.add_check("consumer", lambda: bool(app.consumer.assignment()))
        rt.add_check("tables", recovered)
        rt.app.add_routes(runtime.admin_routes(rt))
        add_stock_route(rt.app, settings, lambda: stock_report(ledger, settings, lead))
        runner = runtime.runner(rt.app)  # JSON errors, header timeout
        await runner.setup()
        await web.TCPSite(runner, settings.admin_host, settings.admin_port).start()
        held["runner"] = runner

    @app.on_before_shutdown.connect
    async def close(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        if "purchasing" in held:
            await held["purchasing"].close()
        if "session" in held:
            await held["session"].close()
        if "runner" in held:
            await held["runner"].cleanup()

    return app


def main() -> int:
    from faust.worker import Worker

    settings = RestockerSettings()
    app = create_app(settings)
    worker = Worker(app, loglevel=settings.log_level.lower(), quiet=True)
    worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
