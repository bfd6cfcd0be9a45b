"""SMS gateways: Unifonic's REST API and Twilio's Messages resource (both form-encoded)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import aiohttp

from services.notifier.providers import (
    TRANSPORT_ERRORS,
    Failure,
    Outbound,
    ProviderError,
    transport_error,
)
from shared.events import reference_token

UNIFONIC_RECIPIENT = {"ER-02", "ER-05"}  # invalid number, no route to it
TWILIO_RECIPIENT = {21211, 21610, 21614, 30003, 30005, 30006}  # invalid, unsubscribed, unreachable


def _http_kind(status: int) -> Failure | None:
    if status == 429:
        return "busy"
    if status >= 500:
        return "unavailable"
    return None


class Unifonic:
    """`POST /rest/SMS/messages`; our attempt key travels as CorrelationID, so a resend after
    a crash is answered ER-09 (duplicate) when the first one got through."""

    channel = "sms"
    name = "unifonic"

    def __init__(self, session: aiohttp.ClientSession, base_url: str, app_sid: str, sender: str):
        self.session = session
        self.url = f"{base_url.rstrip('/')}/rest/SMS/messages"
        self.app_sid = app_sid
        self.sender = sender

    async def send(self, message: Outbound) -> str:
        form = {
            "AppSid": self.app_sid,
            "SenderID": self.sender,
            "Recipient": message.to.lstrip("+"),
            "Body": message.text,
            "CorrelationID": message.key,
        }
        try:
            async with self.session.post(self.url, data=form) as resp:
                payload: Any = await resp.json(content_type=None)
                status = resp.status
        except TRANSPORT_ERRORS as exc:
            raise transport_error(self.name, exc) from None
        payload = payload if isinstance(payload, dict) else {}
        code = str(payload.get("errorCode") or status)
        if payload.get("success") and isinstance(payload.get("data"), dict):
            return str(payload["data"]["MessageID"])
        if code == "ER-09":
            # this CorrelationID was already accepted: the buyer has the message
            return f"correlation:{message.key}"
        kind = _http_kind(status) or ("recipient" if code in UNIFONIC_RECIPIENT else "rejected")
        if code == "ER-10":
            kind = "unavailable"
        raise ProviderError(self.name, code, str(payload.get("message", "")), kind)


def status_callback(base: str, reference: str) -> str:
    """The callback URL for one message: our reference in its query, base64url so that no
    requoting changes the URL Twilio signs, and connection overrides asking Twilio to retry a
    failed callback."""
    query = f"?ref={reference_token(reference)}" if reference else ""
    return f"{base}{query}#rc=5&rp=all"


class Twilio:
    channel = "sms"
    name = "twilio"

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        account_sid: str,
        auth_token: str,
        sender: str,
        status_callback: str | None = None,
    ):
        self.session = session
        self.url = f"{base_url.rstrip('/')}/2010-04-01/Accounts/{account_sid}/Messages.json"
        self.headers = {"Authorization": aiohttp.encode_basic_auth(account_sid, auth_token)}
        self.sender = sender
        self.status_callback = status_callback

    async def send(self, message: Outbound) -> str:
        form = {"To": message.to, "From": self.sender, "Body": message.text}
        if self.status_callback:
            form["StatusCallback"] = status_callback(self.status_callback, message.reference)
        try:
            async with self.session.post(self.url, data=form, headers=self.headers) as resp:
                payload: Any = await resp.json(content_type=None)
                status = resp.status
        except TRANSPORT_ERRORS as exc:
            raise transport_error(self.name, exc) from None
        payload = payload if isinstance(payload, dict) else {}
        if status in (200, 201) and payload.get("sid"):
            return str(payload["sid"])
        code = payload.get("code")
        kind = _http_kind(status)
        if code == 20429:
            kind = "busy"
        if kind is None:
            kind = "recipient" if code in TWILIO_RECIPIENT else "rejected"
        # Twilio's message may quote the number, never the body
        raise ProviderError(self.name, str(code or status), str(payload.get("message", "")), kind)

    async def lookup(self, message: Outbound, since: datetime) -> str | None:
        """The sid of a message already sent to this recipient with this text since `since`
        (Twilio has no idempotency key: after a crash, its message list is the record)."""
        params = {
            "To": message.to,
            "DateSent>": since.astimezone(UTC).strftime("%Y-%m-%d"),
            "PageSize": "100",
        }
        try:
            async with self.session.get(self.url, params=params, headers=self.headers) as resp:
                payload: Any = await resp.json(content_type=None)
                status = resp.status
        except TRANSPORT_ERRORS as exc:
            raise transport_error(self.name, exc) from None
        if status != 200 or not isinstance(payload, dict):
            raise ProviderError(self.name, str(status), "message list unavailable", "unavailable")
        for found in payload.get("messages") or []:
            if isinstance(found, dict) and found.get("body") == message.text and found.get("sid"):
                return str(found["sid"])
        return None
