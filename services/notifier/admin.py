"""The notifier's operator API (behind the admin tokens): an order's deliveries, resend, and a
preview of a store's message.

Reads (deliveries, preview) need a `read` token, a resend an `operate` one
(shared/admin_auth.py). Every answer to bad input is a JSON 4xx with `error` and `detail`: an
order key PostgreSQL cannot hold (NUL, control characters, over 512 characters) is refused
before it reaches a query. Handlers find what they need under the app keys below, set where
the notifier is wired (main.py).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from aiohttp import web

from services.notifier import messages
from services.notifier.handlers import Delivery
from services.notifier.resend import (
    ResendError,
    ResendLimits,
    TooManyResends,
    UnknownOrder,
    check_order_key,
    resend,
)
from shared.admin_auth import caller_of
from shared.events import Event

Publish = Callable[[list[Event]], Awaitable[None]]

POOL = web.AppKey("notifier_pool", asyncpg.Pool)
DELIVERY = web.AppKey("notifier_delivery", Delivery)
# publishes what a resend produces (`message.sent` for a part that had failed and now went out)
PUBLISH: web.AppKey[Publish] = web.AppKey("notifier_publish")
LIMITS = web.AppKey("notifier_resend_limits", ResendLimits)

MAX_BODY_BYTES = 16 * 1024  # a resend body is a phone, an address and a reason
CHANNELS = ("whatsapp", "sms", "email")
LOCALES = ("ar", "en")
MAX_SAMPLE_CODES, MAX_SAMPLE = 10, 256  # characters of a sample code, a store name, a product
SAMPLE_CODE = "XXXX-XXXX-XXXX"


def _error(status: int, error: str, detail: str, **headers: str) -> web.Response:
    return web.json_response({"error": error, "detail": detail}, status=status, headers=headers)


async def deliveries(request: web.Request) -> web.Response:
    order_key = request.match_info["order_key"]
    try:
        check_order_key(order_key)
    except ResendError as exc:
        return _error(400, exc.error, str(exc))
    pool = request.app[POOL]
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
    resends = await pool.fetch(
        """
        SELECT id, caller, requested_at, original_phone, original_email, phone, email,
               recipient_changed, reason, outcome
        FROM resends WHERE order_key = $1 ORDER BY requested_at
        """,
        order_key,
    )
    return web.json_response(
        {"order_key": order_key, "parts": parts, "resends": [dict(r) for r in resends]},
        dumps=_dumps,
    )


async def resend_order(request: web.Request) -> web.Response:
    if (request.content_length or 0) > MAX_BODY_BYTES:
        return _error(413, "body_too_large", f"at most {MAX_BODY_BYTES} bytes")
    try:
        body = await request.json() if request.can_read_body else {}
    except (ValueError, RecursionError):
        return _error(400, "invalid_json", "the body must be JSON")
    if not isinstance(body, dict):
        return _error(400, "invalid_body", 'expected {"phone": ..., "email": ..., "reason": ...}')
    phone, email, reason = body.get("phone"), body.get("email"), body.get("reason")
    if not all(v is None or isinstance(v, str) for v in (phone, email, reason)):
        return _error(400, "invalid_body", "phone, email and reason must be strings")
    try:
        result = await resend(
            request.app[POOL],
            request.app[DELIVERY],
            request.match_info["order_key"],
            phone or None,
            email or None,
            caller=caller_of(request),
            reason=reason,
            limits=request.app[LIMITS],
        )
    except UnknownOrder as exc:
        return _error(404, exc.error, str(exc))
    except TooManyResends as exc:
        return _error(429, exc.error, str(exc), **{"Retry-After": str(round(exc.retry_after_s))})
    except ResendError as exc:
        return _error(400, exc.error, str(exc))
    if result.events:
        await request.app[PUBLISH](result.events)
    ok = all(p["status"] != "failed" for p in result.parts)
    return web.json_response(result.answer(), status=200 if ok else 502)


async def preview(request: web.Request) -> web.Response:
    """`GET /admin/preview?store_id=&channel=&locale=&store=&product=&code=`: one message
    rendered as the buyer would read it, from the store settings this notifier knows (its
    templates, instructions and WhatsApp template; our defaults for an unknown store), with
    sample codes, never real ones."""
    query = request.query
    store_id = query.get("store_id", "")
    if len(store_id) > MAX_SAMPLE:
        return _error(400, "bad_query", f"store_id is at most {MAX_SAMPLE} characters")
    delivery = request.app[DELIVERY]
    store = delivery.channels.stores.get(store_id) if store_id else None
    channel = query.get("channel", "sms")
    locale = query.get("locale") or (store.locale if store else "ar")
    if channel not in CHANNELS:
        return _error(400, "bad_query", f"channel is one of {', '.join(CHANNELS)}, not {channel!r}")
    if locale not in LOCALES:
        return _error(400, "bad_query", f"locale is ar or en, not {locale[:20]!r}")
    codes = query.getall("code", []) or [SAMPLE_CODE]
    texts = [query.get("store", ""), query.get("product", ""), *codes]
    if len(codes) > MAX_SAMPLE_CODES or any(len(t) > MAX_SAMPLE for t in texts):
        return _error(
            400,
            "bad_query",
            f"at most {MAX_SAMPLE_CODES} codes; codes, store and product at most {MAX_SAMPLE} "
            "characters each",
        )
    if any(not c.strip() or messages.plain(c) != c.strip() for c in codes):
        return _error(
            400, "bad_query", "a sample code is not empty and has no control or bidi characters"
        )
    content = messages.sample(
        store, locale, query.get("store", ""), query.get("product", "PlayStation 50 SAR"), codes
    )
    message = messages.outbound(
        content, channel, "", "", store, delivery.channels.whatsapp_template
    )
    answer: dict[str, Any] = {
        "store_id": store_id or None,
        "store_known": store is not None,
        "channel": channel,
        "locale": locale,
    }
    if channel == "whatsapp":
        answer |= {"template": message.template, "params": message.params}
    elif channel == "email":
        answer |= {"subject": message.subject, "text": message.text, "html": message.html}
    else:
        answer |= {"text": message.text}
    return web.json_response(answer, dumps=_dumps)


ROUTES = [
    web.get("/admin/orders/{order_key}/deliveries", deliveries),
    web.post("/admin/orders/{order_key}/resend", resend_order),
    web.get("/admin/preview", preview),
]


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)
