"""The allocator: `order.paid` and `codes.purchased` in; `code.allocated`, `inventory.level` out."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from services.allocator import admin, handlers
from services.allocator.handlers import Applied
from services.allocator.levels import LevelReporter
from services.allocator.outbox import Relay
from services.allocator.settings import AllocatorSettings
from shared import kafka_clients, metrics, runtime
from shared.admin_auth import admin_guard
from shared.codecrypt import CodeCipher
from shared.db import RETRIABLE_DB_ERRORS, DbConn, connect_and_migrate, ping
from shared.events import (
    CodeAllocated,
    CodeRevoked,
    CodesPurchased,
    InventoryLevel,
    MessageSent,
    OrderCancelled,
    OrderPaid,
)
from shared.kafka import ConsumerLoop

SQL = Path(__file__).parent / "sql"
SERVICE = "allocator"
PUBLISHED = (CodeAllocated.topic, CodeRevoked.topic, InventoryLevel.topic)


CONSUMED = (OrderPaid.topic, CodesPurchased.topic, OrderCancelled.topic, MessageSent.topic)


@dataclass(frozen=True)
class KafkaClients(kafka_clients.ClientSet):
    """Every Kafka client the allocator makes, built (not started) in one place."""

    producer: AIOKafkaProducer  # the outbox relay, stock levels and dead letters
    consumer: AIOKafkaConsumer


def kafka(settings: AllocatorSettings) -> KafkaClients:
    return KafkaClients(
        producer=kafka_clients.producer(settings),
        consumer=kafka_clients.group_consumer(
            settings, *CONSUMED, group_id=settings.consumer_group
        ),
    )


def transactional(
    pool: asyncpg.Pool,
    relay: Relay,
    levels: LevelReporter,
    work: Callable[[Any, DbConn], Awaitable[Applied]],
) -> Callable[[list[Any]], Awaitable[None]]:
    """A batch handler: `work` in one transaction, then its events handed to the relay (the
    next batch does not wait for them: they are durable in the outbox) and its stock
    movements noted for the level reporter."""

    async def handle(batch: Sequence[Any]) -> None:
        async with pool.acquire() as conn, conn.transaction():
            applied = await work(batch, conn)
        await relay.submit(applied.rows)
        levels.record(applied.touched, applied.sold, applied.short)

    return handle


def paid_orders(
    pool: asyncpg.Pool, relay: Relay, levels: LevelReporter, settings: AllocatorSettings
) -> Callable[[list[OrderPaid]], Awaitable[None]]:
    """The order.paid handler: orders over the hard unit limit are refused (dead-lettered by
    the consumer loop, with the reason), the rest allocated in transactions of bounded size."""
    allocate = transactional(pool, relay, levels, handlers.allocate)

    async def handle(batch: Sequence[OrderPaid]) -> None:
        kept, refused = handlers.within_limit(batch, settings.max_units_per_order)
        for run in handlers.chunks(kept, settings.max_units_per_transaction):
            await allocate(run)
        if refused:
            # The loop then handles the batch again message by message (the orders kept are
            # found allocated and skipped) and dead-letters the refused one: counted there,
            # once, when it is alone.
            if len(batch) == 1:
                handlers.ORDERS_REFUSED.labels("too_many_units").inc()
            raise handlers.refusal(refused[0], settings.max_units_per_order)

    return handle


def init_series(consumed: Iterable[str]) -> None:
    """Each topic's consumer and publisher series at zero from the start, so a `rate()` of
    dead letters or retries has a series before the first one."""
    metrics.init_consumer_series(SERVICE, consumed)
    metrics.init_published_series(SERVICE, PUBLISHED)
    handlers.ORDERS_REFUSED.labels("too_many_units")


@contextlib.asynccontextmanager
async def lifespan(rt: runtime.Runtime) -> AsyncIterator[None]:
    settings = rt.settings
    assert isinstance(settings, AllocatorSettings)
    cipher = CodeCipher.from_settings(settings)
    # closed in reverse order of opening, each one only if it was opened
    async with contextlib.AsyncExitStack() as resources:
        pool = await connect_and_migrate(
            settings.database_url, "allocator", SQL, max_size=settings.db_pool_max
        )
        resources.push_async_callback(pool.close)
        clients = kafka(settings)
        resources.push_async_callback(clients.close)
        producer = clients.producer
        await producer.start()
        relay = Relay(pool, producer, SERVICE)
        levels = LevelReporter(
            pool,
            producer,
            interval_s=settings.level_interval_s,
            refresh_s=settings.level_refresh_s,
            service=SERVICE,
        )

        async def received(batch: Sequence[CodesPurchased], conn: DbConn) -> Applied:
            return await handlers.receive_codes(batch, conn, cipher)

        loop = ConsumerLoop(
            service=SERVICE,
            consumer=clients.consumer,
            producer=producer,
            retriable=RETRIABLE_DB_ERRORS,
            handlers={
                OrderPaid.topic: paid_orders(pool, relay, levels, settings),
                CodesPurchased.topic: transactional(pool, relay, levels, received),
                OrderCancelled.topic: transactional(pool, relay, levels, handlers.cancel),
                MessageSent.topic: transactional(pool, relay, levels, handlers.mark_delivered),
            },
        )
        init_series(loop.handlers)
        rt.app[admin.POOL] = pool
        rt.app[admin.CIPHER] = cipher
        rt.app[admin.RELAY] = relay
        rt.app[admin.LEVELS] = levels
        rt.app[admin.MAX_IMPORT] = settings.max_import_bytes
        rt.add_worker("inventory-levels", levels.run, levels.stop)
        rt.app.middlewares.append(
            admin_guard(SERVICE, settings.allocator_admin_tokens.get_secret_value())
        )
        rt.app.middlewares.append(admin.bad_input)  # after the guard: only for the authorised
        rt.app.add_routes(admin.routes())
        rt.add_worker("consumer", loop.run, loop.stop)
        rt.add_worker("outbox-relay", relay.run, relay.stop)
        rt.add_worker(
            "outbox-sweeper",
            lambda: relay.run_sweeper(
                settings.outbox_sweep_interval_s, settings.outbox_orphan_age_s
            ),
            relay.stop,
        )
        rt.add_check("consumer", lambda: loop.ready)
        rt.add_check("database", lambda: ping(pool))
        yield
        await relay.drain()  # what the consumer's last batch committed goes out now


def main() -> int:
    settings = AllocatorSettings()
    return runtime.run(SERVICE, settings, lifespan, client_max_size=settings.max_import_bytes)


if __name__ == "__main__":
    raise SystemExit(main())
