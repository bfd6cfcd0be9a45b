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
from collections.abc import Sequence

import asyncpg
from rich.console import Console

from bench.common import BenchResult, cpu_seconds
from bench.stack_parts import embedded
from deploy.embedded.broker import client_settings
from deploy.embedded.processes import ManagedProcess, free_port
from services.allocator.main import SQL
from shared import kafka_clients
from shared.codecrypt import generate_key_settings
from shared.db import migrate
from shared.events import Customer, OrderLine, OrderPaid, event_id_for, utcnow
from shared.kafka import publish

SKUS = [f"SKU-{i}" for i in range(10)]
ACCOUNT = "bench"  # every code and order belongs to one merchant account, as a store's do
VAULT = 1_000_000
SOLD = 900_000
ORDERS = 30_000
BATCH = 500

CLAIM = """
UPDATE codes SET status = 'allocated'
WHERE code_id IN (
    SELECT code_id FROM codes
    WHERE account = $3 AND sku = $1 AND status = 'available'
      AND (expires_at IS NULL OR expires_at > now())
    ORDER BY expires_at ASC NULLS LAST, code_id
    LIMIT $2 FOR UPDATE SKIP LOCKED)
RETURNING code_id
"""


async def load_vault(conn: asyncpg.Connection, console: Console) -> None:
    """1M codes: sealed-looking text and random fingerprints (allocation never opens a code)."""
    rows = (
        (
            ACCOUNT,
            SKUS[i % len(SKUS)],
            os.urandom(32),
            "k1:" + base64.b64encode(os.urandom(48)).decode(),
        )
        for i in range(VAULT)
    )
    started = time.perf_counter()
    await conn.copy_records_to_table(
        "codes",
        records=rows,
        columns=["account", "sku", "fingerprint", "sealed"],
        schema_name="allocator",
    )
    await conn.execute("ANALYZE allocator.codes")
    console.print(f"loaded {VAULT:,} codes in {time.perf_counter() - started:.1f}s")


async def bare_claims(conn: asyncpg.Connection, total: int) -> float:
    """Codes claimed per second by the bare loop: one batched claim per transaction."""
    claimed, started, n = 0, time.perf_counter(), 0
    while claimed < total:
        async with conn.transaction():
            rows = await conn.fetch(CLAIM, SKUS[n % len(SKUS)], BATCH, ACCOUNT)
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
                account=ACCOUNT,  # the runs' stores share the bench account's vault
                order_id=str(i),
                lines=[OrderLine(sku=rng.choice(SKUS), quantity=rng.choice((1, 2)))],
                customer=Customer(phone="+966500000001"),
                paid_at=now,
                received_at=now,
            )
        )
    return out


class CpuMeter:
    """CPU seconds spent by the database, the broker and the allocators over a window, to say
    where an allocation's cost lands (one machine runs all three)."""

    def __init__(self, parts, allocators: Sequence[ManagedProcess] = ()):
        self.roots = {
            "database": [parts.postgres.process.pid],
            "broker": [parts.broker.process.pid],
            "allocators": [p.pid for p in allocators],
        }
        self._start: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        return {part: sum(cpu_seconds(pid) for pid in pids) for part, pids in self.roots.items()}

    def start(self) -> None:
        self._start = self._now()

    def stop(self) -> dict[str, float]:
        return {part: t - self._start[part] for part, t in self._now().items()}


COMMITTED = "SELECT count(*) FROM allocator.orders WHERE store_id = $1"
UNITS_SO_FAR = "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM allocator.units_seq_seq"


async def through_service(
    parts, conn: asyncpg.Connection, processes: int
) -> tuple[float, dict[str, float]]:
    """Allocations per second of `processes` allocators (one consumer group, as deployed)
    working off a backlog of orders of their own; with the CPU seconds each part spent per
    1,000 allocations."""
    run = f"bench-{processes}"
    backlog = orders(ORDERS, run)
    units = sum(o.lines[0].quantity for o in backlog)
    producer = kafka_clients.producer(client_settings(parts.kafka))
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
    # took a tenth of a core from the allocators being measured. The end is when every order
    # is committed (the sequence also counts units of transactions rolled back in a rebalance).
    start = await conn.fetchval(UNITS_SO_FAR)
    meter = CpuMeter(parts, allocators)
    try:
        first = None
        async with asyncio.timeout(600):
            while (done := await conn.fetchval(UNITS_SO_FAR) - start) < units:
                if done and first is None:
                    first, first_done = time.perf_counter(), done
                    meter.start()
                for process in allocators:
                    if not process.running():
                        raise RuntimeError(f"allocator died:\n{process.tail()}")
                await asyncio.sleep(0.02)
            committed = 0
            while committed < ORDERS:
                await asyncio.sleep(0.02)
                committed = await conn.fetchval(COMMITTED, run)
        last, cpu = time.perf_counter(), meter.stop()
        assert first is not None
        waiting = await conn.fetchval(
            "SELECT count(*) FROM allocator.units u JOIN allocator.orders o USING (order_key) "
            "WHERE o.store_id = $1 AND u.code_id IS NULL",
            run,
        )
        if waiting:  # backorders are cheaper than allocations: the figure would flatter
            raise RuntimeError(f"the vault ran short: {waiting} units backordered")
        ms_per_thousand = {part: t * 1e6 / (units - first_done) for part, t in cpu.items()}
        return (units - first_done) / (last - first), ms_per_thousand
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
            await bare_claims(conn, SOLD - 150_000)  # three 50k measurements make up the rest
            sold_now = await bare_claims(conn, 50_000)
            console.print(f"bare claims right after 900k sales: {sold_now:,.0f}/s")
            # Selling 900k codes takes weeks, with autovacuum keeping up; here it took seconds,
            # and its vacuum would otherwise run during (and be billed to) what follows.
            await conn.execute("VACUUM ANALYZE allocator.codes")
            meter = CpuMeter(parts)
            meter.start()
            sold = await bare_claims(conn, 50_000)
            bare_cpu = {part: t * 1e6 / 50_000 for part, t in meter.stop().items()}
            console.print(f"bare claims with 90% sold, vacuumed: {sold:,.0f}/s")
            plan = await conn.fetch(
                "EXPLAIN "
                + CLAIM.replace("$1", "'SKU-1'").replace("$2", "500").replace("$3", "'bench'")
            )
            plan_text = "\n".join(r[0] for r in plan)
            console.print(plan_text)
            one, one_cpu = await through_service(parts, conn, processes=1)
            console.print(f"through the service, one process: {one:,.0f} allocations/s")
            two, two_cpu = await through_service(parts, conn, processes=2)
            console.print(f"through the service, two processes: {two:,.0f} allocations/s")
        finally:
            await conn.close()
    result.add("bare claim, fresh vault", fresh, "codes/s", note="batched SKIP LOCKED, 500/tx")
    result.add("bare claim, right after 900k sales", sold_now, "codes/s", note="same loop")
    result.add("bare: sold / fresh", sold_now / fresh, "ratio", ">= 0.25", "4x decay: 0.25")
    result.add("bare claim, 900k sold, vacuumed", sold, "codes/s", note="the baseline below")
    result.add("service, one process", one, "allocations/s", ">= 3000")
    result.add("service, two processes", two, "allocations/s", ">= 3000", "as deployed")
    result.add("service (one process) / bare", one / sold, "ratio")
    result.add("service (two processes) / bare", two / sold, "ratio", ">= 0.6")
    for label, cpu in (("bare claim", bare_cpu), ("service, two processes", two_cpu)):
        for part, ms in cpu.items():
            if ms:
                result.add(f"{label}: {part} CPU", ms, "ms per 1,000")
    result.details["claim_plan"] = plan_text
    result.details["cpu_ms_per_1000"] = {"bare": bare_cpu, "one": one_cpu, "two": two_cpu}
    return result
