"""Every service's HTTP server (shared/runtime.py), over a real socket: errors are JSON with an
`error` key whatever raised them, and a connection that trickles its headers is closed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from deploy.embedded.processes import free_port
from shared import runtime
from shared.failures import Refused, Unavailable
from shared.settings import ServiceSettings

REPO = Path(__file__).resolve().parents[2]


async def _boom(_: web.Request) -> web.Response:
    raise RuntimeError("a bug, with a secret in its message: s3cr3t")


class _SupplierDown(Unavailable):
    code = "supplier_down"


async def _unavailable(_: web.Request) -> web.Response:
    raise _SupplierDown("the supplier did not answer")


async def _refused(_: web.Request) -> web.Response:
    raise Refused("quantity must be at least 1")


async def _read(request: web.Request) -> web.Response:
    return web.json_response({"bytes": len(await request.read())})


async def _serve(header_timeout_s: float) -> tuple[web.AppRunner, str]:
    app = web.Application(client_max_size=1024)
    rt = runtime.Runtime("test", ServiceSettings(), app)
    app.add_routes(runtime.admin_routes(rt))
    app.router.add_get("/boom", _boom)
    app.router.add_get("/unavailable", _unavailable)
    app.router.add_get("/refused", _refused)
    app.router.add_post("/read", _read)
    runner = runtime.runner(app, header_timeout_s=header_timeout_s)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def server() -> AsyncIterator[str]:
    runner, url = await _serve(runtime.HEADER_TIMEOUT_S)
    try:
        yield url
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "error"),
    [
        ("GET", "/webhooks/salla/../../etc", None, 404, "not_found"),
        ("GET", "/no/such/route", None, 404, "not_found"),
        ("POST", "/healthz", None, 405, "method_not_allowed"),
        ("POST", "/read", b"x" * 2048, 413, "request_entity_too_large"),
        ("GET", "/boom", None, 500, "internal_error"),
        # a failure of ours no handler answered keeps its own status, code and reason
        ("GET", "/unavailable", None, 503, "supplier_down"),
        ("GET", "/refused", None, 422, "refused"),
    ],
)
async def test_every_error_is_json_with_an_error_key(server, method, path, body, status, error):
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, server + path, data=body) as reply,
    ):
        assert reply.status == status
        assert reply.content_type == "application/json"
        answer = await reply.json()
        assert answer["error"] == error and answer["detail"]
        assert "s3cr3t" not in await reply.text()
        if status == 405:
            assert "GET" in reply.headers["Allow"]
        if error == "supplier_down":
            assert answer["detail"] == "the supplier did not answer"
            assert reply.headers["Retry-After"]  # the caller may try again
        if error == "refused":
            assert "Retry-After" not in reply.headers


async def _slow_client(url: str) -> float:
    """Open a connection, send half a request line's headers a byte at a time; the seconds
    until the server hangs up (or 60 when it never does)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    started = time.monotonic()
    writer.write(b"POST /read HTTP/1.1\r\nHost: x\r\n")
    try:
        for _ in range(60 * 4):
            writer.write(b"X")  # a header that never ends
            await writer.drain()
            try:
                if await asyncio.wait_for(reader.read(1024), 0.25) == b"":
                    return time.monotonic() - started
            except TimeoutError:
                continue
        return 60.0
    except (ConnectionError, OSError):
        return time.monotonic() - started
    finally:
        writer.close()


async def test_connections_that_trickle_their_headers_are_closed():
    runner, url = await _serve(header_timeout_s=1.0)
    try:
        held = await asyncio.gather(*(_slow_client(url) for _ in range(50)))
    finally:
        await runner.cleanup()
    assert max(held) < 5, sorted(held)[-5:]  # every one closed soon after the header timeout


def test_every_service_serves_through_the_shared_runner():
    """No service builds its own AppRunner: they would miss the JSON errors and timeouts."""
    for path in (REPO / "services").rglob("*.py"):
        assert "web.AppRunner(" not in path.read_text(), path
