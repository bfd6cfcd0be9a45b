"""Delivery receipts the message providers POST back a little after accepting a message."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from deploy.sandbox.faults import FAULTS

logger = logging.getLogger(__name__)

DELAY_S = 0.05  # receipts follow the acceptance, never precede it


class Receipts:
    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.sent = 0

    def post(self, url: str, *, body: bytes, headers: dict[str, str]) -> None:
        task = asyncio.create_task(self._post(url, body, headers))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        await asyncio.sleep(DELAY_S)
        if self.session is None:
            return
        try:
            async with self.session.post(url, data=body, headers=headers) as resp:
                if resp.status >= 400:
                    logger.warning("receipt to %s answered %d", url, resp.status)
            self.sent += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.warning("receipt to %s failed: %r", url, exc)


RECEIPTS = web.AppKey("receipts", Receipts)


async def receipts_client(app: web.Application) -> AsyncIterator[None]:
    receipts = app[RECEIPTS]
    receipts.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
    yield
    for task in list(receipts.tasks):
        task.cancel()
    await asyncio.gather(*receipts.tasks, return_exceptions=True)
    await receipts.session.close()


def failing(request: web.Request, party: str) -> bool:
    return request.app[FAULTS].state[party].fail_after_accept


def whatsapp_status(
    request: web.Request, url: str, app_secret: str, phone_number_id: str, wamid: str, wa_id: str
) -> None:
    """A Cloud API status webhook, signed `X-Hub-Signature-256: sha256=<hex>`."""
    status: dict[str, object] = {
        "id": wamid,
        "recipient_id": wa_id,
        "status": "delivered",
        "timestamp": str(int(asyncio.get_running_loop().time())),
    }
    if failing(request, "whatsapp"):
        status["status"] = "failed"
        status["errors"] = [{"code": 131049, "title": "Message not delivered"}]
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
                            "statuses": [status],
                        },
                    }
                ],
            }
        ],
    }
    body = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
    request.app[RECEIPTS].post(
        url,
        body=body,
        headers={"Content-Type": "application/json", "X-Hub-Signature-256": signature},
    )


def unifonic_dlr(request: web.Request, url: str, message_id: str) -> None:
    dlr = "Undeliverable" if failing(request, "unifonic") else "Delivered"
    body = f"MessageID={message_id}&DLR={dlr}".encode()
    request.app[RECEIPTS].post(
        url, body=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )


def twilio_status(request: web.Request, url: str, auth_token: str, sid: str, to: str) -> None:
    """A status callback signed `X-Twilio-Signature` (HMAC-SHA1 of the URL and sorted params)."""
    failed = failing(request, "twilio")
    params = {
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
    )
