"""The notifier's operator API (behind the admin bearer token): an order's deliveries, resend."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from aiohttp import web

from services.notifier.handlers import Delivery
from services.notifier.resend import ResendError, UnknownOrder, resend
from shared.events import Event


def _error(status: int, error: str, detail: str) -> web.Response:
    return web.json_response({"error": error, "detail": detail}, status=status)


def routes(
    pool: asyncpg.Pool, delivery: Delivery, report: Callable[[list[Event]], Awaitable[None]]
) -> list[web.RouteDef]:
    """`report` publishes what a resend produces (`message.sent` for a part that had failed
    and now went out)."""

    async def deliveries(request: web.Request) -> web.Response:
        order_key = request.match_info["order_key"]
        rows = await pool.fetch(
            """
            SELECT d.part, d.status, d.channel, d.provider, d.provider_message_id, d.recipient,
                   d.attempts, d.reasons,
                   coalesce(json_agg(json_build_object(
                       'channel', a.channel, 'provider', a.provider, 'purpose', a.purpose,
                       'status', a.status, 'error', a.error, 'started_at', a.started_at)
                       ORDER BY a.started_at) FILTER (WHERE a.key IS NOT NULL), '[]') AS tries
            FROM deliveries d LEFT JOIN attempts a USING (allocation_event_id)
            WHERE d.order_key = $1 GROUP BY d.allocation_event_id ORDER BY d.part
            """,
            order_key,
        )
        if not rows:
            return _error(404, "unknown_order", f"no delivery for order {order_key}")
        parts: list[dict[str, Any]] = []
        for r in rows:
            part = dict(r)
            part.pop("tries")
            part["reasons"] = list(r["reasons"])
            part["attempt_log"] = json.loads(r["tries"])
            parts.append(part)
        return web.json_response({"order_key": order_key, "parts": parts}, dumps=_dumps)

    async def resend_order(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "invalid_json", "the body must be JSON")
        if not isinstance(body, dict):
            return _error(400, "invalid_body", 'expected {"phone": ..., "email": ...}')
        phone, email = body.get("phone"), body.get("email")
        if not all(v is None or isinstance(v, str) for v in (phone, email)):
            return _error(400, "invalid_body", "phone and email must be strings")
        try:
            results, events = await resend(
                pool, delivery, request.match_info["order_key"], phone, email
            )
        except UnknownOrder as exc:
            return _error(404, "unknown_order", str(exc))
        except ResendError as exc:
            return _error(400, "invalid_recipient", str(exc))
        if events:
            await report(events)
        ok = all(r["status"] != "failed" for r in results)
        return web.json_response({"parts": results}, status=200 if ok else 502)

    return [
        web.get("/admin/orders/{order_key}/deliveries", deliveries),
        web.post("/admin/orders/{order_key}/resend", resend_order),
    ]


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)
