"""Delivery receipts: WhatsApp status webhooks, Unifonic DLRs, Twilio status callbacks.

A `failed` receipt for a message a provider had accepted reopens the part and sends it on the
next channel; `delivered` marks it delivered. Unknown message ids are acknowledged and ignored
(a receipt may come from before a database restore, or for an operator's resend).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from typing import Literal

import asyncpg
from aiohttp import web
from prometheus_client import Counter

from services.notifier.handlers import Delivery, send_part
from shared.events import CodeAllocated

log = logging.getLogger(__name__)

RECEIPTS = Counter(
    "tasleem_notifier_receipts_total",
    "Delivery receipts, by provider and status",
    ["provider", "status"],
)

Status = Literal["delivered", "failed"]


async def on_receipt(
    pool: asyncpg.Pool,
    delivery: Delivery,
    provider: str,
    message_id: str,
    status: Status,
    error: str,
) -> bool:
    """Apply one receipt; True when it matched a message we sent."""
    RECEIPTS.labels(provider, status).inc()
    if status == "delivered":
        # the common case: gathered with other receipts into one statement
        return await delivery.journal(pool).delivered(provider, message_id)
    await _settled(pool, provider, message_id)
    async with pool.acquire() as conn, conn.transaction():
        attempt = await conn.fetchrow(
            """
            UPDATE attempts SET status = 'undelivered', error = COALESCE(NULLIF($3, ''), error)
            WHERE provider = $1 AND provider_message_id = $2
              AND status IN ('accepted', 'delivered')
            RETURNING allocation_event_id, channel, purpose
            """,
            provider,
            message_id,
            error,
        )
        if attempt is None or attempt["purpose"] != "delivery":
            return attempt is not None
        reopened = await conn.fetchrow(
            """
            UPDATE deliveries SET status = 'sending', updated_at = now(),
                reasons = reasons || $3::text
            WHERE allocation_event_id = $1 AND provider_message_id = $2
              AND status IN ('accepted', 'delivered')
            RETURNING event
            """,
            attempt["allocation_event_id"],
            message_id,
            f"{provider}: accepted, then reported failed ({error or 'no reason given'})",
        )
    if reopened is not None and reopened["event"] is not None:
        event = CodeAllocated.model_validate_json(reopened["event"])
        log.warning(
            "%s part %d: %s reported the message failed; trying the next channel",
            event.order_key,
            event.part,
            provider,
        )
        task = delivery.start(
            send_part(event, pool, delivery, after=(attempt["channel"], provider)), event.event_id
        )
        delivery.publish_later(task)
    return True


async def _settled(pool: asyncpg.Pool, provider: str, message_id: str) -> None:
    """A receipt can overtake our own record of the acceptance: wait (briefly) until the
    attempt carries this message id and its part is closed, so a failure is not lost."""
    for pause in (0.05, 0.1, 0.2, 0.4, 0.8, 1.6):
        state = await pool.fetchval(
            """
            SELECT d.status FROM attempts a JOIN deliveries d USING (allocation_event_id)
            WHERE a.provider = $1 AND a.provider_message_id = $2
            """,
            provider,
            message_id,
        )
        if state is not None and state not in ("pending", "sending"):
            return
        await asyncio.sleep(pause)


@dataclass(frozen=True)
class ReceiptSecrets:
    whatsapp_app_secret: str
    whatsapp_verify_token: str
    twilio_auth_token: str
    twilio_callback_url: str  # exactly as given to Twilio: it is part of the signature
    unifonic_token: str  # Unifonic does not sign DLRs: a secret in the DLR URL's query


def whatsapp_signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def twilio_signature(auth_token: str, url: str, params: dict[str, str]) -> str:
    signed = url + "".join(k + params[k] for k in sorted(params))
    return base64.b64encode(
        hmac.new(auth_token.encode(), signed.encode(), hashlib.sha1).digest()
    ).decode()


def _error(status: int, error: str, detail: str) -> web.Response:
    return web.json_response({"error": error, "detail": detail}, status=status)


def routes(pool: asyncpg.Pool, delivery: Delivery, secrets: ReceiptSecrets) -> list[web.RouteDef]:
    async def apply(provider: str, mid: str, status: Status, error: str) -> bool:
        return await on_receipt(pool, delivery, provider, mid, status, error)

    async def whatsapp_verify(request: web.Request) -> web.Response:
        query = request.query
        if (
            query.get("hub.mode") == "subscribe"
            and hmac.compare_digest(
                query.get("hub.verify_token", "").encode(), secrets.whatsapp_verify_token.encode()
            )
            and secrets.whatsapp_verify_token
        ):
            return web.Response(text=query.get("hub.challenge", ""))
        return _error(403, "forbidden", "verify token does not match")

    async def whatsapp_status(request: web.Request) -> web.Response:
        body = await request.read()
        offered = request.headers.get("X-Hub-Signature-256", "")
        if not secrets.whatsapp_app_secret or not hmac.compare_digest(
            offered.encode(), whatsapp_signature(secrets.whatsapp_app_secret, body).encode()
        ):
            return _error(401, "bad_signature", "X-Hub-Signature-256 does not match the body")
        try:
            payload = json.loads(body)
            statuses = [
                s
                for entry in payload.get("entry", [])
                for change in entry.get("changes", [])
                for s in change.get("value", {}).get("statuses", [])
            ]
        except (ValueError, AttributeError, TypeError):
            return _error(400, "invalid_payload", "not a WhatsApp webhook payload")
        for s in statuses:
            if not isinstance(s, dict) or "id" not in s:
                continue
            if s.get("status") == "failed":
                errors = s.get("errors") or [{}]
                reason = f"{errors[0].get('code', '')} {errors[0].get('title', '')}".strip()
                await apply("whatsapp", str(s["id"]), "failed", reason)
            elif s.get("status") in ("delivered", "read"):
                await apply("whatsapp", str(s["id"]), "delivered", "")
        return web.json_response({"ok": True})

    async def unifonic_dlr(request: web.Request) -> web.Response:
        if not secrets.unifonic_token or not hmac.compare_digest(
            request.query.get("token", "").encode(), secrets.unifonic_token.encode()
        ):
            return _error(401, "unauthorized", "the DLR URL's token does not match")
        form = await _fields(request)
        mid, dlr = form.get("MessageID", ""), form.get("DLR", form.get("Status", ""))
        if not mid:
            return _error(400, "invalid_payload", "MessageID is required")
        if dlr.lower() in ("delivered",):
            await apply("unifonic", mid, "delivered", "")
        elif dlr.lower() in ("undeliverable", "failed", "rejected", "expired"):
            await apply("unifonic", mid, "failed", dlr)
        return web.json_response({"ok": True})

    async def twilio_status(request: web.Request) -> web.Response:
        form = await _fields(request)
        offered = request.headers.get("X-Twilio-Signature", "")
        expected = twilio_signature(secrets.twilio_auth_token, secrets.twilio_callback_url, form)
        if not secrets.twilio_auth_token or not hmac.compare_digest(
            offered.encode(), expected.encode()
        ):
            return _error(401, "bad_signature", "X-Twilio-Signature does not match")
        sid, status = form.get("MessageSid", ""), form.get("MessageStatus", "")
        if status == "delivered":
            await apply("twilio", sid, "delivered", "")
        elif status in ("failed", "undelivered"):
            await apply("twilio", sid, "failed", form.get("ErrorCode", ""))
        return web.json_response({"ok": True})

    return [
        web.get("/webhooks/whatsapp", whatsapp_verify),
        web.post("/webhooks/whatsapp", whatsapp_status),
        web.post("/webhooks/unifonic", unifonic_dlr),
        web.post("/webhooks/twilio", twilio_status),
    ]


async def _fields(request: web.Request) -> dict[str, str]:
    if request.content_type == "application/json":
        try:
            payload = await request.json()
        except ValueError:
            return {}
        return {k: str(v) for k, v in payload.items()} if isinstance(payload, dict) else {}
    form = await request.post()
    return {k: v for k, v in form.items() if isinstance(v, str)}
