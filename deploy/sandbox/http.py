"""What every party module shares: reading bodies, JSON errors, timestamps."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

logger = logging.getLogger(__name__)


def now_iso() -> str:
    """The current UTC time as ISO 8601 with microseconds and a Z suffix."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def json_error(status: int, message: str) -> web.Response:
    """The sandbox's own error shape, for routes that belong to no outside party."""
    return web.json_response({"error": message}, status=status)


async def read_json(request: web.Request) -> Any:
    """The request body as JSON; ValueError when it is not JSON."""
    raw = await request.read()
    return json.loads(raw.decode("utf-8"))


async def read_form(request: web.Request) -> dict[str, str]:
    """Form fields merged over query parameters, as form-posting APIs accept both."""
    fields = {key: value for key, value in request.query.items()}
    try:
        form = await request.post()
    except ValueError:
        return fields
    fields.update((key, value) for key, value in form.items() if isinstance(value, str))
    return fields


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Unknown routes, wrong methods and anything unforeseen still answer in JSON."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return json_error(exc.status, exc.reason)
    except Exception:
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return json_error(500, "internal sandbox error")
