"""The sandbox's receipts as the providers send them: Meta's verification request first (no
status webhook before it succeeded), our `biz_opaque_callback_data` echoed, retries of a
receipt not answered 2xx, Twilio's connection overrides."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from deploy.sandbox.app import init_app
from deploy.sandbox.config import SandboxConfig
from deploy.sandbox.receipts import RECEIPTS, SUBSCRIPTIONS, twilio_retry


class Subscriber:
    """A callback URL that answers the challenge only once `ready`, and refuses the first
    `refuse` status webhooks with a 503."""

    def __init__(self, refuse: int = 0) -> None:
        self.ready = False
        self.refuse = refuse
        self.challenges = 0
        self.statuses: list[dict[str, Any]] = []

    async def verify(self, request: web.Request) -> web.Response:
        self.challenges += 1
        if not self.ready or request.query.get("hub.verify_token") != "vt":
            return web.json_response({"error": "forbidden"}, status=403)
        return web.Response(text=request.query["hub.challenge"])

    async def status(self, request: web.Request) -> web.Response:
        if self.refuse:
            self.refuse -= 1
            return web.json_response({"error": "busy"}, status=503)
        self.statuses.append(json.loads(await request.read()))
        return web.json_response({"ok": True})


async def until(check: Any, limit_s: float = 10) -> None:
    deadline = time.monotonic() + limit_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


SEND = {
    "messaging_product": "whatsapp",
    "to": "966551112222",
    "type": "template",
    "template": {
        "name": "tasleem_code_delivery",
        "language": {"code": "en"},
        "components": [
            {"type": "body", "parameters": [{"type": "text", "text": t} for t in "abc"]}
        ],
    },
    "biz_opaque_callback_data": "0123456789abcdef0123456789abcdef.standard:s:1",
}


async def test_statuses_wait_for_meta_s_verification_and_are_retried_until_answered():
    subscriber = Subscriber(refuse=2)
    hooks = web.Application()
    hooks.router.add_get("/webhooks/whatsapp", subscriber.verify)
    hooks.router.add_post("/webhooks/whatsapp", subscriber.status)
    async with TestServer(hooks) as hook_server:
        config = SandboxConfig(
            gateway="http://127.0.0.1:1",
            stores=[],
            whatsapp={
                "token": "t",
                "phone_number_id": "1",
                "verify_token": "vt",
                "status_webhook_url": str(hook_server.make_url("/webhooks/whatsapp")),
            },
        )
        app = init_app(config)
        async with TestClient(TestServer(app)) as sandbox:
            auth = {"Authorization": "Bearer t"}
            await until(lambda: subscriber.challenges >= 2)
            assert not app[SUBSCRIPTIONS].whatsapp_verified
            assert (await sandbox.post("/v21.0/1/messages", json=SEND, headers=auth)).status == 200
            await asyncio.sleep(0.3)
            assert subscriber.statuses == []  # Meta does not call an unverified URL

            subscriber.ready = True
            await until(lambda: app[SUBSCRIPTIONS].whatsapp_verified)
            assert (await sandbox.post("/v21.0/1/messages", json=SEND, headers=auth)).status == 200
            await until(lambda: bool(subscriber.statuses))
            (status,) = subscriber.statuses[0]["entry"][0]["changes"][0]["value"]["statuses"]
            assert status["biz_opaque_callback_data"] == SEND["biz_opaque_callback_data"]
            assert app[RECEIPTS].retried == 2  # two 503s, then accepted

            too_long = {**SEND, "biz_opaque_callback_data": "x" * 513}
            assert (
                await sandbox.post("/v21.0/1/messages", json=too_long, headers=auth)
            ).status == 400


async def test_statuses_of_messages_sent_together_come_in_one_webhook():
    subscriber = Subscriber()
    subscriber.ready = True
    hooks = web.Application()
    hooks.router.add_get("/webhooks/whatsapp", subscriber.verify)
    hooks.router.add_post("/webhooks/whatsapp", subscriber.status)
    async with TestServer(hooks) as hook_server:
        config = SandboxConfig(
            gateway="http://127.0.0.1:1",
            stores=[],
            whatsapp={
                "token": "t",
                "phone_number_id": "1",
                "verify_token": "vt",
                "status_webhook_url": str(hook_server.make_url("/webhooks/whatsapp")),
            },
        )
        app = init_app(config)
        async with TestClient(TestServer(app)) as sandbox:
            auth = {"Authorization": "Bearer t"}
            await until(lambda: app[SUBSCRIPTIONS].whatsapp_verified)
            opaque = [f"{n:032x}.standard:s:{n}" for n in range(3)]
            answers = await asyncio.gather(
                *(
                    sandbox.post(
                        "/v21.0/1/messages",
                        json={**SEND, "biz_opaque_callback_data": o},
                        headers=auth,
                    )
                    for o in opaque
                )
            )
            assert [a.status for a in answers] == [200, 200, 200]
            await until(lambda: bool(subscriber.statuses))
            await asyncio.sleep(0.3)  # no second webhook follows
            (webhook,) = subscriber.statuses
            statuses = webhook["entry"][0]["changes"][0]["value"]["statuses"]
            assert sorted(s["biz_opaque_callback_data"] for s in statuses) == opaque
            assert app[RECEIPTS].sent == 1


def test_twilio_retries_as_the_callback_url_s_overrides_say():
    assert twilio_retry("").attempts == 1 and not twilio_retry("").on_http_error
    assert twilio_retry("rc=5&rp=all").attempts == 5 and twilio_retry("rc=5&rp=all").on_http_error
    assert twilio_retry("rc=99").attempts == 5 and twilio_retry("rc=x").attempts == 1
