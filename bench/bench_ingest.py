"""Ingest gateway throughput: signed webhooks of every platform from a separate load process,
on loopback, against the real gateway process (embedded PostgreSQL and broker, acks=all), with
a bare aiohttp handler that does nothing measured in the same run as the ceiling."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from rich.console import Console

from bench.common import BenchResult, percentile
from deploy.embedded.broker import EmbeddedBroker, client_settings
from deploy.embedded.postgres import EmbeddedPostgres
from deploy.embedded.processes import ManagedProcess, free_port

CONCURRENCY = int(os.environ.get("BENCH_INGEST_CONCURRENCY", "64"))
DURATION_S = float(os.environ.get("BENCH_INGEST_SECONDS", "6"))
WARMUP_S = 1.5
TARGET_RATE = 2000.0  # the target: at this offered load, p99 <= 50 ms
OPEN_LOOP_CONNECTIONS = 256
PROFILE = os.environ.get("BENCH_INGEST_PROFILE", "")
STORES = [
    {
        "id": "bench-standard",
        "platform": "standard",
        "name": "Bench",
        "secret": "whsec_" + "YmVuY2gtc2VjcmV0LWZvci10aGUtaW5nZXN0LWJlbmNo",
    },
    {"id": "bench-salla", "platform": "salla", "name": "Bench", "secret": "salla-bench-secret"},
    {"id": "bench-zid", "platform": "zid", "name": "Bench", "secret": "bench:zid-password"},
    {"id": "bench-shopify", "platform": "shopify", "name": "Bench", "secret": "shpss_bench"},
    {"id": "bench-woo", "platform": "woocommerce", "name": "Bench", "secret": "wc-bench"},
]

BARE_SERVER = """
import sys, uvloop
from aiohttp import web

async def nothing(request):
    await request.read()
    return web.json_response({"status": "accepted"}, status=202)

app = web.Application()
app.router.add_post("/webhooks/{platform}/{store_id}", nothing)
app.router.add_get("/healthz", lambda r: nothing(r))
async def main():
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(sys.argv[1]), backlog=1024).start()
    import asyncio; await asyncio.Event().wait()
uvloop.run(main())
"""


def _requests(base: str, count: int, seed: int) -> list[tuple[str, bytes, dict[str, str]]]:
    """`count` distinct paid orders, round-robin over the platforms, each signed as its platform
    signs it (the sandbox's code, so the wire format is the real one)."""
    from deploy.sandbox import platforms as wire
    from deploy.sandbox.config import StoreConfig

    stores = [StoreConfig.model_validate(s) for s in STORES]
    built = []
    for n in range(count):
        store = stores[n % len(stores)]
        order_id = str(10**11 + seed * 10**7 + n)
        sale = wire.Sale(
            order_id=order_id,
            lines=[{"sku": "SKU-A", "quantity": 1, "title": "Card", "price": "50.00"}],
            customer={
                "name": "Bench Buyer",
                "phone": f"+9665{n % 10**8:08d}",
                "email": "b@example.com",
                "locale": "ar",
            },
            total="50.00",
        )
        webhook = wire.paid(store, sale)
        url = f"{base}/webhooks/{store.platform}/{store.id}"
        built.append((url, webhook.body, wire.delivery_headers(store, webhook)))
    return built


def _load(base: str, seconds: float, seed: int, rate: float | None, out: Any) -> None:
    """The load process. Without `rate`: as many requests as CONCURRENCY clients can make in
    `seconds` (closed loop: the ceiling). With `rate`: requests sent on a fixed schedule
    (open loop), each latency counted from its scheduled time, so a stall is not hidden by the
    load generator waiting for it."""
    import uvloop

    requests = _requests(base, int(seconds * (rate or 6000)) + 1000, seed)

    async def main() -> dict[str, Any]:
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        connector = aiohttp.TCPConnector(limit=OPEN_LOOP_CONNECTIONS if rate else CONCURRENCY)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def post(url: str, body: bytes, headers: dict[str, str], since: float) -> None:
                async with session.post(url, data=body, headers=headers) as reply:
                    await reply.read()
                statuses[reply.status] = statuses.get(reply.status, 0) + 1
                if reply.status in (200, 202):
                    latencies.append(time.perf_counter() - since)

            began = time.perf_counter()
            if rate:
                tasks = []
                for n, request in enumerate(requests[: int(seconds * rate)]):
                    due = began + n / rate
                    if (wait := due - time.perf_counter()) > 0:
                        await asyncio.sleep(wait)
                    tasks.append(asyncio.create_task(post(*request, due)))
                await asyncio.gather(*tasks)
            else:
                queue = iter(requests)
                deadline = began + seconds

                async def client() -> None:
                    for request in queue:
                        if time.perf_counter() >= deadline:
                            return
                        await post(*request, time.perf_counter())

                await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
            elapsed = time.perf_counter() - began
        return {"latencies": latencies, "statuses": statuses, "elapsed": elapsed}

    out.put(uvloop.run(main()))


def _measure(base: str, seconds: float, seed: int, rate: float | None = None) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    process = ctx.Process(target=_load, args=(base, seconds, seed, rate, out))
    process.start()
    result = out.get(timeout=seconds + 120)
    process.join(10)
    return result


def rounds_labels(rounds: tuple[tuple[Any, ...], ...]) -> tuple[str, str]:
    """The labels of the two closed-loop rounds: the bare handler's and the gateway's."""
    return rounds[0][0], rounds[1][0]


def _profile(pid: int | None) -> subprocess.Popen[bytes] | None:
    """With BENCH_INGEST_PROFILE=<file>, py-spy samples the gateway during the measured run."""
    if not PROFILE or pid is None:
        return None
    return subprocess.Popen(
        [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(DURATION_S)),
            "--format",
            "raw",
            "--nonblocking",
            "-o",
            PROFILE,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _until(check, limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            if await check():
                return
        except Exception:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{what} was not ready after {limit_s:.0f}s")


async def _http_ok(url: str) -> bool:
    async with aiohttp.ClientSession() as session, session.get(url) as reply:
        return reply.status == 200


async def _pg_ok(dsn: str) -> bool:
    conn = await asyncpg.connect(dsn, timeout=2)
    await conn.close()
    return True


async def _tcp_ok(port: int) -> bool:
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.close()
    await writer.wait_closed()
    return True


async def _register(dsn: str, vault_keys: str) -> None:
    from pydantic import SecretStr

    from services.ingest.main import SQL
    from services.ingest.stores import Store, upsert_store
    from shared.codecrypt import SecretSealer
    from shared.db import migrate

    sealer = SecretSealer.from_keys(SecretStr(vault_keys))  # the gateway seals store secrets
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn, "ingest", SQL)
        await conn.execute("SET search_path TO ingest")
        for s in STORES:
            store = Store(s["id"], s["platform"], s["name"], (s["secret"],))
            await upsert_store(conn, store, sealer)
    finally:
        await conn.close()


def _summarise(
    result: BenchResult, label: str, run: dict[str, Any], targets: tuple[str, str]
) -> None:
    ok = len(run["latencies"])
    rate = ok / run["elapsed"]
    p50 = percentile(run["latencies"], 0.50) * 1000
    p99 = percentile(run["latencies"], 0.99) * 1000
    refused = {k: v for k, v in run["statuses"].items() if k not in (200, 202)}
    note = f"p50 {p50:.1f} ms; {ok} ok" + (f"; refused {refused}" if refused else "")
    result.add(f"{label} accepted/s", rate, "/s", targets[0], note)
    result.add(f"{label} p99", p99, "ms", targets[1])
    result.details[label] = {
        "statuses": run["statuses"],
        "rate": rate,
        "p50_ms": p50,
        "p99_ms": p99,
        "elapsed_s": run["elapsed"],
    }


async def run(console: Console) -> BenchResult:
    result = BenchResult(
        "ingest",
        details={"concurrency": CONCURRENCY, "seconds": DURATION_S, "cpus": os.cpu_count()},
    )
    home = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    pg = EmbeddedPostgres(home / "pg", free_port(), home / "postgres.log")
    broker = EmbeddedBroker(free_port(), home / "broker.log")
    processes: list[ManagedProcess] = []
    try:
        pg.start()
        broker.start()
        await _until(lambda: _pg_ok(pg.dsn), 60, "PostgreSQL")
        await _until(lambda: _tcp_ok(broker.port), 30, "broker")
        conn = await asyncpg.connect(pg.dsn)
        try:
            await conn.execute("CREATE DATABASE bench")
        finally:
            await conn.close()
        dsn = pg.dsn_for("bench")
        from shared.codecrypt import generate_key_settings

        vault_keys = generate_key_settings()["TASLEEM_VAULT_KEYS"]
        await _register(dsn, vault_keys)
        from shared.kafka import ensure_topics, topic_specs

        await ensure_topics(client_settings(broker.bootstrap), topic_specs(4))

        bare_port, gateway_port = free_port(), free_port()
        bare = ManagedProcess(
            "bare", [sys.executable, "-c", BARE_SERVER, str(bare_port)], log_path=home / "bare.log"
        )
        gateway = ManagedProcess(
            "ingest",
            [sys.executable, "-m", "services.ingest.main"],
            log_path=home / "ingest.log",
            env={
                "TASLEEM_KAFKA_BOOTSTRAP": broker.bootstrap,
                "TASLEEM_DATABASE_URL": dsn,
                "TASLEEM_VAULT_KEYS": vault_keys,
                "TASLEEM_ADMIN_PORT": str(gateway_port),
                "TASLEEM_LOG_LEVEL": "WARNING",
            },
        )
        processes += [bare, gateway]
        bare.start()
        gateway.start()
        await _until(lambda: _tcp_ok(bare_port), 30, "bare handler")
        await _until(lambda: _http_ok(f"http://127.0.0.1:{gateway_port}/readyz"), 60, "gateway")

        rounds = (
            # (label, port, offered rate or None for the closed-loop ceiling, targets)
            ("bare aiohttp, max", bare_port, None, ("", "")),
            ("gateway, max", gateway_port, None, (">= 2000", "")),
            (f"gateway at {TARGET_RATE:.0f}/s", gateway_port, TARGET_RATE, (">= 1950", "<= 50")),
        )
        seed = 1
        for label, port, rate, targets in rounds:
            base = f"http://127.0.0.1:{port}"
            how = f"{rate:.0f}/s offered" if rate else f"{CONCURRENCY} concurrent clients"
            console.print(f"{label}: warm-up {WARMUP_S}s, then {DURATION_S}s, {how}")
            await asyncio.to_thread(_measure, base, WARMUP_S, seed := seed + 1, rate)
            gateway_round = port == gateway_port and rate is None
            profiler = _profile(gateway.pid) if gateway_round else None
            run_ = await asyncio.to_thread(_measure, base, DURATION_S, seed := seed + 1, rate)
            if profiler is not None:
                profiler.wait(30)
                console.print(f"gateway profile (py-spy, collapsed stacks): {PROFILE}")
            _summarise(result, label, run_, targets)
        ceiling, gateway_max = (result.details[k]["rate"] for k in rounds_labels(rounds))
        # on a shared machine both figures move with its load; their ratio moves much less
        result.add("gateway max / bare max", 100 * gateway_max / ceiling, "%")
        return result
    finally:
        for process in processes:
            process.stop(timeout=10)
        broker.stop()
        pg.stop()
        shutil.rmtree(home, ignore_errors=True)
