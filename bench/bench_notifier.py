"""Deliveries per second and paid→sent latency through the notifier process.

The notifier runs as its own process (`services.notifier.main`) against an embedded PostgreSQL
and broker; the sandbox plays WhatsApp in another process, answering every send after 50 ms.
The bench produces `code.allocated` events and reads `message.sent` back.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg
from aiokafka import AIOKafkaConsumer
from pydantic import SecretStr
from rich.console import Console

from bench.common import BenchResult, cpu_seconds, percentile
from deploy.embedded.broker import EmbeddedBroker, client_settings
from deploy.embedded.postgres import EmbeddedPostgres
from deploy.embedded.processes import ManagedProcess, free_port
from shared import kafka_clients
from shared.codecrypt import CodeCipher, generate_key_settings
from shared.events import (
    AllocatedCode,
    CodeAllocated,
    Customer,
    MessageSent,
    OrderLine,
    event_id_for,
)
from shared.kafka import ensure_topics, topic_specs
from shared.settings import VaultKeySettings

ORDERS = 5000
WARMUP = 200
STEADY = 1500
STEADY_RATE = 300
LATENCY_MS = 50
TOKEN = "bench-whatsapp-token"


async def _until_http(url: str, limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} did not become ready")


async def _until_pg(dsn: str) -> None:
    for _ in range(300):
        try:
            conn = await asyncpg.connect(dsn, timeout=2)
            await conn.close()
            return
        except (OSError, asyncpg.PostgresError):
            await asyncio.sleep(0.2)
    raise RuntimeError("PostgreSQL did not start")


def _events(cipher: CodeCipher, count: int, prefix: str) -> list[CodeAllocated]:
    events = []
    for i in range(count):
        key = f"standard:bench:{prefix}{i}"
        now = datetime.now(UTC)
        events.append(
            CodeAllocated(
                event_id=event_id_for("code.allocated", key, 1),
                order_key=key,
                part=1,
                store_id="bench",
                store_name="Bench Store",
                order_id=f"{prefix}{i}",
                customer=Customer(phone=f"+96656{i:07d}", locale="en"),
                lines=[OrderLine(sku="PSN", quantity=1, title="PlayStation 50")],
                codes=[
                    AllocatedCode(
                        code_id=i, sku="PSN", sealed=cipher.seal(f"CODE-{i:07d}", "PSN").to_text()
                    )
                ],
                paid_at=now,
                allocated_at=now,
            )
        )
    return events


async def _push(
    bootstrap: str,
    consumer: AIOKafkaConsumer,
    events: list[CodeAllocated],
    rate: float | None = None,
) -> tuple[float, list[float], list[float]]:
    """Produce the events (paid now) and wait for their message.sent; returns the elapsed
    seconds, paid→sent latencies seen by the bench, and the notifier's paid→accepted."""
    producer = kafka_clients.producer(client_settings(bootstrap))
    await producer.start()
    waiting = {e.event_id for e in events}
    paid_to_sent: list[float] = []
    paid_to_accepted: list[float] = []
    started = time.monotonic()

    async def read() -> None:
        """Reads message.sent while the events are still being produced."""
        deadline = time.monotonic() + 120
        while waiting and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=100)
            received = datetime.now(UTC)
            for records in batch.values():
                for record in records:
                    sent = MessageSent.model_validate_json(record.value)
                    if sent.allocation_event_id in waiting:
                        waiting.discard(sent.allocation_event_id)
                        paid_to_sent.append((received - sent.paid_at).total_seconds() * 1000)
                        paid_to_accepted.append(sent.paid_to_accepted_ms)

    reading = asyncio.create_task(read())
    try:
        pending = []
        for n, event in enumerate(events):
            if rate is not None:  # paced: sleep until this order's time in the schedule
                await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
            stamped = event.model_copy(update={"paid_at": datetime.now(UTC)})
            pending.append(
                await producer.send(stamped.topic, stamped.to_bytes(), key=stamped.kafka_key())
            )
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    await reading
    if waiting:
        raise RuntimeError(f"{len(waiting)} messages were never reported sent")
    return time.monotonic() - started, paid_to_sent, paid_to_accepted


async def run(console: Console) -> BenchResult:
    result = BenchResult("notifier")
    home = Path(tempfile.mkdtemp(prefix="bench-notifier-"))
    keys = generate_key_settings()
    cipher = CodeCipher.from_settings(
        VaultKeySettings(
            vault_keys=SecretStr(keys["TASLEEM_VAULT_KEYS"]),
            vault_fingerprint_key=SecretStr(keys["TASLEEM_VAULT_FINGERPRINT_KEY"]),
        )
    )
    processes: list[ManagedProcess] = []
    postgres = EmbeddedPostgres(home / "pg", free_port(), home / "postgres.log")
    broker = EmbeddedBroker(free_port(), home / "broker.log")
    postgres.start()
    broker.start()
    try:
        await _until_pg(postgres.dsn)
        admin = await asyncpg.connect(postgres.dsn)
        await admin.execute("CREATE DATABASE bench")
        await admin.close()
        await ensure_topics(client_settings(broker.bootstrap), topic_specs(4))

        sandbox_port, notifier_port = free_port(), free_port()
        config = {
            "gateway": "http://127.0.0.1:1",
            "stores": [],
            "whatsapp": {"token": TOKEN, "phone_number_id": "100200300"},
            "faults": {"whatsapp": {"latency_ms": LATENCY_MS}},
        }
        (home / "sandbox.json").write_text(json.dumps(config))
        sandbox = ManagedProcess(
            "sandbox",
            [
                sys.executable,
                "-m",
                "deploy.sandbox",
                "--config",
                str(home / "sandbox.json"),
                "--port",
                str(sandbox_port),
                "--log-level",
                "WARNING",
            ],
            log_path=home / "sandbox.log",
        )
        notifier = ManagedProcess(
            "notifier",
            [sys.executable, "-m", "services.notifier.main"],
            log_path=home / "notifier.log",
            env={
                **keys,
                "TASLEEM_KAFKA_BOOTSTRAP": broker.bootstrap,
                "TASLEEM_DATABASE_URL": postgres.dsn_for("bench"),
                "TASLEEM_ADMIN_PORT": str(notifier_port),
                "TASLEEM_LOG_LEVEL": "WARNING",
                "TASLEEM_WHATSAPP_BASE_URL": f"http://127.0.0.1:{sandbox_port}",
                "TASLEEM_WHATSAPP_TOKEN": TOKEN,
                "TASLEEM_WHATSAPP_PHONE_NUMBER_ID": "100200300",
                # a high-tier business number; the Cloud API default is 80/s
                "TASLEEM_WHATSAPP_RATE_PER_S": "5000",
                "TASLEEM_MAX_CONCURRENT_SENDS": os.environ.get("BENCH_NOTIFIER_CONCURRENCY", "256"),
            },
        )
        for process in (sandbox, notifier):
            process.start()
            processes.append(process)
        await _until_http(f"http://127.0.0.1:{sandbox_port}/healthz")
        await _until_http(f"http://127.0.0.1:{notifier_port}/readyz")

        consumer = kafka_clients.reader(
            client_settings(broker.bootstrap), "message.sent", fetch_max_wait_ms=10
        )
        await consumer.start()
        try:
            await consumer.seek_to_end()
            console.print(f"warm-up: {WARMUP} deliveries")
            await _push(broker.bootstrap, consumer, _events(cipher, WARMUP, "w"))
            console.print(f"measuring: {ORDERS} deliveries, WhatsApp answering in {LATENCY_MS} ms")
            measured = _events(cipher, ORDERS, "m")
            cpu_before, sandbox_before = cpu_seconds(notifier.pid), cpu_seconds(sandbox.pid)
            elapsed, paid_to_sent, paid_to_accepted = await _push(
                broker.bootstrap, consumer, measured
            )
            cpu_per_delivery = (cpu_seconds(notifier.pid) - cpu_before) / ORDERS
            sandbox_cpu = (cpu_seconds(sandbox.pid) - sandbox_before) / ORDERS
            console.print(f"steady: {STEADY} deliveries at {STEADY_RATE}/s")
            _, steady_sent, steady_accepted = await _push(
                broker.bootstrap, consumer, _events(cipher, STEADY, "s"), rate=STEADY_RATE
            )
        finally:
            await consumer.stop()
    finally:
        for process in reversed(processes):
            process.stop()
        broker.stop()
        postgres.stop()

    rate = ORDERS / elapsed
    result.add(
        "deliveries/s", rate, "msg/s", ">= 1000", f"{ORDERS} orders, {LATENCY_MS} ms provider"
    )
    result.add("paid→sent p50", percentile(paid_to_sent, 0.5), "ms", note="burst of all orders")
    result.add("paid→sent p99", percentile(paid_to_sent, 0.99), "ms")
    result.add("paid→accepted p50", percentile(paid_to_accepted, 0.5), "ms")
    result.add("paid→accepted p99", percentile(paid_to_accepted, 0.99), "ms")
    # The machine is shared (the sandbox, PostgreSQL and the broker run on the same two cores,
    # and so may other work): the notifier's own CPU per delivery is the figure that does not
    # move with the neighbours, and what one core can sustain follows from it.
    result.add(
        f"paid→sent p50 at {STEADY_RATE}/s", percentile(steady_sent, 0.5), "ms", note="steady"
    )
    result.add(f"paid→sent p99 at {STEADY_RATE}/s", percentile(steady_sent, 0.99), "ms")
    result.add(f"paid→accepted p50 at {STEADY_RATE}/s", percentile(steady_accepted, 0.5), "ms")
    result.add("notifier CPU per delivery", cpu_per_delivery * 1e6, "µs")
    result.add("sandbox CPU per delivery", sandbox_cpu * 1e6, "µs", note="the fake WhatsApp")
    result.add(
        "one notifier core sustains", 1 / cpu_per_delivery, "msg/s", note="1 / CPU per delivery"
    )
    result.details["home"] = str(home)
    return result
