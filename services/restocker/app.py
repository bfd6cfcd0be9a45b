"""The restocker: a faust-streaming app over `inventory.level` that buys before stock runs out.

Per-sku state lives in a faust table (changelog-backed, restored after a restart). The
decision to buy is written to the table before the supplier is called, and the client
reference makes the call idempotent, so a crash at any point never buys twice.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import aiohttp
import faust
from aiohttp import web
from prometheus_client import Counter

from services.restocker.policy import Policy, SkuState, decide, observe
from services.restocker.settings import RestockerSettings
from services.restocker.suppliers import ReloadlyLike, SupplierError
from shared import runtime
from shared.codecrypt import CodeCipher
from shared.events import CodesPurchased, InventoryLevel, event_id_for, utcnow

log = logging.getLogger(__name__)

PURCHASES = Counter(
    "tasleem_restocker_purchases_total", "Supplier purchases, by outcome", ["supplier", "outcome"]
)
CODES_BOUGHT = Counter("tasleem_restocker_codes_bought_total", "Codes bought", ["sku"])


def create_app(settings: RestockerSettings) -> faust.App:
    cipher = CodeCipher.from_settings(settings)
    policy = Policy(settings.reorder_point, settings.order_quantity, settings.resume_after_s)
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",  # tables are rebuilt from their changelog topics after a restart
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=1,
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
    skus = app.Table("skus", default=dict, partitions=settings.topic_partitions)
    session_holder: dict[str, Any] = {}

    async def supplier() -> ReloadlyLike:
        if "supplier" not in session_holder:
            session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=settings.supplier_timeout_s)
            )
            session_holder["session"] = session
            session_holder["supplier"] = ReloadlyLike(
                session,
                settings.supplier_base_url,
                settings.supplier_client_id,
                settings.supplier_client_secret.get_secret_value(),
                settings.supplier_products,
            )
        return session_holder["supplier"]

    @app.agent(levels_topic)
    async def restock(stream: Any) -> None:
        async for _key, raw in stream.items():
            try:
                level = InventoryLevel.model_validate_json(raw)
            except ValueError:
                log.error("dropping an inventory.level that does not parse")
                continue
            state = SkuState.from_dict(skus[level.sku])
            observe(state, level)
            purchase = decide(state, level.sku, policy, time.time())
            skus[level.sku] = state.to_dict()  # recorded before the supplier is called
            if purchase is None:
                continue
            source = await supplier()
            try:
                codes = await source.buy(level.sku, purchase.quantity, purchase.reference)
            except SupplierError as exc:
                PURCHASES.labels(source.name, "failed").inc()
                log.error("restock of %s failed (%s): stock may run out", level.sku, exc)
                continue
            event = CodesPurchased(
                event_id=event_id_for("codes.purchased", purchase.reference),
                sku=level.sku,
                supplier=source.name,
                reference=purchase.reference,
                codes=[cipher.seal(code, level.sku).to_text() for code in codes],
                purchased_at=utcnow(),
            )
            await purchased_topic.send(key=event.kafka_key(), value=event.to_bytes())
            PURCHASES.labels(source.name, "ok").inc()
            CODES_BOUGHT.labels(level.sku).inc(len(codes))
            log.info("bought %d codes of %s (ref %s)", len(codes), level.sku, purchase.reference)

    @app.task
    async def admin_server() -> None:
        rt = runtime.Runtime("restocker", settings, web.Application())
        rt.add_check("consumer", lambda: bool(app.consumer.assignment()))
        rt.app.add_routes(runtime.admin_routes(rt))
        runner = web.AppRunner(rt.app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, settings.admin_host, settings.admin_port).start()
        session_holder["runner"] = runner

    @app.on_before_shutdown.connect
    async def close(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        if "session" in session_holder:
            await session_holder["session"].close()
        if "runner" in session_holder:
            await session_holder["runner"].cleanup()

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
