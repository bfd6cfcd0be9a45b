"""The one place that builds Kafka clients: producers, group consumers, group-less readers,
admin clients and the faust app's broker settings, every one from `KafkaSettings`.

Each client gets the same connection options (bootstrap, TLS, SASL), so no client can reach the
production cluster's SCRAM-over-TLS listener while another one of the same process cannot.
Callers may tune a client but never its connection: an override of a connection option is a
`ValueError`. `tests/unit/test_kafka_clients.py` fails if any other module constructs an
aiokafka or faust client.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import faust.auth
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.helpers import create_ssl_context

from shared.settings import KafkaSettings

CONNECTION_OPTIONS = frozenset(
    {
        "bootstrap_servers",
        "security_protocol",
        "ssl_context",
        "sasl_mechanism",
        "sasl_plain_username",
        "sasl_plain_password",
    }
)


def connection_options(settings: KafkaSettings) -> dict[str, Any]:
    """Bootstrap, and TLS/SASL when the cluster asks for them."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "security_protocol": protocol,
    }
    if "SSL" in protocol:
        options["ssl_context"] = create_ssl_context(cafile=settings.kafka_ssl_cafile or None)
    if protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return options


def _options(
    settings: KafkaSettings, defaults: dict[str, Any], overrides: dict[str, Any]
) -> dict[str, Any]:
    refused = CONNECTION_OPTIONS & set(overrides)
    if refused:
        raise ValueError(f"connection options come from the settings, not from {sorted(refused)}")
    return {**connection_options(settings), **defaults, **overrides}


def producer(settings: KafkaSettings, **overrides: Any) -> AIOKafkaProducer:
    """A producer that returns only once every in-sync replica has the record."""
    defaults = {
        "acks": "all",
        "enable_idempotence": settings.kafka_idempotence,
        "linger_ms": 2,
        "request_timeout_ms": 10000,
        "max_batch_size": 256 * 1024,
    }
    return AIOKafkaProducer(**_options(settings, defaults, overrides))


class PacedConsumer(AIOKafkaConsumer):
    """A consumer whose fetches follow the traffic, for a broker that does not wake a waiting
    fetch (ADR 0003): the short wait while records come; once none came for `IDLE_AFTER_S`,
    fetches that do not wait at all, each empty one followed by a pause of `idle_wait_ms` in
    the client. The broker pays for every millisecond a fetch waits, the client's pause costs
    it nothing, so an idle consumer is cheap on both sides. The first record after a quiet
    spell waits for at most the pause in progress; it brings the short wait back."""

    IDLE_AFTER_S = 1.0

    def __init__(self, *topics: str, idle_wait_ms: int, **options: Any):
        super().__init__(*topics, **options)
        self.busy_wait_ms: int = options.get("fetch_max_wait_ms", 500)  # aiokafka's default
        self.idle_wait_ms = max(idle_wait_ms, self.busy_wait_ms) if idle_wait_ms else 0
        self.idle = False
        self._last_records = time.monotonic()

    @property
    def paced(self) -> bool:
        return self.idle_wait_ms > 0

    async def start(self) -> None:
        await super().start()
        if self.paced:
            # the fetcher's loop looks this method up for every fetch it sends
            fetch = self._fetcher._proc_fetch_request
            self._fetcher._proc_fetch_request = functools.partial(self._fetch_then_pause, fetch)

    async def _fetch_then_pause(self, fetch: Callable[..., Awaitable[bool]], *args: Any) -> bool:
        got_records = await fetch(*args)
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            return got_records  # a stop or new assignment is under way: no pause to wait out
        if self.idle and not got_records:
            try:
                await asyncio.sleep(self.idle_wait_ms / 1000)  # no fetch to this broker meanwhile
            except asyncio.CancelledError:
                return False  # stop or a new assignment: as aiokafka's own fetch does
        return got_records

    async def getmany(
        self, *partitions: Any, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[Any, list[Any]]:
        batch: dict[Any, list[Any]] = await super().getmany(
            *partitions, timeout_ms=timeout_ms, max_records=max_records
        )
        if self.paced:
            now = time.monotonic()
            if batch:
                self._last_records = now
            self.idle = now - self._last_records > self.IDLE_AFTER_S
            # the fetcher builds each fetch request from this attribute: the next one uses it
            self._fetcher._fetch_max_wait_ms = 1 if self.idle else self.busy_wait_ms
        return batch


def group_consumer(
    settings: KafkaSettings, *topics: str, group_id: str, **overrides: Any
) -> AIOKafkaConsumer:
    """A member of `group_id` that commits only what its caller handled: at-least-once."""
    defaults = {
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": settings.kafka_session_timeout_ms,
        "heartbeat_interval_ms": settings.kafka_heartbeat_interval_ms,
        "fetch_max_wait_ms": settings.kafka_fetch_max_wait_ms,
        "max_poll_records": settings.kafka_max_batch,
    }
    return PacedConsumer(
        *topics,
        idle_wait_ms=settings.kafka_idle_fetch_wait_ms,
        **_options(settings, defaults, overrides),
    )


def reader(settings: KafkaSettings, *topics: str, **overrides: Any) -> AIOKafkaConsumer:
    """A consumer without a group, from the earliest offset: for readers that need every
    partition (the notifier's `store.config`) and for tools that look at a topic. Paced when
    idle like a group consumer."""
    defaults = {"group_id": None, "enable_auto_commit": False, "auto_offset_reset": "earliest"}
    return PacedConsumer(
        *topics,
        idle_wait_ms=settings.kafka_idle_fetch_wait_ms,
        **_options(settings, defaults, overrides),
    )


def admin(settings: KafkaSettings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**connection_options(settings))


def faust_broker(settings: KafkaSettings) -> dict[str, Any]:
    """`broker` and `broker_credentials` for `faust.App`: the same TLS/SASL, in faust's terms."""
    brokers = [f"kafka://{host.strip()}" for host in settings.kafka_bootstrap.split(",")]
    protocol = settings.kafka_security_protocol
    credentials: faust.auth.Credentials | None = None
    if protocol != "PLAINTEXT":
        context = (
            create_ssl_context(cafile=settings.kafka_ssl_cafile or None)
            if "SSL" in protocol
            else None
        )
        if protocol == "SSL":
            credentials = faust.SSLCredentials(context)
        else:
            credentials = faust.SASLCredentials(
                username=settings.kafka_sasl_username,
                password=settings.kafka_sasl_password.get_secret_value(),
                ssl_context=context,
                mechanism=settings.kafka_sasl_mechanism,
            )
    return {"broker": brokers, "broker_credentials": credentials}


class ClientSet:
    """Base of the dataclass in which a service's wiring builds all its Kafka clients (its
    `kafka(settings)`): one place to list them, for the test that checks each carries the
    cluster's TLS and SASL, and to close them, whether or not they ever started."""

    def clients(self) -> list[Any]:
        assert dataclasses.is_dataclass(self)
        return [getattr(self, f.name) for f in dataclasses.fields(self)]

    async def close(self) -> None:
        for client in self.clients():
            if isinstance(client, AIOKafkaAdminClient):
                await client.close()
            elif client is not None and hasattr(client, "stop"):
                await client.stop()  # a no-op on a client already stopped
