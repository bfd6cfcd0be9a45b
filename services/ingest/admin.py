"""`/admin/stores`: operators add, change, rotate and remove stores on a running gateway.

Guarded by `shared.admin_auth` (bearer TASLEEM_INGEST_ADMIN_TOKEN; no token, no admin API).
Every change is written to PostgreSQL first, then published on `store.config`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web
from aiokafka.errors import KafkaError
from pydantic import BaseModel, Field, ValidationError

from services.ingest import store_changes
from services.ingest.errors import StoreMisconfigured
from services.ingest.fields import valid_store_id
from services.ingest.stores import remove_store, upsert_store
from services.ingest.views import PRODUCER, REGISTRY, SETTINGS
from shared.events import validation_summary
from shared.kafka import publish

log = logging.getLogger(__name__)
routes = web.RouteTableDef()


class Rotation(BaseModel):
    secret: str = Field(min_length=1, max_length=512)


def _error(status: int, code: str, detail: str) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status)


async def _body(request: web.Request) -> Any:
    try:
        return json.loads(await request.read())
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "malformed_json", "detail": "body is not valid JSON"}),
            content_type="application/json",
        ) from None


@routes.get("/admin/stores")
async def list_stores(request: web.Request) -> web.Response:
    stores = await request.app[REGISTRY].all()
    return web.json_response({"stores": [store_changes.shown(s) for s in stores]})


async def _stored(request: web.Request) -> store_changes.Store | None:
    """The store the path names, or None; an id no store can have is not looked up (a NUL
    in it was a PostgreSQL error, answered with a 500)."""
    store_id = request.match_info["store_id"]
    if not valid_store_id(store_id):
        return None
    try:
        return await request.app[REGISTRY].fresh(store_id)
    except StoreMisconfigured as exc:  # sealed under a key we lack, or copied from another row
        raise web.HTTPServiceUnavailable(
            text=json.dumps({"error": exc.code, "detail": exc.detail + ": remove and add it"}),
            content_type="application/json",
        ) from None


@routes.get("/admin/stores/{store_id}")
async def get_store(request: web.Request) -> web.Response:
    store = await _stored(request)
    if store is None:
        return _error(404, "unknown_store", "no store with this id")
    return web.json_response(store_changes.shown(store))


@routes.put("/admin/stores/{store_id}")
async def put_store(request: web.Request) -> web.Response:
    """Create a store, or change the fields given (secrets kept unless sent)."""
    store_id = request.match_info["store_id"]
    try:
        change = store_changes.StoreChange.model_validate(await _body(request))
        store = store_changes.apply(store_id, await _stored(request), change)
    except ValidationError as exc:
        return _error(422, "invalid_store", validation_summary(exc))
    except store_changes.InvalidChange as exc:
        return _error(422, "invalid_store", str(exc))
    return await _save(request, store)


@routes.post("/admin/stores/{store_id}/rotate-secret")
async def rotate_secret(request: web.Request) -> web.Response:
    """The new secret becomes the first; the previous first is still accepted until the next."""
    store = await _stored(request)
    if store is None:
        return _error(404, "unknown_store", "no store with this id")
    try:
        rotated = store_changes.rotate(store, Rotation.model_validate(await _body(request)).secret)
    except ValidationError as exc:
        return _error(422, "invalid_secret", validation_summary(exc))
    except store_changes.InvalidChange as exc:
        return _error(422, "invalid_secret", str(exc))
    return await _save(request, rotated)


@routes.delete("/admin/stores/{store_id}")
async def delete_store(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    store_id = request.match_info["store_id"]
    if not valid_store_id(store_id) or not await remove_store(registry.pool, store_id):
        return _error(404, "unknown_store", "no store with this id")
    registry.forget(store_id)
    log.info("store %s removed", store_id)
    return web.json_response({"status": "removed", "store_id": store_id})


async def _save(request: web.Request, store: store_changes.Store) -> web.Response:
    registry = request.app[REGISTRY]
    await upsert_store(registry.pool, store, registry.sealer)
    registry.forget(store.store_id)
    try:
        await asyncio.wait_for(
            publish(request.app[PRODUCER], [store_changes.config_event(store)], "ingest"),
            timeout=request.app[SETTINGS].publish_timeout_s,
        )
    except (TimeoutError, KafkaError) as exc:
        log.warning("store %s saved, store.config not published: %r", store.store_id, exc)
        return web.json_response(
            {
                "error": "broker_unavailable",
                "detail": "the store is saved but store.config is not published: repeat the call",
            },
            status=503,
            headers={"Retry-After": "5"},
        )
    log.info("store %s (%s) saved", store.store_id, store.platform)
    return web.json_response(store_changes.shown(store))
