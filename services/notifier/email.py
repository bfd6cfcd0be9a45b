"""Amazon SES v2 SendEmail (simple content), signed with AWS Signature Version 4."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from services.notifier.providers import (
    TRANSPORT_ERRORS,
    Failure,
    Outbound,
    ProviderError,
    transport_error,
)
from shared.events import reference_token

PATH = "/v2/email/outbound-emails"
REFERENCE_TAG = "tasleem-ref"
TAG_MAX = 256


def tag_value(reference: str) -> str:
    """Our reference as an SES tag value, which allows only letters, digits, '_', '-', '.' and
    '@': base64url; past the 256 characters a value may have, the attempt key alone."""
    value = reference_token(reference)
    return value if len(value) <= TAG_MAX else reference_token(reference.split(".")[0])


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sigv4_headers(
    host: str, body: bytes, access_key: str, secret_key: str, region: str, now: datetime
) -> dict[str, str]:
    """The headers that sign a POST to SES v2 (service `ses`)."""
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    payload_hash = hashlib.sha256(body).hexdigest()
    signed = "content-type;host;x-amz-date"
    canonical = "\n".join(
        [
            "POST",
            PATH,
            "",
            f"content-type:application/json\nhost:{host}\nx-amz-date:{amz_date}\n",
            signed,
            payload_hash,
        ]
    )
    scope = f"{day}/{region}/ses/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = _hmac(
        _hmac(_hmac(_hmac(f"AWS4{secret_key}".encode(), day), region), "ses"), "aws4_request"
    )
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/json",
        "X-Amz-Date": amz_date,
        "Authorization": (
            f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
            f"SignedHeaders={signed}, Signature={signature}"
        ),
    }


class SesEmail:
    channel = "email"
    name = "email"

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        sender: str,
        access_key: str = "",
        secret_key: str = "",
        region: str = "me-south-1",
        configuration_set: str = "",
    ):
        self.session = session
        self.url = f"{base_url.rstrip('/')}{PATH}"
        self.host = urlsplit(self.url).netloc
        self.sender = sender
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        # its event destination (SNS, to the gateway) sends the receipts, with our tags
        self.configuration_set = configuration_set

    async def send(self, message: Outbound) -> str:
        extra: dict[str, Any] = {}
        if self.configuration_set:
            extra["ConfigurationSetName"] = self.configuration_set
        if message.reference:
            extra["EmailTags"] = [{"Name": REFERENCE_TAG, "Value": tag_value(message.reference)}]
        body = json.dumps(
            {
                **extra,
                "FromEmailAddress": self.sender,
                "Destination": {"ToAddresses": [message.to]},
                "Content": {
                    "Simple": {
                        "Subject": {"Data": message.subject, "Charset": "UTF-8"},
                        "Body": {
                            "Text": {"Data": message.text, "Charset": "UTF-8"},
                            "Html": {"Data": message.html, "Charset": "UTF-8"},
                        },
                    }
                },
            },
            ensure_ascii=False,
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self.access_key:
            headers = sigv4_headers(
                self.host, body, self.access_key, self.secret_key, self.region, datetime.now(UTC)
            )
        try:
            async with self.session.post(self.url, data=body, headers=headers) as resp:
                payload: Any = await resp.json(content_type=None)
                status = resp.status
        except TRANSPORT_ERRORS as exc:
            raise transport_error(self.name, exc) from None
        payload = payload if isinstance(payload, dict) else {}
        if status == 200 and payload.get("MessageId"):
            return str(payload["MessageId"])
        kind_name = str(payload.get("__type") or resp.headers.get("x-amzn-ErrorType") or status)
        if status == 429 or "TooManyRequests" in kind_name:
            raise ProviderError(self.name, kind_name, "throttled", "busy")
        if status >= 500:
            raise ProviderError(
                self.name, kind_name, str(payload.get("message", "")), "unavailable"
            )
        kind: Failure = (
            "recipient"
            if "MessageRejected" in kind_name or "BadRequest" in kind_name
            else "rejected"
        )
        raise ProviderError(self.name, kind_name, str(payload.get("message", "")), kind)
