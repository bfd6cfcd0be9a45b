"""The allocator's admin API over HTTP: authenticated, imports with a report, masked reads."""

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from deploy.embedded.broker import client_settings
from services.allocator.main import lifespan
from services.allocator.settings import AllocatorSettings
from shared import admin_auth, runtime
from shared.kafka import ensure_topics, topic_specs

pytestmark = pytest.mark.integration
TOKEN = "s3cret-admin"


async def client_for(database, kafka, vault_env, token=TOKEN, **overrides):
    await ensure_topics(client_settings(kafka), topic_specs(partitions=2))
    settings = AllocatorSettings(
        database_url=database,
        kafka_bootstrap=kafka,
        vault_keys=vault_env["TASLEEM_VAULT_KEYS"],
        vault_fingerprint_key=vault_env["TASLEEM_VAULT_FINGERPRINT_KEY"],
        allocator_admin_tokens=admin_auth.entry("tests", "operate", token) if token else "",
        **overrides,
    )
    rt = runtime.Runtime("allocator", settings, web.Application())
    rt.app.add_routes(runtime.admin_routes(rt))
    return rt, lifespan(rt)


async def test_admin_needs_the_token_and_is_off_without_one(database, kafka, vault_env):
    rt, life = await client_for(database, kafka, vault_env, token="")
    async with life, TestClient(TestServer(rt.app)) as client:
        assert (await client.get("/admin/stock")).status == 403
        assert (await client.get("/healthz")).status == 200
    rt, life = await client_for(database, kafka, vault_env)
    async with life, TestClient(TestServer(rt.app)) as client:
        wrong = await client.get("/admin/stock", headers={"Authorization": "Bearer nope"})
        assert wrong.status == 401 and (await wrong.json())["error"] == "unauthorized"


async def test_import_rules_levels_and_order_view(database, kafka, vault_env):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    rt, life = await client_for(database, kafka, vault_env)
    async with life, TestClient(TestServer(rt.app)) as client:
        rule = await client.put(
            "/admin/skus/PSN/rule?account=s1",
            json={"code_pattern": r"PSN-[0-9A-F]{4}"},
            headers=auth,
        )
        assert rule.status == 200
        bad_rule = await client.put(
            "/admin/skus/PSN/rule?account=s1", json={"code_pattern": "("}, headers=auth
        )
        assert bad_rule.status == 422
        csv = "code,expires_at,cost\nPSN-00A1,2030-01-01,9.5\nPSN-00A2,,\n PSN-00A1 ,,\nnope,,\n"
        resp = await client.post(
            "/admin/stock/PSN/import?account=s1&batch=lot-7", data=csv.encode(), headers=auth
        )
        report = await resp.json()
        assert resp.status == 200
        assert report == {
            "account": "s1",
            "sku": "PSN",
            "added": 2,
            "duplicates": 1,
            "duplicate_lines": [4],
            "invalid_count": 1,
            "invalid": [{"line": 5, "reason": "code does not match the sku's format"}],
            "truncated": False,
        }
        assert "PSN-00A" not in await resp.text()
        levels = await (await client.get("/admin/stock/PSN?account=s1", headers=auth)).json()
        assert levels["skus"][0]["available"] == 2
        unreadable = await client.post(
            "/admin/stock/PSN/import?account=s1&format=json", data=b"[1,", headers=auth
        )
        assert unreadable.status == 422
        missing = await client.get("/admin/orders/standard:s1:none?account=s1", headers=auth)
        assert missing.status == 404 and (await missing.json())["error"] == "unknown_order"
        assert (await client.get("/admin/stock/NOPE?account=s1", headers=auth)).status == 404
