"""Follows the pipeline from the broker: per-second counts of what each stage emitted, the
paid→sent latency of every message (taken from `message.sent`, as the notifier measured it),
and the moments each order passed on its way, for the latency per hop (bench/hops.py).

Record timestamps are the producers' CreateTime (aiokafka stamps a record when it is sent),
which on one machine share the clock of the events' own times."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from aiokafka import TopicPartition

from deploy.embedded.broker import client_settings
from shared import kafka_clients
from shared.events import CodeAllocated, MessageSent, OrderPaid

STAGES = {OrderPaid.topic: "received", CodeAllocated.topic: "allocated", MessageSent.topic: "sent"}


@dataclass
class Latency:
    paid_at: float  # unix time the order was paid (when the webhook was built)
    seen_at: float  # unix time this follower read the message.sent
    ms: float
    codes: int


@dataclass
class Moments:
    """Unix times read from the topics: per order (`order.paid`), per allocated part
    (`code.allocated`, by its event id) and per sent part (`message.sent`)."""

    paid: dict[str, tuple[float, float]] = field(default_factory=dict)  # key → paid, appended
    # event id → order key, allocated_at, appended
    allocated: dict[str, tuple[str, float, float]] = field(default_factory=dict)
    # allocation event id → accepted_at, appended
    sent: dict[str, tuple[float, float]] = field(default_factory=dict)


def _unix(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


@dataclass
class Flow:
    started: float = field(default_factory=time.time)
    per_second: dict[str, Counter[int]] = field(
        default_factory=lambda: {stage: Counter() for stage in STAGES.values()}
    )
    latencies: list[Latency] = field(default_factory=list)
    moments: Moments = field(default_factory=Moments)

    def total(self, stage: str, since: float = 0.0, until: float = float("inf")) -> int:
        return sum(
            n
            for second, n in self.per_second[stage].items()
            if since <= self.started + second < until
        )


class Follower:
    def __init__(self, bootstrap: str):
        self.flow = Flow()
        # a long fetch wait: latencies come from the events and record timestamps, not from when
        # this reads them, and its own polls would count in the idle broker's CPU
        self.consumer = kafka_clients.reader(client_settings(bootstrap), fetch_max_wait_ms=200)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        await self.consumer._client.force_metadata_update()
        partitions = [
            TopicPartition(topic, p)
            for topic in STAGES
            for p in self.consumer.partitions_for_topic(topic) or {0}
        ]
        self.consumer.assign(partitions)
        await self.consumer.seek_to_end(*partitions)
        for tp in partitions:  # resolve the end now, before any order is sent
            await self.consumer.position(tp)
        self.flow.started = time.time()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        flow = self.flow
        while True:
            batch = await self.consumer.getmany(timeout_ms=200, max_records=5000)
            now = time.time()
            second = int(now - flow.started)
            for tp, records in batch.items():
                stage = STAGES[tp.topic]
                flow.per_second[stage][second] += len(records)
                for record in records:
                    self._note(stage, record.value, record.timestamp / 1000, now)

    def _note(self, stage: str, value: bytes, appended: float, now: float) -> None:
        moments = self.flow.moments
        if stage == "sent":
            sent = MessageSent.model_validate_json(value)
            moments.sent[sent.allocation_event_id] = (sent.accepted_at.timestamp(), appended)
            self.flow.latencies.append(
                Latency(sent.paid_at.timestamp(), now, sent.paid_to_accepted_ms, sent.code_count)
            )
            return
        # the bench's own reading: plain JSON for the few fields it needs, not the models
        event = json.loads(value)
        if stage == "received":
            moments.paid[event["order_key"]] = (_unix(event["paid_at"]), appended)
        else:
            moments.allocated[event["event_id"]] = (
                event["order_key"],
                _unix(event["allocated_at"]),
                appended,
            )

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.consumer.stop()
