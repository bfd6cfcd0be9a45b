"""The channel policy: which channels, through which providers, in what order, per store.

Stores' settings arrive on the compacted `store.config` topic; the latest per store wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from services.notifier.providers import Provider
from shared.events import CodeAllocated, StoreConfig, UnsupportedVersion

log = logging.getLogger(__name__)

DEFAULT_CHANNELS = ("whatsapp", "sms", "email")


@dataclass(frozen=True)
class Route:
    channel: str
    provider: Provider
    to: str


class StoreDirectory:
    """Every store's latest settings, read from `store.config` from the beginning."""

    def __init__(self) -> None:
        self.stores: dict[str, StoreConfig] = {}
        self.ready = False
        self._stopping = asyncio.Event()

    def get(self, store_id: str) -> StoreConfig | None:
        return self.stores.get(store_id)

    def apply(self, config: StoreConfig) -> None:
        self.stores[config.store_id] = config

    def stop(self) -> None:
        self._stopping.set()

    async def follow(self, consumer: AIOKafkaConsumer) -> None:
        """Read the topic with a group-less `consumer` (every replica needs every store)."""
        try:
            await consumer.start()
            partitions: set[int] | None = None
            while not partitions and not self._stopping.is_set():
                partitions = consumer.partitions_for_topic(StoreConfig.topic)
                if not partitions:
                    await consumer.topics()  # refreshes metadata; the topic may come later
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), 1.0)
            assigned = [TopicPartition(StoreConfig.topic, p) for p in partitions or ()]
            consumer.assign(assigned)
            await consumer.seek_to_beginning(*assigned)
            self.ready = True
            while not self._stopping.is_set():
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        self._apply_record(record.value)
        finally:
            await consumer.stop()

    def _apply_record(self, value: bytes | None) -> None:
        if value is None:  # a tombstone: the store is gone, its defaults apply
            return
        try:
            self.apply(StoreConfig.from_kafka(value))
        except ValidationError as exc:
            log.warning("ignoring an invalid store.config record: %d errors", exc.error_count())
        except UnsupportedVersion as exc:
            log.warning("ignoring a store.config record: %s", exc)


def routes(
    event: CodeAllocated,
    store: StoreConfig | None,
    providers: Mapping[str, Sequence[Provider]],
) -> list[Route]:
    """Each (channel, provider) to try, in order, with the buyer's address on that channel."""
    channels = [c for c in (store.channels if store else DEFAULT_CHANNELS) if c in providers]
    found = []
    for channel in channels:
        to = event.customer.email if channel == "email" else event.customer.phone
        if not to:
            continue
        available = {p.name: p for p in providers[channel]}
        preferred = (store.providers.get(channel) if store else None) or list(available)
        for name in preferred:
            if name in available:
                found.append(Route(channel, available[name], to))
    return found
