"""Providers' receipts through the real gateway (PostgreSQL, broker): each verified in its
provider's own way, on `delivery.receipt` (keyed by order key when echoed) before the 2xx;
forgeries and bad input get only documented JSON 4xx, also under hypothesis; SNS messages are
verified with the certificate at SigningCertURL and subscriptions confirmed."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deploy.embedded.processes import free_port
from deploy.sandbox.app import init_app
from deploy.sandbox.config import SandboxConfig
from deploy.sandbox.sns import signing
from services.ingest.receipts.formats import twilio_signature, whatsapp_signature
from services.notifier.email import tag_value
from shared.events import DeliveryReceipt, attempt_reference, reference_token
from tests.integration.gateway_support import running_gateway
from tests.integration.test_consumer_loop import read_all

pytestmark = pytest.mark.integration

WA_SECRET, VERIFY, TWILIO_TOKEN, DLR_TOKEN = "wa-secret", "verify-me", "tw-token", "dlr-token"
PUBLIC = "https://hooks.test"
TOPIC_ARN = "arn:aws:sns:me-south-1:000000000000:tasleem-ses-events"
DOCUMENTED = {200, 400, 401, 403, 413, 415, 422}


@pytest.fixture(scope="module")
async def sns_host() -> AsyncIterator[str]:
    """The sandbox: it serves SNS's signing certificate and SubscribeURL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = SandboxConfig(gateway="http://127.0.0.1:1", stores=[], url=url)
    server = TestServer(init_app(config), port=port)
    await server.start_server()
    yield url
    await server.close()


@pytest.fixture(scope="module")
async def gateway(module_database: str, kafka: str, sns_host: str) -> AsyncIterator[TestClient]:
    async with running_gateway(
        module_database,
        kafka,
        gateway_public_url=PUBLIC,
        whatsapp_app_secret=WA_SECRET,
        whatsapp_verify_token=VERIFY,
        twilio_auth_token=TWILIO_TOKEN,
        unifonic_receipt_token=DLR_TOKEN,
        ses_topic_arns=[TOPIC_ARN],
        sns_origin_pattern=re.escape(sns_host),
    ) as client:
        yield client


def statuses_body(*statuses: dict[str, Any]) -> bytes:
    value = {"messaging_product": "whatsapp", "statuses": list(statuses)}
    return json.dumps({"entry": [{"changes": [{"field": "messages", "value": value}]}]}).encode()


async def receipts_for(kafka: str, ids: set[str]) -> dict[str, DeliveryReceipt]:
    for _ in range(20):
        found = {}
        for record in await read_all(kafka, DeliveryReceipt.topic, 1):
            receipt = DeliveryReceipt.model_validate_json(record.value)
            if receipt.provider_message_id in ids:
                found[receipt.provider_message_id] = receipt
                assert record.key == receipt.kafka_key()
        if set(found) == ids:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"not on {DeliveryReceipt.topic}: {ids - set(found)}")


async def test_whatsapp_statuses_are_verified_published_and_keyed_by_the_echoed_order(
    gateway, kafka
):
    key, order = uuid.uuid4().hex, "standard:s1:o-1"
    wamid, other = f"wamid.{uuid.uuid4().hex}", f"wamid.{uuid.uuid4().hex}"
    body = statuses_body(
        {
            "id": wamid,
            "status": "delivered",
            "biz_opaque_callback_data": attempt_reference(key, order),
        },
        {"id": other, "status": "failed", "errors": [{"code": 131049, "title": "not delivered"}]},
        {"id": "wamid.x", "status": "deleted"},
    )
    headers = {
        "Content-Type": "application/json",
        "X-Hub-Signature-256": whatsapp_signature(WA_SECRET, body),
    }
    reply = await gateway.post("/webhooks/whatsapp", data=body, headers=headers)
    assert reply.status == 200 and (await reply.json())["receipts"] == 2
    found = await receipts_for(kafka, {wamid, other})
    assert (found[wamid].status, found[wamid].attempt_key, found[wamid].order_key) == (
        "delivered",
        key,
        order,
    )
    assert found[wamid].kafka_key() == order.encode()  # the part's own partition
    assert found[other].status == "failed" and "131049" in found[other].error
    assert found[other].kafka_key() == f"whatsapp:{other}".encode()

    forged = await gateway.post(
        "/webhooks/whatsapp",
        data=body,
        headers={**headers, "X-Hub-Signature-256": whatsapp_signature("guess", body)},
    )
    assert forged.status == 401 and (await forged.json())["error"] == "invalid_signature"


async def test_meta_s_subscription_check_is_answered_only_with_our_token(gateway):
    query = {"hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "1158201444"}
    reply = await gateway.get("/webhooks/whatsapp", params=query)
    assert reply.status == 200 and await reply.text() == "1158201444"
    wrong = await gateway.get("/webhooks/whatsapp", params={**query, "hub.verify_token": "x"})
    assert wrong.status == 401 and set(await wrong.json()) == {"error", "detail"}


async def test_twilio_callbacks_are_verified_over_the_url_they_were_given(gateway, kafka):
    key, order = uuid.uuid4().hex, "salla:s2:o-9"
    sid = "SM" + uuid.uuid4().hex
    path = "/webhooks/twilio?ref=" + reference_token(attempt_reference(key, order))
    form = {"MessageSid": sid, "MessageStatus": "delivered", "To": "+966551112222"}
    signature = twilio_signature(TWILIO_TOKEN, PUBLIC + path, form)
    reply = await gateway.post(path, data=form, headers={"X-Twilio-Signature": signature})
    assert reply.status == 200, await reply.text()
    found = (await receipts_for(kafka, {sid}))[sid]
    assert (found.attempt_key, found.order_key) == (key, order)
    # the signature covers the URL: another reference is another URL
    moved = "/webhooks/twilio?ref=" + reference_token(attempt_reference(uuid.uuid4().hex, order))
    refused = await gateway.post(moved, data=form, headers={"X-Twilio-Signature": signature})
    assert refused.status == 401


async def test_unifonic_dlrs_need_the_url_token(gateway, kafka):
    form = {"MessageID": "4242424242", "DLR": "Delivered"}
    assert (await gateway.post("/webhooks/unifonic?token=nope", data=form)).status == 401
    reply = await gateway.post(f"/webhooks/unifonic?token={DLR_TOKEN}", data=form)
    assert reply.status == 200
    found = (await receipts_for(kafka, {"4242424242"}))["4242424242"]
    assert found.status == "delivered" and found.attempt_key is None


def sns_message(sns_host: str, event: dict[str, Any], **fields: str) -> dict[str, str]:
    message = {
        "Type": "Notification",
        "MessageId": str(uuid.uuid4()),
        "TopicArn": TOPIC_ARN,
        "Message": json.dumps(event),
        "Timestamp": "2026-12-01T12:00:00.000Z",
        **fields,
    }
    return signing().sign(message, f"{sns_host}/sns/SimpleNotificationService-sandbox.pem")


async def test_ses_events_by_sns_are_verified_with_the_signing_certificate(
    gateway, kafka, sns_host
):
    key, order = uuid.uuid4().hex, "zid:s3:o-4"
    mid = str(uuid.uuid4())
    event = {
        "eventType": "Delivery",
        "mail": {
            "messageId": mid,
            "tags": {"tasleem-ref": [tag_value(attempt_reference(key, order))]},
        },
    }
    for version in ("1", "2"):
        message = sns_message(sns_host, event)
        if version == "1":
            message = signing().sign(
                {
                    k: v
                    for k, v in message.items()
                    if k not in ("Signature", "SignatureVersion", "SigningCertURL")
                },
                message["SigningCertURL"],
                version="1",
            )
        reply = await gateway.post("/webhooks/ses", data=json.dumps(message))
        assert reply.status == 200, await reply.text()
    found = (await receipts_for(kafka, {mid}))[mid]
    assert (found.provider, found.status, found.attempt_key, found.order_key) == (
        "email",
        "delivered",
        key,
        order,
    )
    tampered = {
        **sns_message(sns_host, event),
        "Message": json.dumps({**event, "eventType": "Bounce"}),
    }
    assert (await gateway.post("/webhooks/ses", data=json.dumps(tampered))).status == 401
    elsewhere = sns_message(sns_host, event)
    elsewhere["SigningCertURL"] = "https://attacker.example/cert.pem"
    assert (await gateway.post("/webhooks/ses", data=json.dumps(elsewhere))).status == 401
    not_ours = sns_message(sns_host, event, TopicArn="arn:aws:sns:me-south-1:1:other")
    assert (await gateway.post("/webhooks/ses", data=json.dumps(not_ours))).status == 401


async def test_an_sns_subscription_is_confirmed_at_its_subscribe_url(gateway, sns_host):
    message = {
        "Type": "SubscriptionConfirmation",
        "MessageId": str(uuid.uuid4()),
        "Token": "wrong-token",
        "TopicArn": TOPIC_ARN,
        "Message": "confirm",
        "SubscribeURL": f"{sns_host}/sns/confirm?Token=wrong-token",
        "Timestamp": "2026-12-01T12:00:00.000Z",
    }
    signed = signing().sign(message, f"{sns_host}/sns/SimpleNotificationService-sandbox.pem")
    # the sandbox refuses this token: not confirmed, and SNS is asked to retry
    reply = await gateway.post("/webhooks/ses", data=json.dumps(signed))
    assert reply.status == 503 and (await reply.json())["error"] == "certificate_unavailable"
    offsite = {**message, "SubscribeURL": "https://attacker.example/confirm"}
    signed = signing().sign(offsite, f"{sns_host}/sns/SimpleNotificationService-sandbox.pem")
    assert (await gateway.post("/webhooks/ses", data=json.dumps(signed))).status == 401


_text = st.text(max_size=40)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)


@st.composite
def mutated_receipt(draw: st.DrawFn, sns_host: str) -> tuple[str, bytes, dict[str, str]]:
    provider = draw(st.sampled_from(["whatsapp", "twilio", "unifonic", "ses"]))
    sign = draw(st.booleans())
    if provider == "whatsapp":
        status = {"id": draw(_json), "status": draw(st.sampled_from(["delivered", "failed", "x"]))}
        body = draw(st.sampled_from([statuses_body(status), json.dumps(draw(_json)).encode()]))
        if draw(st.booleans()):
            body = draw(st.binary(max_size=100))
        headers = {"Content-Type": "application/json"}
        if sign:
            headers["X-Hub-Signature-256"] = whatsapp_signature(WA_SECRET, body)
        return "/webhooks/whatsapp", body, headers
    if provider in ("twilio", "unifonic"):
        form = draw(
            st.dictionaries(
                st.sampled_from(["MessageSid", "MessageStatus", "MessageID", "DLR", "ErrorCode"]),
                _text,
                max_size=4,
            )
        )
        path = (
            "/webhooks/twilio"
            if provider == "twilio"
            else f"/webhooks/unifonic?token={DLR_TOKEN if sign else 'x'}"
        )
        body = urlencode(form).encode() if draw(st.booleans()) else draw(st.binary(max_size=80))
        headers = {
            "Content-Type": draw(
                st.sampled_from(
                    ["application/x-www-form-urlencoded", "application/json", "text/plain"]
                )
            )
        }
        if provider == "twilio" and sign:
            headers["X-Twilio-Signature"] = twilio_signature(TWILIO_TOKEN, PUBLIC + path, form)
        return path, body, headers
    event = draw(st.sampled_from([{"eventType": "Delivery", "mail": draw(_json)}, draw(_json)]))
    message: Any = sns_message(sns_host, event) if sign else draw(_json)
    if isinstance(message, dict) and message and draw(st.booleans()):
        message[draw(st.sampled_from(sorted(message)))] = draw(_json)
    return "/webhooks/ses", json.dumps(message).encode(), {"Content-Type": "text/plain"}


async def test_mutated_receipts_get_only_documented_json_4xx(gateway, sns_host):
    loop = asyncio.get_running_loop()
    seen: set[int] = set()

    async def post(path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        async with gateway.post(path, data=body, headers=headers) as reply:
            return reply.status, await reply.json()

    @settings(
        max_examples=250, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(mutated_receipt(sns_host))
    def check(request: tuple[str, bytes, dict[str, str]]) -> None:
        status, answer = asyncio.run_coroutine_threadsafe(post(*request), loop).result(10)
        seen.add(status)
        assert status in DOCUMENTED, (status, answer, request)
        if status >= 400:
            assert set(answer) == {"error", "detail"} and answer["detail"]

    await asyncio.to_thread(check)
    assert {200, 401, 422}.issubset(seen), seen  # every layer was reached
