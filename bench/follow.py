"""Follows the pipeline from the broker: per-second counts of what each stage emitted, and the
paid→sent latency of every message (taken from `message.sent`, as the notifier measured it)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field

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
class Flow:
    started: float = field(default_factory=time.time)
    per_second: dict[str, Counter[int]] = field(
        default_factory=lambda: {stage: Counter() for stage in STAGES.values()}
    )
    latencies: list[Latency] = field(default_factory=list)

    def total(self, stage: str, since: float = 0.0, until: float = float("inf")) -> int:
        return sum(
            n
            for second, n in self.per_second[stage].items()
            if since <= self.started + second < until
        )


class Follower:
    def __init__(self, bootstrap: str):
        self.flow = Flow()
        self.consumer = kafka_clients.reader(client_settings(bootstrap), fetch_max_wait_ms=20)
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
                if stage != "sent":
                    continue
                for record in records:
                    sent = MessageSent.model_validate_json(record.value)
                    flow.latencies.append(
                        Latency(
                            sent.paid_at.timestamp(), now, sent.paid_to_accepted_ms, sent.code_count
                        )
                    )

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.consumer.stop()
