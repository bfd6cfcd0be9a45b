import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from deploy.sandbox.app import init_app
from deploy.sandbox.config import SandboxConfig
from deploy.sandbox.stores import sign

SECRET = "whsec_" + base64.b64encode(b"sandbox-test-secret-0123456789ab").decode()
WA_TOKEN = "wa-token"
PHONE = "+966501234567"
TWILIO_AUTH = {"Authorization": aiohttp.encode_basic_auth("AC123", "tw-token")}

Sandbox = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


class FakeGateway:
    """Records webhooks and checks their Standard Webhooks signature independently."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.status = 202

    async def receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        msg_id = request.headers["webhook-id"]
        timestamp = request.headers["webhook-timestamp"]
        key = base64.b64decode(SECRET.split("_", 1)[1])
        expected = base64.b64encode(
            hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
        ).decode()
        offered = [s.split(",", 1)[1] for s in request.headers["webhook-signature"].split(" ")]
        self.received.append(
            {
                "path": request.path,
                "id": msg_id,
                "timestamp": int(timestamp),
                "body": body,
                "valid": any(hmac.compare_digest(expected, s) for s in offered),
                "content_type": request.content_type,
            }
        )
        return web.json_response({"accepted": True}, status=self.status)


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[FakeGateway, str]]:
    fake = FakeGateway()
    app = web.Application()
    app.router.add_post("/webhooks/standard/{store_id}", fake.receive)
    server = TestServer(app)
    await server.start_server()
    try:
        yield fake, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    clients: list[TestClient[web.Request, web.Application]] = []

    async def start(gateway_url: str = "http://127.0.0.1:9", **overrides: Any) -> TestClient:
        raw: dict[str, Any] = {
            "gateway": gateway_url,
            "stores": [{"id": "demo-store", "name": "Demo Store", "secret": SECRET}],
            "whatsapp": {"token": WA_TOKEN, "phone_number_id": "1234567890"},
            "unifonic": {"app_sid": "uni-sid"},
            "twilio": {"account_sid": "AC123", "auth_token": "tw-token"},
            "seed": 7,
        }
        raw.update(overrides)
        client = TestClient(TestServer(init_app(SandboxConfig.model_validate(raw))))
        await client.start_server()
        clients.append(client)
        return client

    try:
        yield start
    finally:
        for client in clients:
            await client.close()


def template(lang: str, *values: str, name: str = "tasleem_code_delivery") -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "to": PHONE.removeprefix("+"),
        "type": "template",
        "template": {
            "name": name,
            "language": {"code": lang},
            "components": [
                {"type": "body", "parameters": [{"type": "text", "text": v} for v in values]}
            ],
        },
    }


async def send_whatsapp(
    client: TestClient, body: dict[str, Any], token: str = WA_TOKEN
) -> tuple[int, Any]:
    reply = await client.post(
        "/v21.0/1234567890/messages", json=body, headers={"Authorization": f"Bearer {token}"}
    )
    return reply.status, await reply.json()


# --- stores -------------------------------------------------------------------------------


def test_sign_matches_the_standard_webhooks_test_vector() -> None:
    signature = sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


ORDER = {
    "lines": [{"sku": "SKU-A", "quantity": 2, "title": "Game Card"}],
    "customer": {"name": "Sara", "phone": PHONE, "email": "sara@example.com", "locale": "ar"},
}


async def test_order_is_signed_sent_and_retried_with_the_same_id_and_body(
    sandbox: Sandbox, gateway: tuple[FakeGateway, str]
) -> None:
    fake, url = gateway
    client = await sandbox(url)

    first = await client.post("/stores/demo-store/orders", json=ORDER)
    assert first.status == 200
    answer = await first.json()
    assert answer["status"] == 202 and answer["gateway"] == {"accepted": True}
    order_id = answer["order_id"]
    assert order_id.startswith("SBX-")

    sent = fake.received[0]
    assert sent["path"] == "/webhooks/standard/demo-store"
    assert sent["valid"] and sent["content_type"] == "application/json"
    assert sent["id"].startswith("msg_")
    assert abs(sent["timestamp"] - time.time()) < 10
    body = json.loads(sent["body"])
    assert body["type"] == "order.paid"
    assert body["data"]["order_id"] == order_id
    assert body["data"]["currency"] == "SAR"
    assert body["data"]["total"] == "100.00"
    assert body["data"]["customer"] == ORDER["customer"]
    assert body["data"]["lines"] == [{"sku": "SKU-A", "quantity": 2, "title": "Game Card"}]
    assert body["data"]["paid_at"].endswith("Z") and "." in body["data"]["paid_at"]

    retry = await client.post("/stores/demo-store/orders", json={"order_id": order_id})
    assert (await retry.json())["order_id"] == order_id
    again = fake.received[1]
    assert again["valid"] and again["id"] == sent["id"] and again["body"] == sent["body"]

    other = await client.post("/stores/demo-store/orders", json=ORDER)
    assert (await other.json())["order_id"] != order_id
    assert fake.received[2]["id"] != sent["id"]


async def test_cancel_sends_a_signed_cancelled_event(
    sandbox: Sandbox, gateway: tuple[FakeGateway, str]
) -> None:
    fake, url = gateway
    client = await sandbox(url)
    order_id = (await (await client.post("/stores/demo-store/orders", json=ORDER)).json())[
        "order_id"
    ]
    reply = await client.post(
        f"/stores/demo-store/orders/{order_id}/cancel", json={"reason": "fraud"}
    )
    assert reply.status == 200
    body = json.loads(fake.received[-1]["body"])
    assert fake.received[-1]["valid"]
    assert body["type"] == "order.cancelled"
    assert body["data"]["order_id"] == order_id and body["data"]["reason"] == "fraud"
    missing = await client.post("/stores/demo-store/orders/nope/cancel")
    assert missing.status == 404


async def test_store_errors_are_json(sandbox: Sandbox) -> None:
    client = await sandbox("http://127.0.0.1:9")
    unknown = await client.post("/stores/nope/orders", json=ORDER)
    assert unknown.status == 404 and "error" in await unknown.json()
    broken = await client.post("/stores/demo-store/orders", data=b"{not json")
    assert broken.status == 400 and "error" in await broken.json()
    unreachable = await client.post("/stores/demo-store/orders", json=ORDER)
    assert unreachable.status == 502
    answer = await unreachable.json()
    assert answer["status"] is None and answer["order_id"].startswith("SBX-")


# --- whatsapp -----------------------------------------------------------------------------


async def test_whatsapp_template_renders_ar_and_en_into_the_inbox(sandbox: Sandbox) -> None:
    client = await sandbox()
    status, answer = await send_whatsapp(client, template("ar", "Demo Store", "Game Card", "X-1"))
    assert status == 200
    assert answer["contacts"] == [{"input": "966501234567", "wa_id": "966501234567"}]
    assert answer["messages"][0]["id"].startswith("wamid.")
    en = template("en", "Demo Store", "Game Card", "X-2")
    en["to"] = PHONE
    status, _ = await send_whatsapp(client, en)
    assert status == 200

    inbox = await (await client.get("/inbox", params={"to": PHONE})).json()
    ar_msg, en_msg = inbox["messages"]
    assert ar_msg["channel"] == "whatsapp" and ar_msg["provider"] == "whatsapp"
    assert ar_msg["to"] == PHONE
    assert ar_msg["id"] == answer["messages"][0]["id"]
    assert ar_msg["text"] == (
        "Demo Store: رمز Game Card الخاص بك هو X-1. استخدمه في تطبيق المتجر. شكراً لطلبك!"
    )
    assert en_msg["text"] == (
        "Demo Store: your Game Card code is X-2. Redeem it in the store app. "
        "Thank you for your order!"
    )
    # an unescaped "+" in the query string arrives as a space
    unescaped = await (await client.get("/inbox?to=+966501234567")).json()
    assert len(unescaped["messages"]) == 2


async def test_whatsapp_errors(sandbox: Sandbox) -> None:
    client = await sandbox()
    status, answer = await send_whatsapp(client, template("ar", "a", "b", "c"), token="wrong")
    assert (status, answer["error"]["code"]) == (401, 190)
    assert answer["error"]["type"] == "OAuthException"

    not_on_wa = template("ar", "a", "b", "c")
    not_on_wa["to"] = "966500000000"
    status, answer = await send_whatsapp(client, not_on_wa)
    assert (status, answer["error"]["code"]) == (400, 131026)

    status, answer = await send_whatsapp(client, template("ar", "a", "b"))
    assert (status, answer["error"]["code"]) == (400, 132000)
    status, answer = await send_whatsapp(client, template("ar", "a", "b", "c", name="nope"))
    assert (status, answer["error"]["code"]) == (400, 132000)
    status, answer = await send_whatsapp(client, template("fr", "a", "b", "c"))
    assert (status, answer["error"]["code"]) == (400, 132001)

    text = {"messaging_product": "whatsapp", "to": "966501234567", "type": "text"}
    status, answer = await send_whatsapp(client, {**text, "text": {"body": "hi"}})
    assert (status, answer["error"]["code"]) == (400, 131047)

    reply = await client.post(
        "/v21.0/1234567890/messages",
        data=b"[broken",
        headers={"Authorization": f"Bearer {WA_TOKEN}"},
    )
    assert reply.status == 400 and (await reply.json())["error"]["code"] == 100
    assert (await (await client.get("/inbox")).json())["messages"] == []


# --- faults -------------------------------------------------------------------------------


async def test_party_down_answers_its_native_503_then_recovers(sandbox: Sandbox) -> None:
    client = await sandbox()
    reply = await client.put("/faults/whatsapp", json={"down": True, "latency_ms": 10})
    assert reply.status == 200
    status, answer = await send_whatsapp(client, template("en", "a", "b", "c"))
    assert (status, answer["error"]["code"]) == (503, 131016)

    faults = await (await client.get("/faults")).json()
    assert faults["whatsapp"] == {
        "down": True,
        "error_rate": 0.0,
        "latency_ms": 10,
        "charge_then_timeout": False,
        "fail_after_accept": False,
    }
    assert faults["unifonic"]["down"] is False

    await client.put("/faults/whatsapp", json={"down": False})
    assert (await (await client.get("/faults")).json())["whatsapp"]["latency_ms"] == 10
    status, _ = await send_whatsapp(client, template("en", "a", "b", "c"))
    assert status == 200

    await client.put("/faults/unifonic", json={"down": True})
    reply = await client.post("/rest/SMS/messages", data={"AppSid": "uni-sid"})
    assert reply.status == 503 and (await reply.json())["errorCode"] == "ER-10"


async def test_error_rate_one_fails_every_request(sandbox: Sandbox) -> None:
    client = await sandbox()
    await client.put("/faults/twilio", json={"error_rate": 1.0})
    for _ in range(5):
        reply = await client.post(
            "/2010-04-01/Accounts/AC123/Messages.json",
            data={"To": PHONE, "From": "Tasleem", "Body": "hi"},
            headers=TWILIO_AUTH,
        )
        assert reply.status == 503 and (await reply.json())["code"] == 20503
    await client.put("/faults/twilio", json={"error_rate": 0.0})
    assert (await client.get("/inbox")).status == 200


async def test_fault_control_validates(sandbox: Sandbox) -> None:
    client = await sandbox()
    assert (await client.put("/faults/nope", json={"down": True})).status == 404
    assert (await client.put("/faults/email", json={"error_rate": 2})).status == 400
    assert (await client.put("/faults/email", json={"charge_then_timeout": True})).status == 400
    assert (await client.put("/faults/email", data=b"{")).status == 400


# --- sms ----------------------------------------------------------------------------------


async def test_unifonic_send_and_duplicate_correlation_id(sandbox: Sandbox) -> None:
    client = await sandbox()
    form = {
        "AppSid": "uni-sid",
        "SenderID": "Tasleem",
        "Recipient": "966501234567",
        "Body": "رمزك ABC",
        "CorrelationID": "order-1",
    }
    reply = await client.post("/rest/SMS/messages", data=form)
    answer = await reply.json()
    assert reply.status == 200 and answer["success"] and answer["errorCode"] == "ER-00"
    assert isinstance(answer["data"]["MessageID"], int)
    assert answer["data"]["Status"] == "Sent"

    duplicate = await client.post("/rest/SMS/messages", data=form)
    assert duplicate.status == 400 and (await duplicate.json())["errorCode"] == "ER-09"
    bad_sid = await client.post("/rest/SMS/messages", data={**form, "AppSid": "x"})
    assert bad_sid.status == 401 and (await bad_sid.json())["errorCode"] == "ER-03"
    bad_number = await client.post("/rest/SMS/messages", data={**form, "Recipient": "12"})
    assert bad_number.status == 400 and (await bad_number.json())["errorCode"] == "ER-02"

    inbox = (await (await client.get("/inbox", params={"to": PHONE})).json())["messages"]
    assert [(m["channel"], m["provider"], m["text"]) for m in inbox] == [
        ("sms", "unifonic", "رمزك ABC")
    ]


async def test_twilio_send_auth_and_invalid_number(sandbox: Sandbox) -> None:
    client = await sandbox()
    url = "/2010-04-01/Accounts/AC123/Messages.json"
    form = {"To": PHONE, "From": "Tasleem", "Body": "code ABC"}
    reply = await client.post(url, data=form, headers=TWILIO_AUTH)
    answer = await reply.json()
    assert reply.status == 201 and answer["status"] == "queued"
    assert answer["sid"].startswith("SM") and len(answer["sid"]) == 34
    assert (answer["to"], answer["from"], answer["body"]) == (PHONE, "Tasleem", "code ABC")

    invalid = await client.post(url, data={**form, "To": "0501234567"}, headers=TWILIO_AUTH)
    assert invalid.status == 400 and (await invalid.json())["code"] == 21211
    wrong = await client.post(
        url,
        data=form,
        headers={"Authorization": aiohttp.encode_basic_auth("AC123", "nope")},
    )
    assert wrong.status == 401 and (await wrong.json())["code"] == 20003

    inbox = (await (await client.get("/inbox", params={"to": PHONE})).json())["messages"]
    assert [(m["provider"], m["text"]) for m in inbox] == [("twilio", "code ABC")]


# --- email --------------------------------------------------------------------------------


async def test_ses_send_and_bad_request(sandbox: Sandbox) -> None:
    client = await sandbox()
    email = {
        "FromEmailAddress": "orders@tasleem.example",
        "Destination": {"ToAddresses": ["sara@example.com"]},
        "Content": {
            "Simple": {
                "Subject": {"Data": "Your code"},
                "Body": {"Text": {"Data": "ABC-123"}, "Html": {"Data": "<b>ABC-123</b>"}},
            }
        },
    }
    reply = await client.post("/v2/email/outbound-emails", json=email)
    assert reply.status == 200
    message_id = (await reply.json())["MessageId"]
    inbox = (await (await client.get("/inbox", params={"to": "sara@example.com"})).json())[
        "messages"
    ]
    assert inbox == [
        {
            "channel": "email",
            "provider": "email",
            "to": "sara@example.com",
            "text": "Your code\n\nABC-123",
            "at": inbox[0]["at"],
            "id": message_id,
        }
    ]

    missing = await client.post("/v2/email/outbound-emails", json={"FromEmailAddress": "a@b.co"})
    assert missing.status == 400
    assert (await missing.json())["__type"] == "BadRequestException"
    broken = await client.post("/v2/email/outbound-emails", data=b"nope")
    assert broken.status == 400 and (await broken.json())["__type"] == "BadRequestException"

    await client.put("/faults/email", json={"down": True})
    down = await client.post("/v2/email/outbound-emails", json=email)
    assert down.status == 503 and (await down.json())["__type"] == "ServiceUnavailable"


# --- supplier -----------------------------------------------------------------------------


async def reloadly_token(client: TestClient) -> dict[str, str]:
    reply = await client.post(
        "/reloadly/oauth/token",
        json={
            "client_id": "sandbox-reloadly-client",
            "client_secret": "sandbox-reloadly-secret",
            "grant_type": "client_credentials",
            "audience": "https://giftcards-sandbox.reloadly.com",
        },
    )
    assert reply.status == 200
    answer = await reply.json()
    assert answer["token_type"] == "Bearer" and answer["expires_in"] == 3600
    return {"Authorization": f"Bearer {answer['access_token']}"}


async def test_reloadly_order_cards_duplicate_and_lookup(sandbox: Sandbox) -> None:
    client = await sandbox()
    wrong = await client.post(
        "/reloadly/oauth/token",
        json={"client_id": "x", "client_secret": "y", "grant_type": "client_credentials"},
    )
    assert wrong.status == 401
    no_token = await client.get("/reloadly/accounts/balance")
    assert no_token.status == 401 and (await no_token.json())["errorCode"] == "INVALID_TOKEN"

    auth = await reloadly_token(client)
    balance = await (await client.get("/reloadly/accounts/balance", headers=auth)).json()
    assert balance == {**balance, "balance": 100000.0, "currencyCode": "USD"}
    products = await (await client.get("/reloadly/products", headers=auth)).json()
    assert {p["sku"]: p["productId"] for p in products} == {"SKU-A": 101, "SKU-B": 102}

    order = {"productId": 101, "quantity": 3, "unitPrice": 9.5, "customIdentifier": "ref-1"}
    reply = await client.post("/reloadly/orders", json=order, headers=auth)
    assert reply.status == 200
    placed = await reply.json()
    assert placed["status"] == "SUCCESSFUL" and placed["customIdentifier"] == "ref-1"
    assert placed["product"]["productId"] == 101 and placed["amount"] == 28.5

    cards_url = f"/reloadly/orders/transactions/{placed['transactionId']}/cards"
    cards = await (await client.get(cards_url, headers=auth)).json()
    assert len(cards) == 3 and all(c["cardNumber"].startswith("RLD-") for c in cards)

    duplicate = await client.post("/reloadly/orders", json=order, headers=auth)
    assert duplicate.status == 409
    assert (await duplicate.json())["errorCode"] == "DUPLICATE_CUSTOM_IDENTIFIER"
    balance = await (await client.get("/reloadly/accounts/balance", headers=auth)).json()
    assert balance["balance"] == 100000.0 - 28.5

    found = await client.get("/reloadly/orders", params={"customIdentifier": "ref-1"}, headers=auth)
    assert (await found.json())["transactionId"] == placed["transactionId"]
    none = await client.get("/reloadly/orders", params={"customIdentifier": "x"}, headers=auth)
    assert none.status == 404

    unknown = await client.post(
        "/reloadly/orders", json={**order, "productId": 999, "customIdentifier": "r2"}, headers=auth
    )
    assert unknown.status == 404 and (await unknown.json())["errorCode"] == "PRODUCT_NOT_FOUND"

    purchases = await (await client.get("/reloadly/_purchases")).json()
    assert purchases["cards_issued"] == 3
    assert [(o["customIdentifier"], o["quantity"]) for o in purchases["orders"]] == [("ref-1", 3)]


async def test_reloadly_insufficient_balance_charges_nothing(sandbox: Sandbox) -> None:
    client = await sandbox(suppliers={"reloadly": {"balance": "20.00"}})
    auth = await reloadly_token(client)
    order = {"productId": 102, "quantity": 3, "unitPrice": 9.5, "customIdentifier": "big"}
    reply = await client.post("/reloadly/orders", json=order, headers=auth)
    assert reply.status == 400 and (await reply.json())["errorCode"] == "INSUFFICIENT_BALANCE"
    balance = await (await client.get("/reloadly/accounts/balance", headers=auth)).json()
    assert balance["balance"] == 20.0
    assert (await (await client.get("/reloadly/_purchases")).json())["orders"] == []


async def test_reloadly_cards_are_unique_across_orders(sandbox: Sandbox) -> None:
    client = await sandbox()
    auth = await reloadly_token(client)
    numbers: list[str] = []
    for n in range(20):
        order = {"productId": 101, "quantity": 50, "unitPrice": "9.50", "customIdentifier": f"r{n}"}
        placed = await (await client.post("/reloadly/orders", json=order, headers=auth)).json()
        url = f"/reloadly/orders/transactions/{placed['transactionId']}/cards"
        numbers += [c["cardNumber"] for c in await (await client.get(url, headers=auth)).json()]
    assert len(numbers) == len(set(numbers)) == 1000


async def test_reloadly_charge_then_timeout_leaves_a_findable_order(sandbox: Sandbox) -> None:
    client = await sandbox(suppliers={"reloadly": {"charge_timeout_s": 1.0}})
    auth = await reloadly_token(client)
    await client.put("/faults/reloadly", json={"charge_then_timeout": True})
    order = {"productId": 101, "quantity": 1, "unitPrice": 9.5, "customIdentifier": "slow"}
    with pytest.raises(TimeoutError):
        await client.post(
            "/reloadly/orders",
            json=order,
            headers=auth,
            timeout=aiohttp.ClientTimeout(total=0.2),
        )
    found = await client.get("/reloadly/orders", params={"customIdentifier": "slow"}, headers=auth)
    assert found.status == 200 and (await found.json())["status"] == "SUCCESSFUL"
    balance = await (await client.get("/reloadly/accounts/balance", headers=auth)).json()
    assert balance["balance"] == 100000.0 - 9.5
    await asyncio.sleep(1.0)  # let the server finish the slow answer before teardown


# --- control ------------------------------------------------------------------------------


async def test_health_unknown_routes_and_inbox_clear(sandbox: Sandbox) -> None:
    client = await sandbox()
    assert await (await client.get("/healthz")).json() == {"status": "ok"}
    unknown = await client.get("/nope")
    assert unknown.status == 404 and "error" in await unknown.json()
    await send_whatsapp(client, template("en", "a", "b", "c"))
    assert len((await (await client.get("/inbox")).json())["messages"]) == 1
    assert (await client.delete("/inbox")).status == 200
    assert (await (await client.get("/inbox")).json())["messages"] == []
