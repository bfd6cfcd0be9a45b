"""Admin tokens: one per caller, scoped to a service and a role, kept as digests; a client that
keeps presenting bad credentials gets 429, a valid token never does."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY

from shared import admin_auth
from shared.admin_auth import FailedAttempts, admin_guard

READER, OPERATOR, OTHER = (admin_auth.new_token() for _ in range(3))


def config() -> str:
    return ",".join(
        [
            admin_auth.entry("grafana", "read", READER),
            admin_auth.entry("amal", "operate", OPERATOR),
        ]
    )


def app(guard_config: str, attempts: FailedAttempts | None = None) -> web.Application:
    async def who(request: web.Request) -> web.Response:
        return web.json_response({"caller": admin_auth.caller_of(request)})

    application = web.Application(
        middlewares=[admin_guard("testsvc", guard_config, attempts=attempts)]
    )
    application.router.add_get("/admin/thing", who)
    application.router.add_put("/admin/thing", who)
    application.router.add_post("/webhooks/x", who)
    return application


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def refused(reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "tasleem_admin_refused_total", {"service": "testsvc", "reason": reason}
    )
    return value or 0.0


async def test_a_read_token_reads_and_only_an_operate_token_changes_anything():
    async with TestClient(TestServer(app(config()))) as client:
        looked = await client.get("/admin/thing", headers=bearer(READER))
        assert looked.status == 200 and (await looked.json())["caller"] == "grafana"
        before = refused("forbidden")
        changed = await client.put("/admin/thing", headers=bearer(READER))
        assert changed.status == 403
        assert (await changed.json())["error"] == "forbidden"
        assert refused("forbidden") == before + 1
        done = await client.put("/admin/thing", headers=bearer(OPERATOR))
        assert done.status == 200 and (await done.json())["caller"] == "amal"
        # a token of another service (or none at all) opens nothing here
        assert (await client.get("/admin/thing", headers=bearer(OTHER))).status == 401
        assert (await client.get("/admin/thing")).status == 401
        # routes outside the admin prefix are not the guard's business
        assert (await client.post("/webhooks/x")).status == 200


async def test_the_service_holds_digests_and_a_digest_is_not_a_token():
    text = config()
    assert READER not in text and OPERATOR not in text
    digest = admin_auth.digest(OPERATOR)
    assert digest in text
    async with TestClient(TestServer(app(text))) as client:
        assert (await client.get("/admin/thing", headers=bearer(digest))).status == 401


async def test_no_entries_means_no_admin_api():
    async with TestClient(TestServer(app(""))) as client:
        answer = await client.get("/admin/thing", headers=bearer(OPERATOR))
        assert answer.status == 403 and (await answer.json())["error"] == "admin_disabled"


def test_a_malformed_entry_stops_the_service_rather_than_dropping_a_caller():
    with pytest.raises(ValueError, match="caller:role:sha256"):
        admin_auth.parse("amal:admin:" + admin_auth.digest(OPERATOR))  # no such role
    with pytest.raises(ValueError):
        admin_auth.parse("amal:operate:not-a-digest")
    with pytest.raises(ValueError):
        admin_auth.entry("Amal Q", "read", READER)


async def test_repeated_bad_credentials_get_429_and_a_valid_token_still_passes():
    async with TestClient(TestServer(app(config()))) as client:
        statuses = []
        for number in range(1000):
            answer = await client.get("/admin/thing", headers=bearer(f"guess-{number}"))
            statuses.append(answer.status)
            if answer.status == 429:
                retry_after = int(answer.headers["Retry-After"])
                assert (await answer.json())["error"] == "too_many_attempts"
        limit = FailedAttempts().limit
        assert statuses[:limit] == [401] * limit
        assert set(statuses[limit:]) == {429}
        assert 1 <= retry_after <= 60
        assert refused("throttled") >= 1000 - limit
        # the operator behind the same address is never locked out
        assert (await client.get("/admin/thing", headers=bearer(OPERATOR))).status == 200


async def test_the_throttle_forgets_an_address_after_its_window():
    now = [1000.0]
    attempts = FailedAttempts(limit=3, window_s=60, clock=lambda: now[0])
    async with TestClient(TestServer(app(config(), attempts))) as client:
        for _ in range(3):
            assert (await client.get("/admin/thing", headers=bearer("x"))).status == 401
        locked = await client.get("/admin/thing", headers=bearer("x"))
        assert locked.status == 429 and locked.headers["Retry-After"] == "60"
        now[0] += 61
        assert (await client.get("/admin/thing", headers=bearer("x"))).status == 401


def test_a_flood_of_addresses_is_bounded_and_refuses_no_one_for_lack_of_room():
    attempts = FailedAttempts(limit=2, window_s=60, max_addresses=100)
    for number in range(10_000):
        attempts.failed(f"10.0.{number // 256}.{number % 256}")
    assert len(attempts._seen) <= 100
    assert attempts.retry_after("192.0.2.1") == 0
