"""Amazon SES v2 SendEmail (simple content), signed with AWS Signature Version 4 (botocore)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

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


def sigv4_headers(
    url: str, body: bytes, access_key: str, secret_key: str, region: str
) -> dict[str, str]:
    """The headers that sign a POST to SES v2 (service `ses`), by botocore's own SigV4 signer:
    the code AWS's SDKs sign with, rather than a hand-written copy of the algorithm."""
    request = AWSRequest(
        method="POST", url=url, data=body, headers={"Content-Type": "application/json"}
    )
    SigV4Auth(Credentials(access_key, secret_key), "ses", region).add_auth(request)
    return {name: str(value) for name, value in request.headers.items()}


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
            headers = sigv4_headers(self.url, body, self.access_key, self.secret_key, self.region)
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
