"""Kafka plumbing shared by the services: publishing, topic set-up, the consumer loop.

Clients themselves are built in `shared.kafka_clients`, nowhere else.

Delivery is at-least-once: offsets are committed only after a batch's effects are durable,
and every handler is idempotent (it records processed event ids with its effect).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaError,
    TopicAlreadyExistsError,
)
from aiokafka.partitioner import DefaultPartitioner
from pydantic import ValidationError

from shared import kafka_clients, metrics, topology
from shared.events import (
    EVENT_BY_TOPIC,
    Event,
    UnsupportedVersion,
    dlq_topic,
    validation_summary,
)
from shared.failures import Failure, Refused, Unavailable
from shared.settings import KafkaSettings

log = logging.getLogger(__name__)


class PermanentError(Refused):
    """Retrying cannot help: the message goes to the dead-letter topic with this reason."""

    code = "permanent"


class RetriableError(Unavailable):
    """A dependency is down or busy: the batch is retried, uncommitted, with backoff."""

    code = "retriable"


class _Interrupted(Exception):
    """The loop was stopped while a batch waited out a retriable failure: the batch is left
    uncommitted for the next owner, never isolated into dead letters."""


def dead_letter_reason(exc: BaseException) -> str:
    """`code: detail` for our own failures; the exception's type and text for anything else."""
    if isinstance(exc, Failure):
        return exc.summary()
    return f"{type(exc).__name__}: {exc}"


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


async def send_many(
    producer: AIOKafkaProducer, records: Sequence[tuple[str, bytes, bytes]]
) -> None:
    """Send (topic, key, value) records as whole batches, one per partition, and wait until
    the broker acknowledged them all.

    For thousands of records at once (the allocator's outbox relay): `producer.send` costs
    ~15 µs of Python per record for its future and accumulator bookkeeping, a batch append
    ~1 µs (2,000 records: 34 ms of CPU → 11 ms, most of what is left is murmur2).
    Partitions are chosen exactly as `send` chooses them (the default murmur2 partitioner),
    so an order's events stay on one partition either way."""
    by_partition: dict[tuple[str, int], list[tuple[bytes, bytes]]] = defaultdict(list)
    partitions: dict[str, list[int]] = {}
    for topic, key, value in records:
        if topic not in partitions:
            partitions[topic] = sorted(await producer.partitions_for(topic))
        partition = _PARTITIONER(key, partitions[topic], None)
        by_partition[topic, partition].append((key, value))
    futures = []
    for (topic, partition), pending in by_partition.items():
        batch = producer.create_batch()
        for key, value in pending:
            if batch.append(key=key, value=value, timestamp=None) is None:  # full
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)  # a first record always fits
        futures.append(await producer.send_batch(batch, topic, partition=partition))
    await asyncio.gather(*futures)


_PARTITIONER = DefaultPartitioner()


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    compacted: bool = False


def topic_specs(partitions: int = 4) -> list[TopicSpec]:
    """The topology's topics for a broker of our own (the embedded one, a test's): the
    pipeline's with `partitions`, dead-letter topics with one. faust creates its own."""
    return [
        TopicSpec(t.name, 1 if t.name.endswith(".dlq") else partitions, t.compacted)
        for t in topology.TOPICS
        if not t.internal
    ]


async def ensure_topics(settings: KafkaSettings, specs: Sequence[TopicSpec]) -> None:
    """Create missing topics; faust tables need their source's partition count to be exact.
    (In Kubernetes the topic operator creates them from the KafkaTopics instead.)"""
    admin = kafka_clients.admin(settings)
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


@dataclass
class _Parsed:
    """A fetched batch, parsed: events per topic, poison messages with their reasons, the
    offsets to commit once handled, and the lag seen when it was fetched."""

    offsets: dict[TopicPartition, int]
    events: dict[str, list[tuple[ConsumerRecord, Event]]] = field(default_factory=dict)
    poison: list[tuple[ConsumerRecord, str]] = field(default_factory=list)
    lag: dict[TopicPartition, int] = field(default_factory=dict)


class ConsumerLoop:
    """Consumes topics in batches and hands each topic's parsed events to its handler.

    - A message that does not parse is poison: dead-lettered with the reason, never retried.
    - A handler that raises a `Failure` whose fate is retry (`RetriableError`, a supplier that
      is busy …) or a broker/database connection error gets the same batch again after a
      backoff; nothing is committed meanwhile.
    - A handler that raises anything else on a batch is retried message by message, so one
      bad message is isolated and dead-lettered (`code: detail` for a `Failure`) while the
      rest go through.
    - Offsets are committed after the handlers return: at-least-once.
    """

    def __init__(
        self,
        *,
        service: str,
        consumer: AIOKafkaConsumer,
        handlers: dict[str, Handler],
        producer: AIOKafkaProducer,
        retriable: tuple[type[BaseException], ...] = (),
        max_backoff_s: float = 5.0,
        overlap: int = 1,
        barriers: Iterable[str] = (),
    ):
        """`consumer` is a group consumer from `kafka_clients.group_consumer`, subscribed to
        exactly the handlers' topics (the service's wiring builds it, so that every client a
        service makes is built in one place).

        `overlap`: how many batches are handled at once. With 1 a batch is fetched only once
        the one before it was handled. More lets a service whose handlers wait long on each
        batch (the notifier holds one while its messages go out) take the next batch
        meanwhile, instead of leaving it queued behind the wait; only for handlers that are
        idempotent and need no order across batches. Offsets are committed in batch order
        either way: a batch's only once it and every batch before it were handled.

        `barriers`: topics whose events must take effect before any later batch starts (the
        notifier's `code.revoked`: a revocation is heard before the allocations after it). A
        batch holding one is handled before the next batch is taken."""
        if overlap < 1:
            raise ValueError(f"overlap must be at least 1, not {overlap}")
        subscribed = consumer.subscription()
        if subscribed != set(handlers):
            raise ValueError(
                f"consumer subscribes {sorted(subscribed)}, handlers {sorted(handlers)}"
            )
        self.service = service
        self.group_id: str = consumer._group_id
        self.handlers = handlers
        self.producer = producer
        self.retriable = (RetriableError, KafkaError, OSError, *retriable)
        self.max_backoff_s = max_backoff_s
        self.overlap = overlap
        self.barriers = frozenset(barriers)
        self.max_batch: int = consumer._max_poll_records
        self._stopping = asyncio.Event()
        self.consumer = consumer
        self.ready = False
        self._committing: asyncio.Task[None] | None = None
        self._uncommitted: dict[TopicPartition, int] = {}  # handled, not yet committed

    def stop(self) -> None:
        """Stop intake; the batches in hand are finished and committed."""
        self._stopping.set()

    async def run(self) -> None:
        """Handle batches while the next one is fetched and parsed: a reader task stays one
        batch ahead, so parsing overlaps the handler's waits on the database and broker; and
        up to `overlap` batches are handled at once, committed in order as they finish."""
        await self.consumer.start()
        ahead: asyncio.Queue[_Parsed] = asyncio.Queue(maxsize=1)
        reader = asyncio.create_task(self._read(ahead), name=f"{self.service}-reader")
        stopped = asyncio.create_task(self._stopping.wait())
        in_hand: deque[tuple[asyncio.Task[None], _Parsed]] = deque()  # oldest first
        next_batch: asyncio.Task[_Parsed] | None = None
        stopped_cleanly = False
        try:
            self.ready = True
            try:
                while True:
                    if next_batch is None and self._room(in_hand):
                        next_batch = asyncio.create_task(ahead.get())
                    waits: set[asyncio.Future[Any]] = {reader, stopped}
                    if next_batch is not None:
                        waits.add(next_batch)
                    waits.update(task for task, _ in in_hand)
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                    self._commit_finished(in_hand)
                    if next_batch is not None and next_batch.done():
                        batch = next_batch.result()
                        next_batch = None
                        in_hand.append((asyncio.create_task(self._handle(batch)), batch))
                        continue
                    if reader.done():
                        reader.result()  # raises what killed the reader
                    if stopped.done():
                        break
                # stopping: the batches in hand are finished and committed
                while in_hand:
                    await asyncio.wait([in_hand[0][0]])
                    self._commit_finished(in_hand)
                stopped_cleanly = True
            except _Interrupted:
                # a batch was waiting out an outage: it and any batch after it stay
                # uncommitted, for this group's next owner of their partitions
                log.info("stopped while a batch was retrying: it stays uncommitted")
        finally:
            self.ready = False
            stopped.cancel()
            reader.cancel()
            if next_batch is not None:
                next_batch.cancel()
            if not stopped_cleanly:
                # a failure or a cancel: what was not handled is not committed (it comes again)
                for task, _ in in_hand:
                    task.cancel()
                await asyncio.gather(*(task for task, _ in in_hand), return_exceptions=True)
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            try:
                if self._committing is not None:
                    await self._committing  # the last batch handled is committed before leaving
            finally:
                await self.consumer.stop()

    def _room(self, in_hand: deque[tuple[asyncio.Task[None], _Parsed]]) -> bool:
        """Whether another batch may be taken now."""
        if len(in_hand) >= self.overlap:
            return False
        return not any(
            self.barriers & batch.events.keys() for task, batch in in_hand if not task.done()
        )

    def _commit_finished(self, in_hand: deque[tuple[asyncio.Task[None], _Parsed]]) -> None:
        """Commit the oldest batches that were handled, up to the first one still going."""
        while in_hand and in_hand[0][0].done():
            task, batch = in_hand.popleft()
            task.result()  # raises what handling it raised, as before
            self._handled(batch)

    async def _read(self, ahead: asyncio.Queue[_Parsed]) -> None:
        while not self._stopping.is_set():
            batch = await self.consumer.getmany(timeout_ms=200, max_records=self.max_batch)
            if batch:
                await ahead.put(self._parse(batch))

    def _parse(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> _Parsed:
        parsed = _Parsed(offsets={tp: records[-1].offset + 1 for tp, records in batch.items()})
        for tp, records in batch.items():
            model = EVENT_BY_TOPIC[tp.topic]
            events = parsed.events.setdefault(tp.topic, [])
            for record in records:
                try:
                    events.append((record, model.from_kafka(record.value)))
                except ValidationError as exc:
                    reason = f"invalid {model.__name__}: {validation_summary(exc)}"
                    parsed.poison.append((record, reason))
                except UnsupportedVersion as exc:
                    parsed.poison.append((record, str(exc)))
            highwater = self.consumer.highwater(tp)
            if highwater is not None:
                parsed.lag[tp] = max(highwater - parsed.offsets[tp], 0)
        return parsed

    async def _handle(self, batch: _Parsed) -> None:
        for record, reason in batch.poison:
            await self._dead_letter(record, reason)
        for topic, parsed in batch.events.items():
            if parsed:
                await self._handle_topic(topic, parsed)

    def _handled(self, batch: _Parsed) -> None:
        # The commit is a broker round trip (~13 ms on the embedded broker): the next batches
        # are handled while it is under way, and what they handled meanwhile is committed
        # together by the next commit (one per round trip, not one per small batch). Commits
        # stay in order: one task makes them, one after the other.
        self._uncommitted.update(batch.offsets)  # a partition's offsets only grow
        if self._committing is not None and self._committing.done():
            self._committing.result()  # raises what a commit raised, as before
            self._committing = None
        if self._committing is None:
            self._committing = asyncio.create_task(self._commit_handled())
        for tp, lag in batch.lag.items():
            metrics.CONSUMER_LAG.labels(self.service, self.group_id, tp.topic, tp.partition).set(
                lag
            )

    async def _commit_handled(self) -> None:
        while self._uncommitted:
            offsets, self._uncommitted = self._uncommitted, {}
            await self._commit(offsets)

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # The partitions moved to another member mid-batch. It will get these messages
            # again, and the handlers' idempotence makes that harmless.
            log.warning("commit after a rebalance was refused: %r", exc)

    async def _handle_topic(self, topic: str, parsed: list[tuple[ConsumerRecord, Event]]) -> None:
        metrics.BATCH_SIZE.labels(self.service, topic).observe(len(parsed))
        started = time.perf_counter()
        try:
            await self._with_retries(topic, [event for _, event in parsed])
        except _Interrupted:
            raise
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
                except _Interrupted:
                    raise
                except Exception as single_exc:
                    await self._dead_letter(record, dead_letter_reason(single_exc))
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
            except Exception as exc:
                if not self._is_retriable(exc):
                    raise
                if self._stopping.is_set():
                    raise _Interrupted() from exc
                metrics.RETRIES.labels(self.service, topic).inc()
                log.warning("retriable error on %s, retrying in %.2fs: %r", topic, backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)

    def _is_retriable(self, exc: Exception) -> bool:
        if isinstance(exc, Failure):
            return exc.retriable
        return isinstance(exc, self.retriable)

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
