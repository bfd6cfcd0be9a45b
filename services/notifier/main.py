"""The notifier: `code.allocated` in, a message to the buyer, `message.sent` out.

This module is the only one that builds real provider adapters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import aiohttp
import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiolimiter import AsyncLimiter

from services.notifier import admin, receipts, recovery
from services.notifier.breaker import TRANSITIONS, CircuitBreaker, State
from services.notifier.delivery import Channels, Delivery, DeliveryPolicy
from services.notifier.email import SesEmail
from services.notifier.handlers import DELIVERY_SECONDS, deliver, resume, revoke
from services.notifier.journal import Coalescer
from services.notifier.policy import StoreDirectory
from services.notifier.providers import Failure, Provider
from services.notifier.resend import ResendLimits
from services.notifier.routing import ATTEMPTS
from services.notifier.settings import NotifierSettings
from services.notifier.sms import Twilio, Unifonic
from services.notifier.whatsapp import WhatsAppCloud
from shared import kafka_clients, metrics, runtime
from shared.admin_auth import admin_guard
from shared.codecrypt import CodeCipher
from shared.db import RETRIABLE_DB_ERRORS, connect_and_migrate, ping
from shared.events import (
    CodeAllocated,
    CodeRevoked,
    DeliveryReceipt,
    Event,
    MessageFailed,
    MessageSent,
)
from shared.kafka import ConsumerLoop, publish

SQL = Path(__file__).parent / "sql"
SERVICE = "notifier"
RETRY_SWEEP: tuple[type[BaseException], ...] = (OSError, *RETRIABLE_DB_ERRORS)
log = logging.getLogger(__name__)


def build_providers(
    settings: NotifierSettings, session: aiohttp.ClientSession
) -> dict[str, list[Provider]]:
    """The providers whose credentials are configured, by channel, in default order."""
    found: dict[str, list[Provider]] = {"whatsapp": [], "sms": [], "email": []}
    if settings.whatsapp_token.get_secret_value():
        found["whatsapp"].append(
            WhatsAppCloud(
                session,
                settings.whatsapp_base_url,
                settings.whatsapp_api_version,
                settings.whatsapp_token.get_secret_value(),
                settings.whatsapp_phone_number_id,
            )
        )
    if settings.unifonic_app_sid.get_secret_value():
        found["sms"].append(
            Unifonic(
                session,
                settings.unifonic_base_url,
                settings.unifonic_app_sid.get_secret_value(),
                settings.unifonic_sender,
            )
        )
    if settings.twilio_account_sid:
        found["sms"].append(
            Twilio(
                session,
                settings.twilio_base_url,
                settings.twilio_account_sid,
                settings.twilio_auth_token.get_secret_value(),
                settings.twilio_from,
                status_callback=f"{settings.gateway_public_url.rstrip('/')}/webhooks/twilio",
            )
        )
    if settings.ses_access_key:
        found["email"].append(
            SesEmail(
                session,
                settings.ses_base_url,
                settings.ses_sender,
                settings.ses_access_key,
                settings.ses_secret_key.get_secret_value(),
                settings.ses_region,
                settings.ses_configuration_set,
            )
        )
    return {channel: providers for channel, providers in found.items() if providers}


@dataclass(frozen=True)
class KafkaClients(kafka_clients.ClientSet):
    """Every Kafka client the notifier makes, built (not started) in one place."""

    producer: AIOKafkaProducer
    # code.allocated, code.revoked and delivery.receipt, in the notifier's group
    consumer: AIOKafkaConsumer
    store_config: AIOKafkaConsumer  # every replica reads every store's settings


def kafka(settings: NotifierSettings) -> KafkaClients:
    return KafkaClients(
        producer=kafka_clients.producer(settings),
        consumer=kafka_clients.group_consumer(
            settings,
            CodeAllocated.topic,
            CodeRevoked.topic,
            DeliveryReceipt.topic,
            group_id=settings.consumer_group,
            # co-partitioned: a part's receipts (keyed by its order key, like its allocation)
            # land on the member that sent it, so the resume waiting for one is woken at once
            partition_assignment_strategy=(RangePartitionAssignor,),
        ),
        store_config=kafka_clients.reader(settings, fetch_max_wait_ms=200),
    )


def rate_limiter(per_second: float) -> AsyncLimiter:
    """At most `per_second` on average, in bursts of at most a tenth of a second's worth."""
    burst = max(1.0, per_second / 10)
    return AsyncLimiter(burst, burst / per_second)


def delivery_policy(settings: NotifierSettings) -> DeliveryPolicy:
    return DeliveryPolicy(
        deadline_s=settings.message_deadline_s,
        attempts_per_provider=settings.attempts_per_provider,
        hold_s=settings.batch_hold_s,
        resume_after_s=settings.resume_after_s,
        receipt_wait_s=settings.receipt_wait_s,
    )


def build_channels(
    settings: NotifierSettings,
    providers: dict[str, list[Provider]],
    cipher: CodeCipher,
    stores: StoreDirectory,
) -> Channels:
    rates = {
        "whatsapp": settings.whatsapp_rate_per_s,
        "unifonic": settings.unifonic_rate_per_s,
        "twilio": settings.twilio_rate_per_s,
        "email": settings.ses_rate_per_s,
    }
    names = [p.name for channel in providers.values() for p in channel]
    return Channels(
        providers=providers,
        cipher=cipher,
        concurrency=asyncio.Semaphore(settings.max_concurrent_sends),
        stores=stores,
        whatsapp_template=settings.whatsapp_template,
        breakers={
            name: CircuitBreaker(name, settings.breaker_threshold, settings.breaker_cooldown_s)
            for name in names
        },
        limiters={name: rate_limiter(rates[name]) for name in names if name in rates},
    )


def init_series(channels: Channels) -> None:
    """The series of every configured channel and provider at zero from the start, so the
    delivery SLO's and the circuits' queries have a series before the first message (each
    provider's circuit gauge is set to 0 by its breaker, built with the channels)."""
    metrics.init_consumer_series(
        SERVICE, [CodeAllocated.topic, CodeRevoked.topic, DeliveryReceipt.topic]
    )
    metrics.init_published_series(SERVICE, [MessageSent.topic, MessageFailed.topic])
    for channel, providers in channels.providers.items():
        DELIVERY_SECONDS.labels(channel)
        for provider in providers:
            channels.breaker(provider.name)
            for outcome in ("accepted", *get_args(Failure)):
                ATTEMPTS.labels(provider.name, outcome)
            for state in State:
                TRANSITIONS.labels(provider.name, state.name.lower())
            for status in get_args(receipts.Status):
                receipts.RECEIPTS.labels(provider.name, status)
            receipts.ACCEPTED_TO_DELIVERED.labels(provider.name)
            for resolution in recovery.RESOLUTIONS:
                recovery.INTERRUPTED.labels(provider.name, resolution)


async def sweep(pool: asyncpg.Pool, delivery: Delivery, older_than_s: float) -> int:
    """Resume parts left unfinished (a crash after their batch was committed).

    The stale parts are claimed, not just read: touching `updated_at` in the same statement
    makes them fresh again, so a second replica sweeping at the same moment (or a redelivered
    batch) finds nothing stale and leaves each part to the one replica that claimed it."""
    rows = await pool.fetch(
        """
        UPDATE deliveries d SET updated_at = now()
        FROM (
            SELECT allocation_event_id FROM deliveries
            WHERE status IN ('pending', 'sending') AND event IS NOT NULL
              AND updated_at < now() - make_interval(secs => $1)
            ORDER BY created_at LIMIT 500
            FOR UPDATE SKIP LOCKED
        ) AS stale
        WHERE d.allocation_event_id = stale.allocation_event_id
        RETURNING d.event
        """,
        older_than_s,
    )
    started = 0
    for row in rows:
        event = CodeAllocated.model_validate_json(row["event"])
        if event.event_id in delivery.inflight.tasks:
            continue
        inflight = delivery.inflight
        inflight.publish_later(inflight.start(resume(event, pool, delivery), event.event_id))
        started += 1
    if started:
        log.warning("resuming %d unfinished deliveries", started)
    return started


@contextlib.asynccontextmanager
async def lifespan(rt: runtime.Runtime) -> AsyncIterator[None]:
    settings = rt.settings
    assert isinstance(settings, NotifierSettings)
    cipher = CodeCipher.from_settings(settings)
    stores = StoreDirectory()
    # closed in reverse order of opening, each one only if it was opened
    async with contextlib.AsyncExitStack() as resources:
        pool = await connect_and_migrate(
            settings.database_url, "notifier", SQL, max_size=settings.db_pool_max
        )
        resources.push_async_callback(pool.close)
        clients = kafka(settings)
        resources.push_async_callback(clients.close)
        producer = clients.producer
        session = await resources.enter_async_context(
            aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=settings.provider_timeout_s),
                connector=aiohttp.TCPConnector(limit=settings.max_concurrent_sends),
            )
        )
        channels = build_channels(settings, build_providers(settings, session), cipher, stores)
        init_series(channels)

        async def publish_events(events: list[Event]) -> None:
            await publish(producer, events, SERVICE)

        async def publish_batch(reports: list[Event]) -> list[None]:
            await publish_events(reports)
            return [None] * len(reports)

        # reports of parts that outlived their batch's hold, published together as they finish
        late_reports: Coalescer[Event, None] = Coalescer(publish_batch)

        async def publish_late(events: list[Event]) -> None:
            await asyncio.gather(*(late_reports.submit(e) for e in events))

        delivery = Delivery.over(pool, channels, delivery_policy(settings), on_late=publish_late)
        # what is in flight finishes first, while the session, producer and pool are open
        resources.push_async_callback(drain, delivery, settings.shutdown_grace_s)
        await producer.start()

        async def on_allocated(batch: Sequence[CodeAllocated]) -> None:
            await publish(producer, await deliver(batch, pool, delivery), SERVICE)

        async def on_revoked(batch: Sequence[CodeRevoked]) -> None:
            await revoke(batch, pool, delivery)

        async def on_receipts(batch: Sequence[DeliveryReceipt]) -> None:
            await receipts.apply(batch, pool, delivery)

        loop = ConsumerLoop(
            service=SERVICE,
            consumer=clients.consumer,
            producer=producer,
            retriable=RETRIABLE_DB_ERRORS,
            # deliveries are idempotent (claimed by event id), so batches may overlap (see the
            # setting); a revocation still takes effect before any later allocation is sent
            overlap=settings.batches_in_flight,
            barriers=[CodeRevoked.topic],
            handlers={
                CodeAllocated.topic: on_allocated,
                CodeRevoked.topic: on_revoked,
                DeliveryReceipt.topic: on_receipts,
            },
        )
        stopping = asyncio.Event()

        async def sweeper() -> None:
            while not stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), min(settings.resume_after_s / 4, 15))
                if not stopping.is_set():
                    try:
                        await sweep(pool, delivery, settings.resume_after_s)
                        await receipts.reapply(pool, delivery)
                    except RETRY_SWEEP as exc:
                        log.warning("resume sweep failed: %r", exc)

        rt.add_worker("consumer", loop.run, loop.stop)
        rt.add_worker("store-config", lambda: stores.follow(clients.store_config), stores.stop)
        rt.add_worker("sweeper", sweeper, stopping.set)
        rt.add_check("consumer", lambda: loop.ready)
        # without every store's settings a message would go out on the default channels
        rt.add_check("store-config", lambda: stores.ready)
        rt.add_check("database", lambda: ping(pool))
        rt.app.middlewares.append(
            admin_guard(SERVICE, settings.notifier_admin_tokens.get_secret_value())
        )
        limits = ResendLimits(
            per_order=settings.resend_per_order_per_hour,
            per_caller=settings.resend_per_caller_per_hour,
        )
        rt.app[admin.POOL] = pool
        rt.app[admin.DELIVERY] = delivery
        rt.app[admin.PUBLISH] = publish_events
        rt.app[admin.LIMITS] = limits
        rt.app.add_routes(admin.ROUTES)
        yield


async def drain(delivery: Delivery, grace_s: float) -> None:
    """Let messages in flight finish; what is cut off stays 'sending' and is resumed later.
    Then their late reports are published before the producer closes: a part already
    'accepted' is never swept again, so a lost report would leave its order undelivered."""
    pending = list(delivery.inflight.tasks.values())
    if pending:
        _, late = await asyncio.wait(pending, timeout=grace_s)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
    await asyncio.sleep(0)  # the finished messages' callbacks start their reports
    reports = delivery.inflight.late_reports()
    if reports:
        await asyncio.wait(reports, timeout=grace_s)


def main() -> int:
    return runtime.run(SERVICE, NotifierSettings(), lifespan)


if __name__ == "__main__":
    raise SystemExit(main())
