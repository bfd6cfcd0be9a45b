"""SES requests are signed by botocore's SigV4 signer, and the sandbox recomputes the signature
as AWS does: a wrong key, another region or a body changed after signing is refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from deploy.sandbox.app import init_app
from deploy.sandbox.config import SandboxConfig
from services.notifier.email import PATH, SesEmail, sigv4_headers
from services.notifier.providers import Outbound, ProviderError

ACCESS, SECRET = "AKIDTASLEEMTEST", "a-secret-only-the-two-sides-know"


@pytest.fixture
async def ses_url() -> AsyncIterator[str]:
    raw: dict[str, Any] = {
        "gateway": "http://127.0.0.1:9",
        "stores": [],
        "ses": {"access_key": ACCESS, "secret_key": SECRET},
        "seed": 3,
    }
    server = TestServer(init_app(SandboxConfig.model_validate(raw)))
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


def message() -> Outbound:
    return Outbound(
        to="sara@example.com", locale="en", key="k1", subject="Your code", text="PSN-1", html=""
    )


async def test_a_request_botocore_signed_is_accepted(ses_url):
    async with aiohttp.ClientSession() as session:
        email = SesEmail(session, ses_url, "shop@example.com", ACCESS, SECRET)
        assert await email.send(message())


@pytest.mark.parametrize(
    ("access", "secret", "region"),
    [
        (ACCESS, "a-wrong-secret", "me-south-1"),
        ("AKIDSOMEONEELSE", SECRET, "me-south-1"),
        (ACCESS, SECRET, "eu-west-1"),
    ],
)
async def test_a_wrong_key_or_region_is_refused(ses_url, access, secret, region):
    async with aiohttp.ClientSession() as session:
        email = SesEmail(session, ses_url, "shop@example.com", access, secret, region)
        with pytest.raises(ProviderError) as refused:
            await email.send(message())
    assert refused.value.code == "UnrecognizedClientException"


async def test_a_body_changed_after_signing_is_refused(ses_url):
    url = f"{ses_url}{PATH}"
    signed = b'{"FromEmailAddress": "shop@example.com"}'
    headers = sigv4_headers(url, signed, ACCESS, SECRET, "me-south-1")
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=signed, headers=headers) as reply:
            assert reply.status != 403  # the signature holds (the body itself is incomplete)
        changed = b'{"FromEmailAddress": "mallory@example.com"}'
        async with session.post(url, data=changed, headers=headers) as reply:
            assert reply.status == 403
            assert (await reply.json())["__type"] == "UnrecognizedClientException"
