"""Each provider's receipt format: verify it, then turn it into `DeliveryReceipt`s.

The signed part decides: WhatsApp signs the body, Twilio the URL and its form, SNS its
canonical fields; Unifonic signs nothing, so its DLR URL carries a secret token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.ingest.errors import InvalidSignature, MalformedJson
from services.ingest.receipts.errors import InvalidReceipt, ReceiptsOff
from shared.events import (
    DeliveryReceipt,
    ReceiptStatus,
    event_id_for,
    parse_attempt_reference,
    utcnow,
    validation_summary,
)

Provider = Literal["whatsapp", "unifonic", "twilio", "email"]
MAX_STATUSES = 1000  # per request: what one POST may cost


def receipt(
    provider: Provider, message_id: str, status: ReceiptStatus, error: str = "", reference: str = ""
) -> DeliveryReceipt:
    """The same receipt retried by its provider gets the same event id."""
    attempt_key, order_key = parse_attempt_reference(reference) if reference else (None, None)
    return DeliveryReceipt(
        event_id=event_id_for("delivery.receipt", provider, message_id, status),
        provider=provider,
        provider_message_id=message_id,
        status=status,
        error=error[:300],
        attempt_key=attempt_key,
        order_key=order_key,
        received_at=utcnow(),
    )


def same(offered: str, expected: str) -> bool:
    return hmac.compare_digest(offered.encode(), expected.encode())


def json_body(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise MalformedJson("body is not valid JSON") from None


def invalid(exc: ValidationError, what: str) -> InvalidReceipt:
    return InvalidReceipt(f"not {what}: {validation_summary(exc)}")


# ---- WhatsApp Cloud API status webhooks ------------------------------------------------------


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class WhatsAppError(_Loose):
    code: int | str | None = None
    title: str = Field(default="", max_length=300)


class WhatsAppStatus(_Loose):
    id: str = Field(min_length=1, max_length=256)
    status: str = Field(max_length=32)
    biz_opaque_callback_data: str = Field(default="", max_length=512)
    errors: list[WhatsAppError] = Field(default=[], max_length=10)


class WhatsAppValue(_Loose):
    statuses: list[WhatsAppStatus] = Field(default=[], max_length=MAX_STATUSES)


class WhatsAppChange(_Loose):
    value: WhatsAppValue = WhatsAppValue()


class WhatsAppEntry(_Loose):
    changes: list[WhatsAppChange] = Field(default=[], max_length=100)


class WhatsAppWebhook(_Loose):
    entry: list[WhatsAppEntry] = Field(max_length=100)


def whatsapp_signature(app_secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


WHATSAPP_STATUS: dict[str, ReceiptStatus] = {
    "sent": ReceiptStatus.ACCEPTED,
    "delivered": ReceiptStatus.DELIVERED,
    "read": ReceiptStatus.DELIVERED,
    "failed": ReceiptStatus.FAILED,
}


def whatsapp(app_secret: str, signature: str, body: bytes) -> list[DeliveryReceipt]:
    if not app_secret:
        raise ReceiptsOff("no WhatsApp app secret is configured")
    if not same(signature, whatsapp_signature(app_secret, body)):
        raise InvalidSignature("X-Hub-Signature-256 does not match the body")
    try:
        webhook = WhatsAppWebhook.model_validate(json_body(body))
    except ValidationError as exc:
        raise invalid(exc, "a WhatsApp webhook") from None
    found = []
    for entry in webhook.entry:
        for change in entry.changes:
            for s in change.value.statuses:
                status = WHATSAPP_STATUS.get(s.status)
                if status is None:
                    continue  # e.g. "deleted": says nothing about delivery
                error = ""
                if s.errors:
                    error = f"{s.errors[0].code or ''} {s.errors[0].title}".strip()
                found.append(receipt("whatsapp", s.id, status, error, s.biz_opaque_callback_data))
    return found[:MAX_STATUSES]


def whatsapp_challenge(verify_token: str, query: Mapping[str, str]) -> str:
    """Meta's subscription check: the challenge back, when the token is ours."""
    if not verify_token:
        raise ReceiptsOff("no WhatsApp verify token is configured")
    if query.get("hub.mode") != "subscribe" or not same(
        query.get("hub.verify_token", ""), verify_token
    ):
        raise InvalidSignature("hub.verify_token does not match")
    challenge = query.get("hub.challenge", "")
    if not challenge or len(challenge) > 256:
        raise InvalidReceipt("hub.challenge is missing or too long")
    return challenge


# ---- Twilio status callbacks -----------------------------------------------------------------


def twilio_signature(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    signed = url + "".join(k + params[k] for k in sorted(params))
    return base64.b64encode(
        hmac.new(auth_token.encode(), signed.encode(), hashlib.sha1).digest()
    ).decode()


TWILIO_STATUS: dict[str, ReceiptStatus] = {
    "sent": ReceiptStatus.ACCEPTED,
    "delivered": ReceiptStatus.DELIVERED,
    "read": ReceiptStatus.DELIVERED,
    "failed": ReceiptStatus.FAILED,
    "undelivered": ReceiptStatus.FAILED,
}


def twilio(
    auth_token: str, url: str, signature: str, form: Mapping[str, str], reference: str
) -> list[DeliveryReceipt]:
    """`url` is the callback URL as Twilio called it (our public address, path and query):
    the signature covers it, and its `ref` query parameter is our attempt reference."""
    if not auth_token:
        raise ReceiptsOff("no Twilio auth token is configured")
    if not same(signature, twilio_signature(auth_token, url, form)):
        raise InvalidSignature("X-Twilio-Signature does not match")
    sid, status = form.get("MessageSid", ""), TWILIO_STATUS.get(form.get("MessageStatus", ""))
    if not sid or len(sid) > 64:
        raise InvalidReceipt("MessageSid is missing or too long")
    if status is None:
        return []  # queued, sending, accepted, scheduled: nothing to act on
    return [receipt("twilio", sid, status, form.get("ErrorCode", ""), reference)]


# ---- Unifonic DLRs ---------------------------------------------------------------------------

UNIFONIC_STATUS: dict[str, ReceiptStatus] = {
    "delivered": ReceiptStatus.DELIVERED,
    "undeliverable": ReceiptStatus.FAILED,
    "failed": ReceiptStatus.FAILED,
    "rejected": ReceiptStatus.FAILED,
    "expired": ReceiptStatus.FAILED,
}


def unifonic(token: str, offered: str, fields: Mapping[str, str]) -> list[DeliveryReceipt]:
    if not token:
        raise ReceiptsOff("no Unifonic receipt token is configured")
    if not same(offered, token):
        raise InvalidSignature("the DLR URL's token does not match")
    mid = fields.get("MessageID", "")
    if not mid or len(mid) > 64:
        raise InvalidReceipt("MessageID is missing or too long")
    dlr = fields.get("DLR", fields.get("Status", ""))
    status = UNIFONIC_STATUS.get(dlr.lower())
    if status is None:
        return []
    # the DLR is not documented to carry our CorrelationID: keyed by Unifonic's message id
    return [
        receipt(
            "unifonic",
            mid,
            status,
            dlr if status == ReceiptStatus.FAILED else "",
            fields.get("CorrelationID", ""),
        )
    ]
