"""Kafka plumbing shared by the services: producer factory, topic set-up, the consumer loop.

Delivery is at-least-once: offsets are committed only after a batch's effects are durable,
and every handler is idempotent (it records processed event ids with its effect).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaError,
    TopicAlreadyExistsError,
)
from aiokafka.helpers import create_ssl_context
from pydantic import ValidationError

from shared import metrics
from shared.events import EVENT_BY_TOPIC, Event, dlq_topic, validation_summary
from shared.settings import ServiceSettings

log = logging.getLogger(__name__)


class PermanentError(Exception):
    """Retrying cannot help: the message goes to the dead-letter topic with this reason."""


class RetriableError(Exception):
    """A dependency is down or busy: the batch is retried, uncommitted, with backoff."""


def connection_options(settings: ServiceSettings) -> dict[str, Any]:
    """Bootstrap, and TLS/SASL when the cluster asks for them: the same for every client."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "security_protocol": settings.kafka_security_protocol,
    }
    if "SSL" in settings.kafka_security_protocol:
        options["ssl_context"] = create_ssl_context(cafile=settings.kafka_ssl_cafile or None)
    if settings.kafka_security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return options


def make_producer(settings: ServiceSettings, **overrides: Any) -> AIOKafkaProducer:
    """A producer that returns only once every in-sync replica has the record."""
    options: dict[str, Any] = {
        **connection_options(settings),
        "acks": "all",
        # The embedded broker cannot do InitProducerId; dedupe happens in consumers instead.
        "enable_idempotence": False,
        "linger_ms": 2,
        "request_timeout_ms": 10000,
        "max_batch_size": 256 * 1024,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


async def publish(producer: AIOKafkaProducer, events: Iterable[Event], service: str = "") -> None:
    """Send events without awaiting each one, then wait until the broker acknowledged all."""
    pending = []
    for event in events:
        pending.append(
            (event.topic, await producer.send(event.topic, event.to_bytes(), key=event.kafka_key()))
        )
    for topic, future in pending:
        await future
        metrics.EVENTS_PUBLISHED.labels(service, topic).inc()


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    compacted: bool = False


def topic_specs(partitions: int = 4) -> list[TopicSpec]:
    """Every topic of the system, with its dead-letter twin."""
    specs = []
    for topic in EVENT_BY_TOPIC:
        specs.append(TopicSpec(topic, partitions, compacted=topic == "store.config"))
        specs.append(TopicSpec(dlq_topic(topic), 1))
    return specs


async def ensure_topics(bootstrap: str, specs: Sequence[TopicSpec]) -> None:
    """Create missing topics; faust tables need their source's partition count to be exact."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                s.name,
                num_partitions=s.partitions,
                replication_factor=1,
                topic_configs={"cleanup.policy": "compact"} if s.compacted else {},
            )
            for s in specs
            if s.name not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
    finally:
        await admin.close()


Handler = Callable[[list[Any]], Awaitable[None]]


class ConsumerLoop:
    """Consumes topics in batches and hands each topic's parsed events to its handler.

    - A message that does not parse is poison: dead-lettered with the reason, never retried.
    - A handler that raises `RetriableError` (or a broker/database connection error) gets the
      same batch again after a backoff; nothing is committed meanwhile.
    - A handler that raises anything else on a batch is retried message by message, so one
      bad message is isolated and dead-lettered while the rest go through.
    - Offsets are committed after the handlers return: at-least-once.
    """

    def __init__(
        self,
        *,
        service: str,
        settings: ServiceSettings,
        group_id: str,
        handlers: dict[str, Handler],
        producer: AIOKafkaProducer,
        retriable: tuple[type[BaseException], ...] = (),
        max_backoff_s: float = 5.0,
        consumer_options: dict[str, Any] | None = None,
    ):
        self.service = service
        self.group_id = group_id
        self.handlers = handlers
        self.producer = producer
        self.retriable = (RetriableError, KafkaError, OSError, *retriable)
        self.max_backoff_s = max_backoff_s
        self.max_batch = settings.kafka_max_batch
        self._stopping = asyncio.Event()
        self.consumer = AIOKafkaConsumer(
            *handlers,
            **connection_options(settings),
            group_id=group_id,
            enable_auto_commit=False,  # commit after processing: at-least-once
            auto_offset_reset="earliest",
            session_timeout_ms=settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
            fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
            max_poll_records=settings.kafka_max_batch,
            **(consumer_options or {}),
        )
        self.ready = False

    def stop(self) -> None:
        """Stop intake; the batch in hand is finished and committed."""
        self._stopping.set()

    async def run(self) -> None:
        await self.consumer.start()
        try:
            self.ready = True
            while not self._stopping.is_set():
                batch = await self.consumer.getmany(timeout_ms=200, max_records=self.max_batch)
                if batch:
                    await self._handle(batch)
                    self._export_lag(batch)
        finally:
            self.ready = False
            await self.consumer.stop()

    async def _handle(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        by_topic: dict[str, list[ConsumerRecord]] = defaultdict(list)
        for tp, records in batch.items():
            by_topic[tp.topic].extend(records)
        for topic, records in by_topic.items():
            await self._handle_topic(topic, records)
        try:
            await self.consumer.commit(
                {tp: records[-1].offset + 1 for tp, records in batch.items()}
            )
        except (CommitFailedError, IllegalStateError) as exc:
            # The partitions moved to another member mid-batch. It will get these messages
            # again, and the handlers' idempotence makes that harmless.
            log.warning("commit after a rebalance was refused: %r", exc)

    async def _handle_topic(self, topic: str, records: list[ConsumerRecord]) -> None:
        model = EVENT_BY_TOPIC[topic]
        parsed: list[tuple[ConsumerRecord, Event]] = []
        for record in records:
            try:
                parsed.append((record, model.model_validate_json(record.value)))
            except ValidationError as exc:
                await self._dead_letter(
                    record, f"invalid {model.__name__}: {validation_summary(exc)}"
                )
        if not parsed:
            return
        metrics.BATCH_SIZE.labels(self.service, topic).observe(len(parsed))
        started = time.perf_counter()
        try:
            await self._with_retries(topic, [event for _, event in parsed])
        except Exception as exc:
            log.warning(
                "batch of %d on %s failed permanently (%s): isolating the bad messages",
                len(parsed),
                topic,
                type(exc).__name__,
            )
            for record, event in parsed:
                try:
                    await self._with_retries(topic, [event])
                except Exception as single_exc:
                    await self._dead_letter(record, f"{type(single_exc).__name__}: {single_exc}")
                    continue
                metrics.MESSAGES.labels(self.service, topic, "ok").inc()
        else:
            metrics.MESSAGES.labels(self.service, topic, "ok").inc(len(parsed))
        metrics.HANDLER_SECONDS.labels(self.service, topic).observe(time.perf_counter() - started)

    async def _with_retries(self, topic: str, events: list[Event]) -> None:
        """Run the handler; retriable failures repeat with capped exponential backoff."""
        backoff = 0.05
        while True:
            try:
                await self.handlers[topic](events)
                return
            except self.retriable as exc:
                if self._stopping.is_set():
                    raise
                metrics.RETRIES.labels(self.service, topic).inc()
                log.warning("retriable error on %s, retrying in %.2fs: %r", topic, backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)

    async def _dead_letter(self, record: ConsumerRecord, reason: str) -> None:
        headers = [
            *(record.headers or ()),
            ("dlq-reason", reason[:1000].encode()),
            ("dlq-source", f"{record.topic}/{record.partition}/{record.offset}".encode()),
            ("dlq-service", self.service.encode()),
        ]
        await self.producer.send_and_wait(
            dlq_topic(record.topic), record.value, key=record.key, headers=headers
        )
        metrics.DEAD_LETTERS.labels(self.service, record.topic).inc()
        metrics.MESSAGES.labels(self.service, record.topic, "dead_lettered").inc()
        log.error(
            "dead-lettered %s/%d@%d: %s", record.topic, record.partition, record.offset, reason
        )

    def _export_lag(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        for tp in batch:
            highwater = self.consumer.highwater(tp)
            if highwater is None:
                continue
            lag = max(highwater - (batch[tp][-1].offset + 1), 0)
            metrics.CONSUMER_LAG.labels(self.service, self.group_id, tp.topic, tp.partition).set(
                lag
            )
