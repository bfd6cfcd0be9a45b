"""Delivery receipts the message providers POST back a little after accepting a message, each
retried as its provider retries one that is not answered 2xx: Meta with backoff (for up to 7
days; here, minutes), Twilio as the callback URL's `#rc=`/`#rp=` overrides ask (by default
once, on a connection failure only), Unifonic up to 6 times, SNS by its delivery policy."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import aiohttp
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deploy.sandbox.config import CONFIG, WhatsAppConfig
from deploy.sandbox.faults import FAULTS
from deploy.sandbox.http import json_error, read_json
from deploy.sandbox.sns import signing

logger = logging.getLogger(__name__)

DELAY_S = 0.05  # receipts follow the acceptance, never precede it


@dataclass(frozen=True)
class Retry:
    """How a provider retries a receipt: how many more tries, on what, how long between."""

    attempts: int
    on_http_error: bool  # a non-2xx answer (else only connection failures and timeouts)
    first_pause_s: float
    max_pause_s: float = 5.0


META = Retry(attempts=12, on_http_error=True, first_pause_s=0.5)
UNIFONIC = Retry(attempts=6, on_http_error=True, first_pause_s=0.5)
SNS = Retry(attempts=6, on_http_error=True, first_pause_s=0.5)


def twilio_retry(fragment: str) -> Retry:
    """Twilio's connection overrides: `rc` retries (default 1, at most 5), `rp` what is retried
    (`all` includes 4xx/5xx answers; the default covers connection failures only)."""
    options = dict(parse_qsl(fragment))
    try:
        count = min(max(int(options.get("rc", "1")), 0), 5)
    except ValueError:
        count = 1
    return Retry(attempts=count, on_http_error=options.get("rp") == "all", first_pause_s=0.5)


class ReceiptSettings(BaseModel):
    """Changed at run time by `PUT /receipts/_settings`: how long receipts take to come."""

    model_config = ConfigDict(extra="forbid")

    delay_s: float = Field(default=DELAY_S, ge=0, le=3600)


class Receipts:
    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.settings = ReceiptSettings()
        self.sent = 0  # receipts answered 2xx
        self.retried = 0  # tries after the first
        self.given_up = 0
        self.whatsapp = StatusBatches(self)

    def post(self, url: str, *, body: bytes, headers: dict[str, str], retry: Retry) -> None:
        self.spawn(self._post(url, body, headers, retry))

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _post(self, url: str, body: bytes, headers: dict[str, str], retry: Retry) -> None:
        await asyncio.sleep(self.settings.delay_s)
        pause = retry.first_pause_s
        for number in range(retry.attempts + 1):
            if self.session is None:
                return
            if number:
                self.retried += 1
            try:
                async with self.session.post(url, data=body, headers=headers) as resp:
                    if resp.status < 300:
                        self.sent += 1
                        return
                    logger.warning("receipt to %s answered %d", url, resp.status)
                    if not retry.on_http_error:
                        break
            except (aiohttp.ClientError, TimeoutError) as exc:
                logger.warning("receipt to %s failed: %r", url, exc)
            await asyncio.sleep(pause)
            pause = min(pause * 2, retry.max_pause_s)
        self.given_up += 1


class StatusBatches:
    """Meta sends statuses in batches (the `statuses[]` of one change): the statuses of one
    phone number that come within `WINDOW_S` of the first go in one webhook, which is sent
    `delay_s` after the window closes (so after the last of them too). One webhook, one
    signature and one POST for many messages is what made the sandbox's and the gateway's
    work per message small in `bench pipeline`."""

    WINDOW_S = 0.05
    MAX = 100  # statuses per webhook (the gateway takes up to 1,000)

    def __init__(self, receipts: Receipts) -> None:
        self.receipts = receipts
        self.open: dict[tuple[str, str, str], list[dict[str, object]]] = {}

    def add(
        self, url: str, app_secret: str, phone_number_id: str, status: dict[str, object]
    ) -> None:
        key = (url, app_secret, phone_number_id)
        batch = self.open.get(key)
        if batch is None:
            batch = self.open[key] = []
            self.receipts.spawn(self._close_later(key, batch))
        batch.append(status)
        if len(batch) >= self.MAX:
            self._send(key, batch)

    async def _close_later(self, key: tuple[str, str, str], batch: list[dict[str, object]]) -> None:
        await asyncio.sleep(self.WINDOW_S)
        self._send(key, batch)

    def _send(self, key: tuple[str, str, str], batch: list[dict[str, object]]) -> None:
        if self.open.get(key) is not batch:
            return  # sent already (it was full)
        del self.open[key]
        url, app_secret, phone_number_id = key
        payload = {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": "sandbox-waba",
                    "changes": [
                        {
                            "field": "messages",
                            "value": {
                                "messaging_product": "whatsapp",
                                "metadata": {"phone_number_id": phone_number_id},
                                "statuses": batch,
                            },
                        }
                    ],
                }
            ],
        }
        body = json.dumps(payload).encode()
        signature = "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
        self.receipts.post(
            url,
            body=body,
            headers={"Content-Type": "application/json", "X-Hub-Signature-256": signature},
            retry=META,
        )


RECEIPTS = web.AppKey("receipts", Receipts)


async def receipts_client(app: web.Application) -> AsyncIterator[None]:
    receipts = app[RECEIPTS]
    receipts.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
    subscriptions = app[SUBSCRIPTIONS]
    config = app[CONFIG]
    if config.whatsapp.status_webhook_url and config.whatsapp.verify_token:
        receipts.spawn(subscriptions.verify_whatsapp(receipts.session, config.whatsapp))
    if config.ses.sns_endpoint:
        receipts.spawn(subscriptions.subscribe_sns(app, receipts))
    yield
    for task in list(receipts.tasks):
        task.cancel()
    await asyncio.gather(*receipts.tasks, return_exceptions=True)
    await receipts.session.close()


def failing(request: web.Request, party: str) -> bool:
    return request.app[FAULTS].state[party].fail_after_accept


# ---- subscriptions: Meta's verification request, SNS's subscription confirmation ---------------


class Subscriptions:
    """Meta sends status webhooks only to a callback URL that answered its verification
    request; SNS delivers only to a subscription that was confirmed."""

    def __init__(self) -> None:
        self.whatsapp_verified = False
        self.sns_token = secrets.token_hex(32)
        self.sns_confirmed = False

    async def verify_whatsapp(self, session: aiohttp.ClientSession, config: WhatsAppConfig) -> None:
        url, token = config.status_webhook_url or "", config.verify_token or ""
        pause = 0.2
        while not self.whatsapp_verified:
            challenge = secrets.token_hex(8)
            query = {"hub.mode": "subscribe", "hub.verify_token": token, "hub.challenge": challenge}
            try:
                async with session.get(url, params=query) as resp:
                    text = await resp.text()
                    self.whatsapp_verified = resp.status == 200 and text == challenge
                    if not self.whatsapp_verified:
                        logger.warning("WhatsApp webhook verification answered %d", resp.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                logger.info("WhatsApp webhook verification: %r; retrying", exc)
            if not self.whatsapp_verified:
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
        logger.info("WhatsApp webhook %s verified", url)

    async def subscribe_sns(self, app: web.Application, receipts: Receipts) -> None:
        """Send SubscriptionConfirmation until the subscriber GETs its SubscribeURL."""
        config = app[CONFIG]
        while not self.sns_confirmed:
            base = config.url or ""
            message = {
                "Type": "SubscriptionConfirmation",
                "MessageId": str(uuid.uuid4()),
                "Token": self.sns_token,
                "TopicArn": config.ses.sns_topic_arn,
                "Message": "You have chosen to subscribe to the topic "
                f"{config.ses.sns_topic_arn}. To confirm the subscription, visit the SubscribeURL.",
                "SubscribeURL": f"{base}/sns/confirm?Action=ConfirmSubscription"
                f"&TopicArn={config.ses.sns_topic_arn}&Token={self.sns_token}",
                "Timestamp": _sns_time(),
            }
            await _sns_post(app, receipts, message, Retry(0, False, 0))
            for _ in range(10):
                if self.sns_confirmed:
                    break
                await asyncio.sleep(0.2)
        logger.info("SNS subscription for SES events confirmed")


SUBSCRIPTIONS = web.AppKey("subscriptions", Subscriptions)

routes = web.RouteTableDef()


@routes.get("/sns/confirm")
async def sns_confirm(request: web.Request) -> web.Response:
    subscriptions = request.app[SUBSCRIPTIONS]
    if not hmac.compare_digest(
        request.query.get("Token", "").encode(), subscriptions.sns_token.encode()
    ):
        return json_error(400, "invalid token")
    subscriptions.sns_confirmed = True
    return web.Response(text="<ConfirmSubscriptionResponse/>", content_type="text/xml")


@routes.get("/sns/SimpleNotificationService-sandbox.pem")
async def sns_certificate(request: web.Request) -> web.Response:
    return web.Response(body=signing().certificate_pem, content_type="application/x-pem-file")


@routes.get("/receipts/_settings")
async def show_settings(request: web.Request) -> web.Response:
    receipts = request.app[RECEIPTS]
    subscriptions = request.app[SUBSCRIPTIONS]
    return web.json_response(
        {
            **receipts.settings.model_dump(),
            "sent": receipts.sent,
            "retried": receipts.retried,
            "given_up": receipts.given_up,
            "in_flight": len(receipts.tasks),
            "whatsapp_verified": subscriptions.whatsapp_verified,
            "sns_confirmed": subscriptions.sns_confirmed,
        }
    )


@routes.put("/receipts/_settings")
async def change_settings(request: web.Request) -> web.Response:
    receipts = request.app[RECEIPTS]
    try:
        receipts.settings = ReceiptSettings.model_validate(await read_json(request))
    except (ValidationError, ValueError) as exc:
        return json_error(400, str(exc))
    return web.json_response(receipts.settings.model_dump())


# ---- the receipts ------------------------------------------------------------------------------


def whatsapp_status(
    request: web.Request,
    url: str,
    app_secret: str,
    phone_number_id: str,
    wamid: str,
    wa_id: str,
    opaque: str | None = None,
) -> None:
    """A Cloud API status, in a batched webhook signed `X-Hub-Signature-256: sha256=<hex>`;
    our `biz_opaque_callback_data` comes back as it was sent."""
    status: dict[str, object] = {
        "id": wamid,
        "recipient_id": wa_id,
        "status": "delivered",
        "timestamp": str(int(time.time())),
    }
    if opaque is not None:
        status["biz_opaque_callback_data"] = opaque
    if failing(request, "whatsapp"):
        status["status"] = "failed"
        status["errors"] = [{"code": 131049, "title": "Message not delivered"}]
    request.app[RECEIPTS].whatsapp.add(url, app_secret, phone_number_id, status)


def unifonic_dlr(request: web.Request, url: str, message_id: str) -> None:
    """Unifonic's DLR: MessageID and DLR (not documented to carry the CorrelationID)."""
    dlr = "Undeliverable" if failing(request, "unifonic") else "Delivered"
    body = f"MessageID={message_id}&DLR={dlr}".encode()
    request.app[RECEIPTS].post(
        url,
        body=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        retry=UNIFONIC,
    )


def twilio_status(request: web.Request, url: str, auth_token: str, sid: str, to: str) -> None:
    """A status callback to the StatusCallback URL as given (our query echoed), signed
    `X-Twilio-Signature` (HMAC-SHA1 of the URL and sorted params); the fragment holds
    connection overrides, never sent or signed."""
    url, _, fragment = url.partition("#")
    failed = failing(request, "twilio")
    params = {
        "AccountSid": request.app[CONFIG].twilio.account_sid,
        "MessageSid": sid,
        "MessageStatus": "undelivered" if failed else "delivered",
        "To": to,
    }
    if failed:
        params["ErrorCode"] = "30003"
    signed = url + "".join(k + params[k] for k in sorted(params))
    signature = base64.b64encode(
        hmac.new(auth_token.encode(), signed.encode(), hashlib.sha1).digest()
    ).decode()
    request.app[RECEIPTS].post(
        url,
        body=urlencode(params).encode(),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": signature,
        },
        retry=twilio_retry(fragment),
    )


def ses_event(
    request: web.Request, message_id: str, source: str, to: list[str], tags: dict[str, list[str]]
) -> None:
    """An SES event (Delivery, or a permanent Bounce) published by the configuration set's SNS
    destination, once the subscription is confirmed."""
    app = request.app
    if not app[SUBSCRIPTIONS].sns_confirmed:
        return
    failed = failing(request, "email")
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    event: dict[str, object] = {
        "eventType": "Bounce" if failed else "Delivery",
        "mail": {
            "timestamp": now,
            "messageId": message_id,
            "source": source,
            "destination": to,
            "tags": tags,
        },
    }
    if failed:
        event["bounce"] = {
            "bounceType": "Permanent",
            "bounceSubType": "General",
            "bouncedRecipients": [{"emailAddress": a, "action": "failed"} for a in to],
            "timestamp": now,
        }
    else:
        event["delivery"] = {"timestamp": now, "recipients": to, "smtpResponse": "250 OK"}
    message = {
        "Type": "Notification",
        "MessageId": str(uuid.uuid4()),
        "TopicArn": app[CONFIG].ses.sns_topic_arn,
        "Message": json.dumps(event),
        "Timestamp": _sns_time(),
    }
    app[RECEIPTS].spawn(_sns_post(app, app[RECEIPTS], message, SNS))


def _sns_time() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def _sns_post(
    app: web.Application, receipts: Receipts, message: dict[str, str], retry: Retry
) -> None:
    config = app[CONFIG]
    endpoint = config.ses.sns_endpoint
    if endpoint is None:
        return
    signed = signing().sign(
        message, f"{config.url or ''}/sns/SimpleNotificationService-sandbox.pem"
    )
    headers = {
        "Content-Type": "text/plain; charset=UTF-8",
        "x-amz-sns-message-type": message["Type"],
        "x-amz-sns-message-id": message["MessageId"],
        "x-amz-sns-topic-arn": message["TopicArn"],
    }
    await receipts._post(endpoint, json.dumps(signed).encode(), headers, retry)
