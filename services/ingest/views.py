"""The webhook endpoint: verify, normalise, publish, and answer 2xx only after the broker's ack."""

from __future__ import annotations

import asyncio
import json
import logging
import time

from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from services.ingest import standard
from services.ingest.errors import (
    BrokerUnavailable,
    IngestError,
    MalformedJson,
    PayloadTooLarge,
    UnknownStore,
    UnsupportedMediaType,
)
from services.ingest.metrics import IN_FLIGHT, PUBLISH_SECONDS, RECEIVED, REJECTED
from services.ingest.settings import IngestSettings
from services.ingest.stores import StoreRegistry

log = logging.getLogger(__name__)

REGISTRY = web.AppKey("registry", StoreRegistry)
PRODUCER = web.AppKey("producer", AIOKafkaProducer)
SETTINGS = web.AppKey("settings", IngestSettings)


async def standard_webhook(request: web.Request) -> web.Response:
    platform = "standard"
    IN_FLIGHT.inc()
    try:
        status, body = await _accept(request, platform)
    except IngestError as exc:
        RECEIVED.labels(platform, "rejected").inc()
        REJECTED.labels(platform, exc.code).inc()
        status, body = exc.status, {"error": exc.code, "detail": exc.detail}
        if isinstance(exc, BrokerUnavailable):
            return web.json_response(body, status=status, headers={"Retry-After": "5"})
    finally:
        IN_FLIGHT.dec()
    return web.json_response(body, status=status)


async def _accept(request: web.Request, platform: str) -> tuple[int, dict[str, str]]:
    settings = request.app[SETTINGS]
    if request.content_length is not None and request.content_length > settings.max_body_bytes:
        raise PayloadTooLarge(f"body over {settings.max_body_bytes} bytes")
    if request.content_type != "application/json":
        raise UnsupportedMediaType("Content-Type must be application/json")
    store = await request.app[REGISTRY].get(request.match_info["store_id"])
    if store is None or store.platform != platform:
        raise UnknownStore(f"no {platform} store with this id")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"body over {settings.max_body_bytes} bytes") from None
    standard.verify(store.secrets, request.headers, raw)
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise MalformedJson("body is not valid JSON") from None
    event = standard.normalise(store, payload)
    if event is None:
        RECEIVED.labels(platform, "ignored").inc()
        return 200, {"status": "ignored"}
    started = time.perf_counter()
    try:
        await asyncio.wait_for(
            request.app[PRODUCER].send_and_wait(
                event.topic, event.to_bytes(), key=event.kafka_key()
            ),
            timeout=settings.publish_timeout_s,
        )
    except (TimeoutError, KafkaError) as exc:
        log.warning("broker did not acknowledge %s: %r", event.topic, exc)
        raise BrokerUnavailable("the order could not be stored yet; retry later") from None
    PUBLISH_SECONDS.observe(time.perf_counter() - started)
    RECEIVED.labels(platform, "accepted").inc()
    return 202, {"status": "accepted", "event_id": event.event_id, "order_key": event.order_key}
