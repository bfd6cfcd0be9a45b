"""SES events delivered by SNS over HTTP(S): the signature verified with the signing
certificate (fetched only from an allowed origin), subscriptions confirmed, events read.

SNS signs the canonical string of a message's fields (SignatureVersion 1: RSA SHA1,
2: RSA SHA256) with the key of the certificate at SigningCertURL.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.exceptions import InvalidSignature as BadRsaSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from yarl import URL

from services.ingest.errors import InvalidSignature
from services.ingest.receipts.errors import CertificateUnavailable, ReceiptsOff
from services.ingest.receipts.formats import invalid, json_body, receipt
from shared.events import DeliveryReceipt, ReceiptStatus, reference_from_token

log = logging.getLogger(__name__)

SIGNED = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
SIGNED["UnsubscribeConfirmation"] = SIGNED["SubscriptionConfirmation"]
HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}
MAX_CERTIFICATE_BYTES = 16 * 1024


class SnsMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    Type: str = Field(max_length=64)
    MessageId: str = Field(max_length=128)
    TopicArn: str = Field(max_length=256)
    Message: str = Field(max_length=256 * 1024)
    Timestamp: str = Field(max_length=64)
    SignatureVersion: str = Field(max_length=4)
    Signature: str = Field(max_length=4096)
    SigningCertURL: str = Field(max_length=1024)
    Subject: str | None = Field(default=None, max_length=256)
    SubscribeURL: str | None = Field(default=None, max_length=2048)
    Token: str | None = Field(default=None, max_length=2048)


def canonical(message: SnsMessage) -> bytes:
    fields = message.model_dump()
    return "".join(
        f"{name}\n{fields[name]}\n" for name in SIGNED[message.Type] if fields.get(name) is not None
    ).encode()


class Certificates:
    """SNS signing keys by certificate URL, fetched once each, from allowed origins only."""

    def __init__(self, session: aiohttp.ClientSession, origin_pattern: str):
        self.session = session
        self.origin = re.compile(origin_pattern)
        self.keys: dict[str, rsa.RSAPublicKey] = {}

    def allowed(self, url: str, suffix: str = "") -> bool:
        try:
            parsed = URL(url)
            origin = str(parsed.origin())
        except ValueError:
            return False
        return bool(self.origin.fullmatch(origin)) and parsed.path.endswith(suffix)

    async def key(self, url: str) -> rsa.RSAPublicKey:
        if url in self.keys:
            return self.keys[url]
        if not self.allowed(url, ".pem"):
            raise InvalidSignature("SigningCertURL is not an SNS certificate")
        try:
            async with self.session.get(url, allow_redirects=False) as resp:
                pem = await resp.content.read(MAX_CERTIFICATE_BYTES + 1)
                ok = resp.status == 200
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("SNS certificate could not be fetched: %r", exc)
            raise CertificateUnavailable("the signing certificate could not be fetched") from None
        if not ok or len(pem) > MAX_CERTIFICATE_BYTES:
            raise CertificateUnavailable("the signing certificate could not be fetched")
        try:
            key = x509.load_pem_x509_certificate(pem).public_key()
        except ValueError:
            raise InvalidSignature("SigningCertURL does not hold a certificate") from None
        if not isinstance(key, rsa.RSAPublicKey):
            raise InvalidSignature("the signing certificate's key is not RSA")
        if len(self.keys) > 32:  # SNS rotates its certificate rarely: a bound, not a cache policy
            self.keys.clear()
        self.keys[url] = key
        return key

    async def verify(self, message: SnsMessage) -> None:
        algorithm = HASHES.get(message.SignatureVersion)
        if algorithm is None or message.Type not in SIGNED:
            raise InvalidSignature("unknown SignatureVersion or message Type")
        try:
            signature = base64.b64decode(message.Signature, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidSignature("Signature is not base64") from None
        key = await self.key(message.SigningCertURL)
        try:
            key.verify(signature, canonical(message), padding.PKCS1v15(), algorithm())
        except BadRsaSignature:
            raise InvalidSignature("the SNS signature does not match") from None


def parse(body: bytes) -> SnsMessage:
    try:
        return SnsMessage.model_validate(json_body(body))
    except ValidationError as exc:
        raise invalid(exc, "an SNS message") from None


def check_topic(message: SnsMessage, topics: list[str]) -> None:
    if not topics:
        raise ReceiptsOff("no SNS topic for SES events is configured")
    if message.TopicArn not in topics:
        raise InvalidSignature("the SNS topic is not ours")


class SesMail(BaseModel):
    model_config = ConfigDict(extra="ignore")

    messageId: str = Field(min_length=1, max_length=256)
    tags: dict[str, list[str]] = {}


class SesBounce(BaseModel):
    model_config = ConfigDict(extra="ignore")

    bounceType: str = ""
    bounceSubType: str = ""


class SesEvent(BaseModel):
    model_config = ConfigDict(extra="ignore")

    eventType: str | None = None
    notificationType: str | None = None  # the same events without event publishing
    mail: SesMail
    bounce: SesBounce | None = None


REFERENCE_TAG = "tasleem-ref"


def ses_receipts(message: SnsMessage) -> list[DeliveryReceipt]:
    raw: Any = json_body(message.Message.encode())
    try:
        event = SesEvent.model_validate(raw)
    except ValidationError as exc:
        raise invalid(exc, "an SES event") from None
    kind = event.eventType or event.notificationType or ""
    status: ReceiptStatus | None = None
    error = ""
    if kind == "Delivery":
        status = ReceiptStatus.DELIVERED
    elif kind == "Send":
        status = ReceiptStatus.ACCEPTED
    elif kind == "Bounce" and event.bounce is not None and event.bounce.bounceType == "Permanent":
        status, error = ReceiptStatus.FAILED, f"bounce {event.bounce.bounceSubType}".strip()
    elif kind == "Reject":
        status, error = ReceiptStatus.FAILED, "rejected by SES"
    if status is None:
        return []  # transient bounces, complaints, opens: not a delivery outcome
    tags = event.mail.tags.get(REFERENCE_TAG) or [""]
    return [receipt("email", event.mail.messageId, status, error, reference_from_token(tags[0]))]
