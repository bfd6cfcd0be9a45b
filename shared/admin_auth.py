"""Bearer-token guard for a service's `/admin/` routes.

No token configured means no admin API at all: refusing is safer than an open door.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def admin_guard(
    token: str, prefix: str = "/admin/"
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """A middleware that lets requests under `prefix` through only with `Bearer <token>`."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(prefix):
            return await handler(request)
        if not token:
            return web.json_response(
                {"error": "admin_disabled", "detail": "no admin token is configured"}, status=403
            )
        offered = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(offered, expected):
            return web.json_response(
                {"error": "unauthorized", "detail": "a valid bearer token is required"},
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await handler(request)

    return guard
