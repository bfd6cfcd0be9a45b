"""The restocker: a faust-streaming app over `inventory.level` that buys before stock runs out.

State per stock (an account's sku: its stock, sales rate, the purchase in flight, spend) lives
in the faust table `skus`, backed by its changelog topic and restored after a restart. The
agent only folds levels into the table and decides (handlers.py); purchases run in per-stock
tasks (purchasing.py), so a slow supplier never stalls the stream. The table is keyed by the
same bytes as `inventory.level` (`Stock.key()`: account and sku) and partitioned like it (the
producer's default partitioner on the same key), which is what lets the purchase tasks and the
sweep timer write to it outside the stream. Each account's stock is bought for separately,
from suppliers whose products map per sku, and its codes go to that account's vault.

This module is the only one that builds the restocker's real adapters. Faust runs the event
loop, so the resources are opened inside it (the admin server at start, the suppliers' session
on the first level) and closed together, in reverse, before faust shuts down.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import aiohttp
import faust
from aiohttp import web
from faust.types import TP

from services.restocker import handlers
from services.restocker.handlers import (
    LAG_INTERVAL_S,
    SERVICE,
    Refused,
    TableLedger,
    add_stock_route,
    export_consumer_lag,
    init_series,
    lead_times,
    stock_report,
)
from services.restocker.policy import Purchase
from services.restocker.purchasing import Purchasing
from services.restocker.settings import RestockerSettings
from services.restocker.suppliers import Delivery, Supplier, build
from shared import kafka_clients, metrics, runtime
from shared.codecrypt import CodeCipher
from shared.events import CodesPurchased, InventoryLevel, Stock, dlq_topic, event_id_for, utcnow

log = logging.getLogger(__name__)


def kafka(settings: RestockerSettings) -> faust.App:
    """The faust app: it builds its own Kafka clients, from the broker settings it is given."""
    return faust.App(
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


class Resources:
    """What the running restocker holds open, under one exit stack: closed in reverse order
    of opening, and nothing opened is left open when a later step fails."""

    def __init__(self, app: faust.App, settings: RestockerSettings, ledger: TableLedger):
        self.app = app
        self.settings = settings
        self.ledger = ledger
        self.cipher = CodeCipher.from_settings(settings)
        self.suppliers = settings.supplier_list()
        self.lead = lead_times(self.suppliers)
        self.stack = contextlib.AsyncExitStack()
        self._purchasing: Purchasing | None = None
        self._purchased = app.topic(
            CodesPurchased.topic, key_serializer="raw", value_serializer="raw"
        )

    def purchasing(self) -> Purchasing:
        """The suppliers' adapters, made on first use: inside faust's running loop, once its
        producer exists."""
        if self._purchasing is None:
            session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.settings.supplier_timeout_s)
            )
            self.stack.push_async_callback(session.close)
            suppliers: list[Supplier] = [build(c, session) for c in self.suppliers]
            purchasing = Purchasing(
                self.ledger,
                suppliers,
                self.publish,
                self.settings.limits(),
                durable=self.app.producer.flush,
                known_skus=self.settings.sku_policies,
            )
            self.stack.push_async_callback(purchasing.close)
            self._purchasing = purchasing
        return self._purchasing

    async def publish(
        self, stock: Stock, supplier: str, purchase: Purchase, delivery: Delivery
    ) -> None:
        event = CodesPurchased(
            event_id=event_id_for("codes.purchased", purchase.reference),
            account=stock.account,  # bought for this account: its vault gets them
            sku=stock.sku,
            supplier=supplier,
            reference=purchase.reference,
            codes=[self.cipher.seal(code, stock.sku).to_text() for code in delivery.codes],
            unit_cost=str(delivery.unit_cost) if delivery.unit_cost is not None else None,
            purchased_at=utcnow(),
        )
        sent = await self._purchased.send(key=event.kafka_key(), value=event.to_bytes())
        await sent  # the broker has it before the purchase is marked published

    def recovered(self) -> bool:
        recovery = self.app.tables.recovery  # type: ignore[attr-defined]
        return bool(recovery.completed.is_set()) and not self.app.in_recovery

    async def serve_admin(self) -> None:
        """`/healthz`, `/readyz`, `/metrics` and `/stock` on the admin port."""
        rt = runtime.Runtime(SERVICE, self.settings, web.Application())
        rt.add_check("consumer", lambda: bool(self.app.consumer.assignment()))
        rt.add_check("tables", self.recovered)
        rt.app.add_routes(runtime.admin_routes(rt))
        add_stock_route(
            rt.app, self.settings, lambda: stock_report(self.ledger, self.settings, self.lead)
        )
        admin = runtime.runner(rt.app)  # JSON errors, header timeout
        await admin.setup()
        self.stack.push_async_callback(admin.cleanup)
        await web.TCPSite(admin, self.settings.admin_host, self.settings.admin_port).start()


def create_app(settings: RestockerSettings) -> faust.App:
    """The faust app with its topics, table, agent and timers, and the resources they use."""
    app = kafka(settings)
    levels_topic = app.topic(
        InventoryLevel.topic,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.topic_partitions,
    )
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
    held = Resources(app, settings, TableLedger(skus))
    init_series(held.suppliers)

    @app.agent(levels_topic)
    async def restock(stream: Any) -> None:
        async for key, raw in stream.items():
            try:
                handlers.restock(key, raw, held.ledger, held.purchasing(), settings, held.lead)
            except Refused as exc:
                message = stream.current_event.message
                source = f"{message.topic}/{message.partition}/{message.offset}"
                await dead_letters.send(
                    key=key,
                    value=raw,
                    headers=[
                        ("dlq-reason", str(exc).encode()),
                        ("dlq-source", source.encode()),
                        ("dlq-service", SERVICE.encode()),
                    ],
                )
                log.error("dead-lettered %s: %s", source, exc)
                metrics.DEAD_LETTERS.labels(SERVICE, InventoryLevel.topic).inc()
                metrics.MESSAGES.labels(SERVICE, InventoryLevel.topic, "dead_lettered").inc()
                continue
            metrics.MESSAGES.labels(SERVICE, InventoryLevel.topic, "ok").inc()

    @app.timer(interval=settings.sweep_interval_s)
    async def sweep() -> None:
        # retries that are due, pending orders, and purchases restored after a restart
        if held.recovered() and app.consumer.assignment():
            held.purchasing().sweep()
        held.purchasing().report_unknown()  # one line for every unsellable stock found short

    lag_exported: set[TP] = set()

    @app.timer(interval=LAG_INTERVAL_S)
    async def consumer_lag() -> None:
        await export_consumer_lag(app.consumer, settings.app_id, InventoryLevel.topic, lag_exported)

    @app.task
    async def admin_server() -> None:
        await held.serve_admin()

    @app.on_before_shutdown.connect
    async def close(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        await held.stack.aclose()

    return app


def main() -> int:
    from faust.worker import Worker

    settings = RestockerSettings()
    worker = Worker(create_app(settings), loglevel=settings.log_level.lower(), quiet=True)
    worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
