"""The allocator's admin API under hostile input, with a valid token: every answer is a JSON
4xx (never a 5xx), an import streams (its memory does not grow with the file, its report is
capped), and one account's stock and orders are invisible in another account's views."""

import asyncio
import json
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.allocator import vault
from tests.integration.test_allocator_admin import TOKEN, client_for

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
async def admin(module_database: str, kafka: str, vault_env) -> AsyncIterator[TestClient]:
    rt, life = await client_for(module_database, kafka, vault_env)
    async with life, TestClient(TestServer(rt.app)) as client:
        yield client


async def test_codes_of_one_account_are_invisible_to_anothers_views(admin):
    body = "\n".join(f"VIS-{i:04d}" for i in range(3)).encode()
    resp = await admin.post("/admin/stock/VIS/import?account=shop-a", data=body, headers=AUTH)
    assert resp.status == 200 and (await resp.json())["added"] == 3
    mine = await (await admin.get("/admin/stock?account=shop-a", headers=AUTH)).json()
    assert [s["sku"] for s in mine["skus"]] == ["VIS"] and mine["skus"][0]["available"] == 3
    theirs = await (await admin.get("/admin/stock?account=shop-b", headers=AUTH)).json()
    assert theirs["skus"] == []
    assert (await admin.get("/admin/stock/VIS?account=shop-b", headers=AUTH)).status == 404
    # the same codes imported for shop-b are duplicates: never a second owner for a code
    again = await admin.post("/admin/stock/VIS/import?account=shop-b", data=body, headers=AUTH)
    assert (await again.json())["added"] == 0
    assert (await admin.get("/admin/stock", headers=AUTH)).status == 400  # no account: refused
    legacy = await admin.get("/admin/stock?account=:legacy", headers=AUTH)
    assert legacy.status == 400


async def test_a_large_invalid_file_streams_in_bounded_memory_with_a_capped_report(admin):
    """An 8 MiB file of invalid lines once used 2.0 GB and returned a 288 MB report."""
    line = b"BAD-CODE-\x00-00\n"  # short lines, each with a NUL: half a million problems
    total = 4 * 1024 * 1024

    async def body() -> AsyncIterator[bytes]:
        chunk = line * 200
        for _ in range(total // len(chunk)):
            yield chunk

    tracemalloc.start()
    try:
        resp = await admin.post(
            "/admin/stock/BIG/import?account=shop-a&format=lines", data=body(), headers=AUTH
        )
        raw = await resp.read()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert resp.status == 200, raw[:500]
    report = json.loads(raw)
    lines = total // len(line * 200) * 200
    assert (report["added"], report["invalid_count"], report["truncated"]) == (0, lines, True)
    assert len(report["invalid"]) == vault.REPORT_LINES
    assert [p["line"] for p in report["invalid"]] == list(range(1, vault.REPORT_LINES + 1))
    assert len(raw) < 20_000
    assert peak < 12 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB for a 4 MiB file"


async def test_a_stock_file_over_the_limit_is_413_without_being_read_whole(
    module_database, kafka, vault_env
):
    rt, life = await client_for(module_database, kafka, vault_env, max_import_bytes=1024)
    async with life, TestClient(TestServer(rt.app)) as client:
        resp = await client.post(
            "/admin/stock/BIG/import?account=shop-a", data=b"A-1\n" * 1000, headers=AUTH
        )
        assert resp.status == 413 and (await resp.json())["error"] == "too_large"


_odd = st.sampled_from(
    ["", "\x00", "a\x00b", "\u202e", "x" * 300, "99999999999", "1e999999", "-1", "NaN",
     "Infinity", "0001-01-01T00:00:00+14:00", "9999-12-31", "2030-01-01", "PSN", "(a|a)*",
     "(", "%", "../etc", "[", "{", "csv", "json", "lines"]
)  # fmt: skip
_text = st.one_of(_odd, st.text(max_size=12))
_segment = _text.filter(bool).map(lambda s: quote(s, safe=""))
_query = st.dictionaries(
    st.sampled_from(["account", "expiring_days", "format", "expires", "cost", "batch", "from"]),
    _text,
    max_size=6,
).map(lambda q: {"account": "fuzz", **q} if "account" not in q else q)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_body = st.one_of(
    st.binary(max_size=300),
    _text.map(str.encode),
    _json.map(lambda v: json.dumps(v).encode()),
    st.builds(lambda v: json.dumps({"code_pattern": v}).encode(), _json),
    st.just(b"[" * 5000),  # nested past the recursion limit
    st.just(b'{"codes": [' + b'"A",' * 50 + b'{"code": "B", "cost": 1e999999}]}'),
    st.just(b"code,cost,expires_at,batch\nA\x00,1e999999,99999-01-01,\x00\n"),
    st.just(b"\xff\xfe\x00bad utf-8"),
)
_call = st.one_of(
    st.tuples(st.just("GET"), st.just("/admin/stock"), _query, st.just(b"")),
    st.tuples(st.just("GET"), _segment.map(lambda s: f"/admin/stock/{s}"), _query, st.just(b"")),
    st.tuples(st.just("POST"), _segment.map(lambda s: f"/admin/stock/{s}/import"), _query, _body),
    st.tuples(st.just("PUT"), _segment.map(lambda s: f"/admin/skus/{s}/rule"), _query, _body),
    st.tuples(st.just("GET"), _segment.map(lambda s: f"/admin/orders/{s}"), _query, st.just(b"")),
    st.tuples(st.just("POST"), _segment.map(lambda s: f"/admin/stock/{s}/move"), _query, _body),
    st.tuples(st.just("POST"), st.just("/admin/vault/rekey"), _query, _body),
)


async def test_every_admin_route_answers_hostile_input_with_json_4xx_never_5xx(admin):
    loop = asyncio.get_running_loop()

    async def call(method: str, path: str, query: dict[str, str], body: bytes) -> tuple[int, Any]:
        async with admin.request(method, path, params=query, data=body, headers=AUTH) as reply:
            raw = await reply.read()
            try:
                return reply.status, json.loads(raw)
            except ValueError:
                return reply.status, raw[:300]

    seen: set[int] = set()

    @settings(
        max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(_call)
    def check(request: tuple[str, str, dict[str, str], bytes]) -> None:
        method, path, query, body = request
        future = asyncio.run_coroutine_threadsafe(call(method, path, query, body), loop)
        status, answer = future.result(60)
        seen.add(status)
        assert status < 500, (request, status, answer)
        assert isinstance(answer, dict), (request, status, answer)
        if status >= 400:
            assert answer.get("error") and answer.get("detail"), answer

    await asyncio.to_thread(check)
    assert 200 in seen and {400, 422} & seen, seen


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/admin/stock?account=a&expiring_days=99999999999", b""),
        ("POST", "/admin/stock/PSN/import?account=a&cost=1e999999", b"A-1\n"),
        ("GET", "/admin/stock/PS%00N?account=a", b""),
        ("GET", "/admin/orders/standard:s1:%00?account=a", b""),
        ("PUT", "/admin/skus/PSN/rule?account=a", b'{"code_pattern": "(a\\u0000)"}'),
        ("POST", "/admin/stock/PSN/import?account=a", b"code,cost\nA-1,1e999999\n"),
    ],
)
async def test_the_inputs_that_gave_a_500_are_a_json_4xx(admin, method, path, body):
    resp = await admin.request(method, path, data=body, headers=AUTH)
    answer = await resp.json()
    if resp.status == 200:  # a bad line is a problem in the report, not a failed import
        assert answer["invalid_count"] == 1 and answer["added"] == 0
    else:
        assert 400 <= resp.status < 500 and set(answer) == {"error", "detail"}
