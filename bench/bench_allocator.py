"""Allocations per second through the allocator service, next to a bare batched SKIP LOCKED
claim on the same database, on a vault of 1,000,000 codes of which 900,000 are sold.

The sold codes are claimed first by the bare loop itself, so the vault carries the dead index
entries and heap churn that real sales leave behind, not a freshly loaded table.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import sys
import time

import asyncpg
from rich.console import Console

from bench.common import BenchResult
from bench.stack_parts import embedded
from deploy.embedded.processes import ManagedProcess, free_port
from services.allocator.main import SQL
from shared.codecrypt import generate_key_settings
from shared.db import migrate
from shared.events import Customer, OrderLine, OrderPaid, event_id_for, utcnow
from shared.kafka import make_producer, publish
from shared.settings import ServiceSettings

SKUS = [f"SKU-{i}" for i in range(10)]
VAULT = 1_000_000
SOLD = 900_000
ORDERS = 30_000
BATCH = 500

CLAIM = """
UPDATE codes SET status = 'allocated'
WHERE code_id IN (
    SELECT code_id FROM codes
    WHERE sku = $1 AND status = 'available' AND (expires_at IS NULL OR expires_at > now())
    ORDER BY expires_at ASC NULLS LAST, code_id
    LIMIT $2 FOR UPDATE SKIP LOCKED)
RETURNING code_id
"""


async def load_vault(conn: asyncpg.Connection, console: Console) -> None:
    """1M codes: sealed-looking text and random fingerprints (allocation never opens a code)."""
    rows = (
        (SKUS[i % len(SKUS)], os.urandom(32), "k1:" + base64.b64encode(os.urandom(48)).decode())
        for i in range(VAULT)
    )
    started = time.perf_counter()
    await conn.copy_records_to_table(
        "codes", records=rows, columns=["sku", "fingerprint", "sealed"], schema_name="allocator"
    )
    await conn.execute("ANALYZE allocator.codes")
    console.print(f"loaded {VAULT:,} codes in {time.perf_counter() - started:.1f}s")


async def bare_claims(conn: asyncpg.Connection, total: int) -> float:
    """Codes claimed per second by the bare loop: one batched claim per transaction."""
    claimed, started, n = 0, time.perf_counter(), 0
    while claimed < total:
        async with conn.transaction():
            rows = await conn.fetch(CLAIM, SKUS[n % len(SKUS)], BATCH)
        claimed += len(rows)
        n += 1
    return claimed / (time.perf_counter() - started)


def orders(count: int, run: str = "bench") -> list[OrderPaid]:
    rng = random.Random(4)
    now = utcnow()
    out = []
    for i in range(count):
        key = f"standard:{run}:{i}"
        out.append(
            OrderPaid(
                event_id=event_id_for("order.paid", key),
                order_key=key,
                platform="standard",
                store_id=run,
                order_id=str(i),
                lines=[OrderLine(sku=rng.choice(SKUS), quantity=rng.choice((1, 2)))],
                customer=Customer(phone="+966500000001"),
                paid_at=now,
                received_at=now,
            )
        )
    return out


UNITS_SO_FAR = "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM allocator.units_seq_seq"


async def through_service(parts, conn: asyncpg.Connection, processes: int) -> float:
    """Allocations per second of `processes` allocators (one consumer group, as deployed)
    working off a backlog of orders of their own."""
    run = f"bench-{processes}"
    backlog = orders(ORDERS, run)
    units = sum(o.lines[0].quantity for o in backlog)
    producer = make_producer(ServiceSettings(kafka_bootstrap=parts.kafka))
    await producer.start()
    try:
        for start in range(0, len(backlog), 1000):
            await publish(producer, backlog[start : start + 1000])
    finally:
        await producer.stop()
    vault_keys = generate_key_settings()
    allocators = [
        ManagedProcess(
            f"allocator-{n}",
            [sys.executable, "-m", "services.allocator.main"],
            log_path=parts.home / f"allocator-{run}-{n}.log",
            env={
                "TASLEEM_DATABASE_URL": parts.database,
                "TASLEEM_KAFKA_BOOTSTRAP": parts.kafka,
                "TASLEEM_ADMIN_PORT": str(free_port()),
                "TASLEEM_LOG_LEVEL": "WARNING",
                **vault_keys,
            },
        )
        for n in range(processes)
    ]
    for process in allocators:
        process.start()
    # Progress is read from the units sequence, which every allocated unit advances: a
    # sequence read costs the database nothing, where counting orders 20 times a second
    # took a tenth of a core from the allocators being measured.
    start = await conn.fetchval(UNITS_SO_FAR)
    try:
        first = last = None
        async with asyncio.timeout(600):
            while True:
                done = await conn.fetchval(UNITS_SO_FAR)
                now = time.perf_counter()
                if done > start and first is None:
                    first, first_done = now, done - start
                if done - start >= units:
                    last = now
                    break
                for process in allocators:
                    if not process.running():
                        raise RuntimeError(f"allocator died:\n{process.tail()}")
                await asyncio.sleep(0.02)
            committed = 0
            while committed < ORDERS:  # and committed, every order of the run
                await asyncio.sleep(0.05)
                committed = await conn.fetchval(
                    "SELECT count(*) FROM allocator.orders WHERE store_id = $1", run
                )
        assert first is not None and last is not None
        return (units - first_done) / (last - first)
    finally:
        for process in allocators:
            process.stop()


async def run(console: Console) -> BenchResult:
    result = BenchResult("allocator")
    async with embedded() as parts:
        conn = await asyncpg.connect(parts.database)
        try:
            await migrate(conn, "allocator", SQL)
            await conn.execute("SET search_path TO allocator")
            await load_vault(conn, console)
            fresh = await bare_claims(conn, 50_000)
            console.print(f"bare claims on a fresh vault: {fresh:,.0f}/s")
            await bare_claims(conn, SOLD - 100_000)
            # Selling 900k codes takes weeks, with autovacuum keeping up; here it took seconds,
            # and its vacuum would otherwise run during (and be billed to) what follows.
            await conn.execute("VACUUM ANALYZE allocator.codes")
            sold = await bare_claims(conn, 50_000)
            console.print(f"bare claims with 90% sold: {sold:,.0f}/s")
            plan = await conn.fetch(
                "EXPLAIN " + CLAIM.replace("$1", "'SKU-1'").replace("$2", "500")
            )
            plan_text = "\n".join(r[0] for r in plan)
            console.print(plan_text)
            service = await through_service(parts, conn, processes=1)
            console.print(f"through the service, one process: {service:,.0f} allocations/s")
            pair = await through_service(parts, conn, processes=2)
            console.print(f"through the service, two processes: {pair:,.0f} allocations/s")
        finally:
            await conn.close()
    result.add("bare claim, fresh vault", fresh, "codes/s", note="batched SKIP LOCKED, 500/tx")
    result.add("bare claim, 900k of 1M sold", sold, "codes/s", note="same loop, same database")
    result.add("bare: sold / fresh", sold / fresh, "ratio", ">= 0.25", "4x decay would be 0.25")
    result.add("service, one process", service, "allocations/s", ">= 3000")
    result.add("service, two processes", pair, "allocations/s", ">= 3000")
    result.add("service (one process) / bare", service / sold, "ratio")
    result.add("service (two processes) / bare", pair / sold, "ratio", ">= 0.6")
    result.details["claim_plan"] = plan_text
    return result
