"""The webhook endpoint: verify, normalise, publish, and answer 2xx only after the broker's ack."""

from __future__ import annotations

import asyncio
import json
import logging
import time

from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from services.ingest.errors import (
    BodyTimeout,
    BrokerUnavailable,
    IngestError,
    MalformedJson,
    PayloadTooLarge,
    UnknownStore,
    UnsupportedMediaType,
)
from services.ingest.fields import valid_store_id
from services.ingest.metrics import IN_FLIGHT, PUBLISH_SECONDS, RECEIVED, REJECTED, Outcome
from services.ingest.platforms import ADAPTERS, Adapter, PlatformApis
from services.ingest.settings import IngestSettings
from services.ingest.stores import StoreRegistry

log = logging.getLogger(__name__)

REGISTRY = web.AppKey("registry", StoreRegistry)
PRODUCER = web.AppKey("producer", AIOKafkaProducer)
SETTINGS = web.AppKey("settings", IngestSettings)
PLATFORM_APIS = web.AppKey("platform_apis", PlatformApis)
RETRY_AFTER_S = "5"


async def webhook(request: web.Request) -> web.Response:
    """`POST /webhooks/{platform}/{store_id}`: every refusal is a JSON error, never a 5xx
    except 503 (broker, store registry or the platform's API unavailable, or a store an
    operator must fix), which asks the platform to retry."""
    adapter = ADAPTERS.get(request.match_info["platform"])
    platform = adapter.platform if adapter else "unknown"  # bounded label values only
    IN_FLIGHT.inc()
    try:
        if adapter is None:
            raise UnknownStore("no such platform: " + ", ".join(ADAPTERS) + " are served")
        status, body = await _accept(request, adapter)
    except IngestError as exc:
        RECEIVED.labels(platform, Outcome.REJECTED).inc()
        REJECTED.labels(platform, exc.code).inc()
        headers = {"Retry-After": RETRY_AFTER_S} if exc.status == 503 else None
        return web.json_response(
            {"error": exc.code, "detail": exc.detail}, status=exc.status, headers=headers
        )
    finally:
        IN_FLIGHT.dec()
    return web.json_response(body, status=status)


async def _accept(request: web.Request, adapter: Adapter) -> tuple[int, dict[str, str]]:
    settings = request.app[SETTINGS]
    platform = adapter.platform
    if request.content_length is not None and request.content_length > settings.max_body_bytes:
        raise PayloadTooLarge(f"body over {settings.max_body_bytes} bytes")
    store_id = request.match_info["store_id"]
    # an id no store can have is not looked up (a NUL in it made the registry query fail: 503,
    # and the platform retried forever)
    store = await request.app[REGISTRY].get(store_id) if valid_store_id(store_id) else None
    if store is None or store.platform != platform:
        raise UnknownStore(f"no {platform} store with this id")
    try:
        async with asyncio.timeout(settings.body_read_timeout_s):
            raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"body over {settings.max_body_bytes} bytes") from None
    except TimeoutError:
        raise BodyTimeout(
            f"the body did not arrive within {settings.body_read_timeout_s} s"
        ) from None
    if adapter.is_ping(request.content_type, raw):
        RECEIVED.labels(platform, Outcome.PING).inc()
        return 200, {"status": "ok"}
    if request.content_type != "application/json":
        raise UnsupportedMediaType("Content-Type must be application/json")
    adapter.verify(store, request.headers, raw)
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise MalformedJson("body is not valid JSON") from None
    event = adapter.normalise(store, request.headers, payload)
    if event is not None and adapter.confirm is not None:
        event = await adapter.confirm(request.app[PLATFORM_APIS], store, event)
    if event is None:
        RECEIVED.labels(platform, Outcome.IGNORED).inc()
        return 200, {"status": Outcome.IGNORED}
    started = time.perf_counter()
    try:
        async with asyncio.timeout(settings.publish_timeout_s):
            await request.app[PRODUCER].send_and_wait(
                event.topic, event.to_bytes(), key=event.kafka_key()
            )
    except (TimeoutError, KafkaError) as exc:
        log.warning("broker did not acknowledge %s: %r", event.topic, exc)
        raise BrokerUnavailable("the order could not be stored yet; retry later") from None
    PUBLISH_SECONDS.observe(time.perf_counter() - started)
    RECEIVED.labels(platform, Outcome.ACCEPTED).inc()
    return adapter.accepted_status, {
        "status": Outcome.ACCEPTED,
        "event_id": event.event_id,
        "order_key": event.order_key,
    }
