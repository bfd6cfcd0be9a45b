"""Bearer-token guard for a service's `/admin/` routes.

No token configured means no admin API at all: refusing is safer than an open door.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def bearer_token(authorization: str) -> str:
    """The credentials of an `Authorization: Bearer <token>` header, "" for another scheme.
    Auth schemes are case-insensitive (RFC 7235 §2.1): `bearer x` is `Bearer x`."""
    scheme, _, credentials = authorization.strip().partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else ""


def admin_guard(
    token: str, prefix: str = "/admin/"
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """A middleware that lets requests under `prefix` through only with `Bearer <token>`."""
    expected = token.encode()

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(prefix):
            return await handler(request)
        if not token:
            return web.json_response(
                {"error": "admin_disabled", "detail": "no admin token is configured"}, status=403
            )
        offered = bearer_token(request.headers.get("Authorization", "")).encode()
        if not offered or not hmac.compare_digest(offered, expected):
            return web.json_response(
                {"error": "unauthorized", "detail": "a valid bearer token is required"},
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await handler(request)

    return guard
