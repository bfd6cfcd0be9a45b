"""The restocker's `GET /stock` (stock, sales rates, suppliers, purchase references) answers
only a restocker token; fuzzed with a valid one, it answers JSON, never a 5xx."""

from __future__ import annotations

import json
from urllib.parse import quote

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.restocker.handlers import add_stock_route
from services.restocker.settings import RestockerSettings
from shared import admin_auth, runtime

READER = admin_auth.new_token()
ELSEWHERE = admin_auth.new_token()  # a notifier token: opens nothing here
REPORT = {"skus": [{"sku": "PSN-50", "available": 10, "supplier": "reloadly"}], "stock_low": []}


def restocker_app(tokens: str) -> web.Application:
    config = RestockerSettings(restocker_admin_tokens=tokens)
    rt = runtime.Runtime("restocker", config, web.Application())
    rt.app.add_routes(runtime.admin_routes(rt))
    add_stock_route(rt.app, config, lambda: REPORT)
    return rt.app


async def test_stock_needs_a_restocker_token():
    tokens = admin_auth.entry("grafana", "read", READER)
    async with TestClient(TestServer(restocker_app(tokens))) as client:
        assert (await client.get("/stock")).status == 401
        other = await client.get("/stock", headers={"Authorization": f"Bearer {ELSEWHERE}"})
        assert other.status == 401 and (await other.json())["error"] == "unauthorized"
        ok = await client.get("/stock", headers={"Authorization": f"Bearer {READER}"})
        assert ok.status == 200 and await ok.json() == REPORT
        # probes and Prometheus still reach the process without a token
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/metrics")).status == 200
    async with TestClient(TestServer(restocker_app(""))) as client:
        assert (await client.get("/stock")).status == 403  # no tokens: no /stock at all


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"]),
    tail=st.one_of(st.just(""), st.text(max_size=60), st.binary(max_size=40)),
    query=st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=4),
    body=st.binary(max_size=500),
)
async def test_stock_answers_any_request_with_a_valid_token_never_with_a_5xx(
    method, tail, query, body
):
    tokens = admin_auth.entry("ops", "operate", READER)
    path = quote(tail if isinstance(tail, bytes) else tail.encode("utf-8", "surrogatepass"))
    async with TestClient(TestServer(restocker_app(tokens))) as client:
        answer = await client.request(
            method,
            f"/stock{'/' if path else ''}{path}",
            params={
                k.encode("utf-8", "surrogatepass").decode("utf-8", "replace"): v.encode(
                    "utf-8", "surrogatepass"
                ).decode("utf-8", "replace")
                for k, v in query.items()
            },
            data=body,
            headers={"Authorization": f"Bearer {READER}"},
        )
        text = await answer.text()
        assert answer.status < 500, (answer.status, text)
        if answer.status >= 400 and method != "HEAD":
            assert json.loads(text)["error"], text
