"""The restocker: a faust-streaming app over `inventory.level` that buys before stock runs out.

Per-sku state (stock, sales rate, the purchase in flight, spend) lives in the faust table
`skus`, backed by its changelog topic and restored after a restart. The agent only folds levels
into the table and decides; purchases run in per-sku tasks (purchasing.py), so a slow supplier
never stalls the stream. The table is keyed by the sku's bytes and partitioned like
`inventory.level` (the producer's default partitioner on the same key), which is what lets the
purchase tasks and the sweep timer write to it outside the stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import aiohttp
import faust
import faust.auth
from aiohttp import web
from aiokafka.helpers import create_ssl_context
from prometheus_client import Gauge

from services.restocker.policy import Purchase, SkuState, cover_minutes, decide, observe
from services.restocker.purchasing import Ledger, Purchasing
from services.restocker.settings import RestockerSettings
from services.restocker.suppliers import Delivery, Supplier, build
from shared import runtime
from shared.codecrypt import CodeCipher
from shared.events import CodesPurchased, InventoryLevel, dlq_topic, event_id_for, utcnow

log = logging.getLogger(__name__)

COVER = Gauge("tasleem_restocker_cover_minutes", "Minutes of sales the stock covers", ["sku"])
SALES_RATE = Gauge("tasleem_restocker_sales_per_minute", "Weighted sales rate", ["sku"])


class TableLedger:
    """The faust table seen as sku -> SkuState."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def get(self, sku: str) -> SkuState:
        return SkuState.from_dict(self.table.get(sku.encode()))

    def put(self, sku: str, state: SkuState) -> None:
        self.table[sku.encode()] = state.to_dict()

    def skus(self) -> Iterable[str]:
        return [key.decode() for key in self.table]


def stock_report(ledger: Ledger, settings: RestockerSettings, lead: dict[str, float]) -> dict:
    """What GET /stock shows: per sku its cover in minutes and whether it is `stock.low`."""
    rows = []
    for sku in sorted(ledger.skus()):
        state = ledger.get(sku)
        cover = cover_minutes(state)
        policy = settings.policy(sku, lead.get(sku, 30.0))
        purchase = state.purchase
        rows.append(
            {
                "sku": sku,
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
    return {"skus": rows, "stock_low": [row["sku"] for row in rows if row["alert"]]}


def kafka_credentials(settings: RestockerSettings) -> faust.auth.Credentials | None:
    """The same TLS/SASL settings the aiokafka services use, in faust's terms."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = create_ssl_context(cafile=settings.kafka_ssl_cafile or None)
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=settings.kafka_sasl_password.get_secret_value(),
        ssl_context=context if protocol == "SASL_SSL" else None,
        mechanism=settings.kafka_sasl_mechanism,
    )


def create_app(settings: RestockerSettings) -> faust.App:
    cipher = CodeCipher.from_settings(settings)
    supplier_settings = settings.supplier_list()
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        broker_credentials=kafka_credentials(settings),
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

    async def publish(sku: str, supplier: str, purchase: Purchase, delivery: Delivery) -> None:
        event = CodesPurchased(
            event_id=event_id_for("codes.purchased", purchase.reference),
            sku=sku,
            supplier=supplier,
            reference=purchase.reference,
            codes=[cipher.seal(code, sku).to_text() for code in delivery.codes],
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
                ledger, suppliers, publish, settings.limits(), durable=app.producer.flush
            )
        return held["purchasing"]

    def recovered() -> bool:
        recovery = app.tables.recovery  # type: ignore[attr-defined]
        return bool(recovery.completed.is_set()) and not app.in_recovery

    @app.agent(levels_topic)
    async def restock(stream: Any) -> None:
        async for key, raw in stream.items():
            try:
                level = InventoryLevel.model_validate_json(raw)
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
                continue
            policy = settings.policy(level.sku, lead.get(level.sku, 30.0))
            state = ledger.get(level.sku)
            observe(state, level, policy)
            purchase = decide(state, level.sku, policy, time.time())
            ledger.put(level.sku, state)  # recorded before any supplier hears of it
            cover = cover_minutes(state)
            COVER.labels(level.sku).set(-1 if cover is None else cover)
            SALES_RATE.labels(level.sku).set(state.rate * 60)
            if purchase is not None:
                log.info(
                    "buying %d of %s (ref %s): %d available, %d backordered, %.1f/min",
                    purchase.quantity,
                    level.sku,
                    purchase.reference,
                    state.available,
                    state.backordered,
                    state.rate * 60,
                )
            purchasing().kick(level.sku)

    @app.timer(interval=settings.sweep_interval_s)
    async def sweep() -> None:
        # retries that are due, pending orders, and purchases restored after a restart
        if recovered() and app.consumer.assignment():
            purchasing().sweep()

    @app.task
    async def admin_server() -> None:
        rt = runtime.Runtime("restocker", settings, web.Application())
        rt.add_check("consumer", lambda: bool(app.consumer.assignment()))
        rt.add_check("tables", recovered)
        rt.app.add_routes(runtime.admin_routes(rt))

        async def stock(_: web.Request) -> web.Response:
            return web.json_response(stock_report(ledger, settings, lead))

        rt.app.router.add_get("/stock", stock)
        runner = web.AppRunner(rt.app, access_log=None, handle_signals=False)
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
