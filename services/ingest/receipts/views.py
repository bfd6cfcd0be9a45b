"""The receipt endpoints: verify, publish to `delivery.receipt`, answer 2xx only after the
broker acknowledged. Refusals are JSON 4xx; a 503 (broker away, SNS certificate unreachable)
asks the provider to retry, which Meta, Twilio (with our `#rc=` override), Unifonic and SNS do."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl

import aiohttp
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import Counter

from services.ingest.errors import (
    BrokerUnavailable,
    IngestError,
    InvalidSignature,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from services.ingest.metrics import Outcome
from services.ingest.receipts import formats, sns
from services.ingest.receipts.errors import CertificateUnavailable, InvalidReceipt
from services.ingest.receipts.settings import ReceiptSettings
from shared.events import DeliveryReceipt, reference_from_token
from shared.kafka import publish

log = logging.getLogger(__name__)

PROVIDERS = ("whatsapp", "twilio", "unifonic", "ses")
RECEIVED = Counter(
    "tasleem_ingest_receipts_total",
    "Provider receipt requests, by provider and outcome (accepted, ignored, rejected)",
    ["provider", "outcome"],
)
RETRY_AFTER_S = "5"
FORM = "application/x-www-form-urlencoded"


class ReceiptGateway:
    """What the receipt endpoints share: the producer, the secrets, SNS's certificates."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        settings: ReceiptSettings,
        public_url: str,
        publish_timeout_s: float,
        max_body_bytes: int,
    ):
        self.producer = producer
        self.settings = settings
        self.public_url = public_url.rstrip("/")
        self.publish_timeout_s = publish_timeout_s
        self.max_body_bytes = max_body_bytes
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        self.certificates = sns.Certificates(self.session, settings.sns_origin_pattern)

    async def close(self) -> None:
        await self.session.close()

    async def publish(self, receipts: list[DeliveryReceipt]) -> None:
        try:
            async with asyncio.timeout(self.publish_timeout_s):
                await publish(self.producer, receipts, "ingest")
        except (TimeoutError, KafkaError) as exc:
            log.warning("broker did not acknowledge %d receipts: %r", len(receipts), exc)
            raise BrokerUnavailable("the receipt could not be stored yet; retry later") from None

    async def body(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            raise PayloadTooLarge(f"body over {self.max_body_bytes} bytes")
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise PayloadTooLarge(f"body over {self.max_body_bytes} bytes") from None

    async def fields(self, request: web.Request) -> dict[str, str]:
        """A form body (Twilio, Unifonic), or a flat JSON object (some Unifonic accounts)."""
        body = await self.body(request)
        if request.content_type == "application/json":
            payload = formats.json_body(body)
            if not isinstance(payload, dict):
                raise InvalidReceipt("the body is not a JSON object")
            return {str(k): str(v) for k, v in list(payload.items())[:100]}
        if request.content_type != FORM:
            raise UnsupportedMediaType(f"Content-Type must be {FORM}")
        try:
            return dict(parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=100))
        except (UnicodeDecodeError, ValueError):
            raise InvalidReceipt("the body is not a form") from None

    async def confirm(self, url: str) -> None:
        """Subscribe by GETting SubscribeURL, from SNS's own origin only."""
        if not self.certificates.allowed(url):
            raise InvalidSignature("SubscribeURL is not SNS's")
        try:
            async with self.session.get(url, allow_redirects=False) as resp:
                ok = resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        if not ok:
            raise CertificateUnavailable("the subscription could not be confirmed; retry")
        log.info("confirmed the SNS subscription for SES events")

    async def accept(
        self, provider: str, read: Callable[[], Awaitable[list[DeliveryReceipt]]]
    ) -> web.Response:
        try:
            receipts = await read()
            if receipts:
                await self.publish(receipts)
        except IngestError as exc:
            return _refused(provider, exc)
        RECEIVED.labels(provider, Outcome.ACCEPTED if receipts else Outcome.IGNORED).inc()
        return web.json_response({"status": Outcome.ACCEPTED, "receipts": len(receipts)})


RECEIPTS = web.AppKey("receipts", ReceiptGateway)


# ---- endpoints: each reads the gateway from the app (set where the service is wired) ----------


async def whatsapp_verify(request: web.Request) -> web.Response:
    """Meta's subscription check: GET with hub.mode, hub.verify_token, hub.challenge."""
    gateway = request.app[RECEIPTS]
    try:
        challenge = formats.whatsapp_challenge(
            gateway.settings.whatsapp_verify_token.get_secret_value(), request.query
        )
    except IngestError as exc:
        return _refused("whatsapp", exc)
    RECEIVED.labels("whatsapp", Outcome.IGNORED).inc()
    return web.Response(text=challenge)


async def whatsapp(request: web.Request) -> web.Response:
    gateway = request.app[RECEIPTS]

    async def read() -> list[DeliveryReceipt]:
        body = await gateway.body(request)
        return formats.whatsapp(
            gateway.settings.whatsapp_app_secret.get_secret_value(),
            request.headers.get("X-Hub-Signature-256", ""),
            body,
        )

    return await gateway.accept("whatsapp", read)


async def twilio(request: web.Request) -> web.Response:
    gateway = request.app[RECEIPTS]

    async def read() -> list[DeliveryReceipt]:
        form = await gateway.fields(request)
        return formats.twilio(
            gateway.settings.twilio_auth_token.get_secret_value(),
            gateway.public_url + request.raw_path,
            request.headers.get("X-Twilio-Signature", ""),
            form,
            reference_from_token(request.query.get("ref", "")),
        )

    return await gateway.accept("twilio", read)


async def unifonic(request: web.Request) -> web.Response:
    gateway = request.app[RECEIPTS]

    async def read() -> list[DeliveryReceipt]:
        token = gateway.settings.unifonic_receipt_token.get_secret_value()
        offered = request.query.get("token", "")
        if token and formats.same(offered, token):
            return formats.unifonic(token, offered, await gateway.fields(request))
        return formats.unifonic(token, offered, {})  # refuses before reading the body

    return await gateway.accept("unifonic", read)


async def ses(request: web.Request) -> web.Response:
    gateway = request.app[RECEIPTS]
    confirmed = False

    async def read() -> list[DeliveryReceipt]:
        nonlocal confirmed
        message = sns.parse(await gateway.body(request))
        sns.check_topic(message, gateway.settings.ses_topic_arns)
        await gateway.certificates.verify(message)
        if message.Type == "SubscriptionConfirmation":
            await gateway.confirm(message.SubscribeURL or "")
            confirmed = True
            return []
        if message.Type != "Notification":
            return []
        return sns.ses_receipts(message)

    answer = await gateway.accept("ses", read)
    if confirmed:
        return web.json_response({"status": "confirmed"})
    return answer


ROUTES = [
    web.get("/webhooks/whatsapp", whatsapp_verify),
    web.post("/webhooks/whatsapp", whatsapp),
    web.post("/webhooks/twilio", twilio),
    web.post("/webhooks/unifonic", unifonic),
    web.post("/webhooks/ses", ses),
]


def _refused(provider: str, exc: IngestError) -> web.Response:
    RECEIVED.labels(provider, Outcome.REJECTED).inc()
    headers = {"Retry-After": RETRY_AFTER_S} if exc.status == 503 else None
    return web.json_response(
        {"error": exc.code, "detail": exc.detail}, status=exc.status, headers=headers
    )


def init_series() -> None:
    for provider in PROVIDERS:
        for outcome in (Outcome.ACCEPTED, Outcome.IGNORED, Outcome.REJECTED):
            RECEIVED.labels(provider, outcome)
