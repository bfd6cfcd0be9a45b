"""The faults, each started a quarter of the way into a surge; a fault returns once cleared."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter

import aiohttp
import asyncpg

from chaos import forged
from chaos.harness import Run, Scenario
from chaos.invariants import unready
from deploy.embedded.processes import ManagedProcess
from deploy.embedded.stack import SERVICES


async def _restarted(process: ManagedProcess, old_pid: int | None, limit_s: float = 60) -> None:
    """Wait until the stack's supervisor has started `process` again."""
    deadline = time.monotonic() + limit_s
    while not (process.running() and process.pid != old_pid):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{process.name} was not restarted")
        await asyncio.sleep(0.05)


async def kill_twice(run: Run, names: tuple[str, ...] = SERVICES) -> float:
    """SIGKILL each service, then again as soon as the supervisor has restarted it (mid-start),
    then wait for it to be ready before the next one."""
    ready_s = run.notes.setdefault("ready_after_second_kill_s", {})
    last_kill = time.monotonic()
    for name in names:
        process = run.stack.processes[name]
        old = process.pid
        process.signal(signal.SIGKILL)
        await _restarted(process, old)
        await asyncio.sleep(0.3)  # inside its start-up: imports done, connecting
        old = process.pid
        process.signal(signal.SIGKILL)
        last_kill = time.monotonic()
        await _restarted(process, old)
        if await unready({name: run.info[name]}, limit_s=120, names=(name,)):
            raise RuntimeError(f"{name} not ready after its restart")
        ready_s[name] = round(time.monotonic() - last_kill, 2)
    return last_kill


async def kill_allocator_and_notifier(run: Run) -> float:
    return await kill_twice(run, ("allocator", "notifier"))


async def pause_broker(run: Run) -> float | None:
    broker = run.stack.broker
    if broker is None:
        raise RuntimeError("needs the embedded broker")
    broker.process.signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(run.settings.broker_pause_s)
    finally:
        broker.process.signal(signal.SIGCONT)
    return None


async def restart_postgres(run: Run) -> float | None:
    """A fast shutdown of the embedded PostgreSQL; the stack's supervisor starts it again."""
    postgres = run.stack.postgres
    if postgres is None:
        raise RuntimeError("needs the embedded PostgreSQL")
    old = postgres.process.pid
    postgres.process.signal(signal.SIGINT)
    await _restarted(postgres.process, old)
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = await asyncpg.connect(run.info["database"], timeout=2)
            await conn.close()
            return None
        except (OSError, asyncpg.PostgresError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def _fault(run: Run, party: str, change: dict[str, object]) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.put(f"{run.info['sandbox']}/faults/{party}", json=change) as resp,
    ):
        resp.raise_for_status()


async def whatsapp_down(run: Run) -> float | None:
    await _fault(run, "whatsapp", {"down": True})
    try:
        await asyncio.sleep(run.settings.whatsapp_down_s)
    finally:
        await _fault(run, "whatsapp", {"down": False})
    return None


async def _purchases(run: Run) -> list[dict[str, object]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{run.info['sandbox']}/reloadly/_purchases") as resp,
    ):
        return list((await resp.json())["orders"])


async def supplier_charges_then_times_out(run: Run) -> float | None:
    before = len(await _purchases(run))
    await _fault(run, "reloadly", {"charge_then_timeout": True})
    try:
        await asyncio.sleep(run.settings.supplier_fault_s)
    finally:
        await _fault(run, "reloadly", {"charge_then_timeout": False})
    run.notes["charged_during_fault"] = len(await _purchases(run)) - before
    return None


async def no_double_purchase(run: Run) -> list[str]:
    """Every supplier order has its own reference: a retry after a timeout never bought twice."""
    bought = await _purchases(run)
    references = [p["customIdentifier"] for p in bought]
    run.notes["purchases"] = len(bought)
    problems = []
    if not run.notes.get("charged_during_fault"):
        problems.append("nothing was bought while the fault was on: it was never exercised")
    if len(set(references)) != len(references):
        problems.append(f"bought twice under one reference: {len(references)} orders")
    return problems


async def forged_mix(run: Run) -> float | None:
    """The bad webhooks, spread over the rest of the surge."""
    from bench.load import stores_of

    store = next(s for s in stores_of(run.stack.home) if s.platform == "standard")
    surge_left = 0.75 * run.settings.orders / run.settings.rate
    rate = max(50.0, run.settings.forged / max(surge_left, 1.0))
    run.forged_statuses = await forged.send(run.info["ingest"], store, run.settings.forged, rate)
    run.notes["forged_statuses"] = dict(Counter(run.forged_statuses))
    return None


async def hostile_mix(run: Run) -> float | None:
    """Every attack of chaos/hostile.py, five rounds over the surge, beside the forged mix,
    while the allocator's memory is watched until the check."""
    from chaos import hostile
    from deploy.embedded.stack import DEMO_SKUS

    memory = hostile.Memory()
    stop = asyncio.Event()
    allocator = run.stack.processes["allocator"]
    run.scratch["rss"] = (
        stop,
        memory,
        asyncio.create_task(hostile.watch_rss(lambda: allocator.pid, stop, memory)),
    )
    surge_left = 0.7 * run.settings.orders / run.settings.rate
    attacks = hostile.send_all(
        run.info["ingest"], run.stack.home, [s.sku for s in DEMO_SKUS], 5, surge_left / 5
    )
    answered, _ = await asyncio.gather(attacks, forged_mix(run))
    run.scratch["answered"] = answered
    run.notes["hostile_statuses"] = dict(Counter(f"{a.kind}: {status}" for a, status in answered))
    return None


async def hostile_check(run: Run) -> list[str]:
    from chaos import hostile

    stop, memory, watcher = run.scratch["rss"]
    problems = await hostile.check(run.info, run.scratch["answered"], limit_s=120)
    stop.set()
    await watcher
    run.notes["allocator_peak_rss_mib"] = round(memory.allocator_peak_rss / 2**20, 1)
    if memory.allocator_peak_rss > hostile.ALLOCATOR_RSS_LIMIT:
        problems.append(f"allocator memory peaked at {run.notes['allocator_peak_rss_mib']} MiB")
    return problems


LITTLE_STOCK = {"demo_stock_per_sku": 150, "reorder_point": 100, "order_quantity": 600}

ALL = [
    Scenario("kill", "SIGKILL each service, twice", kill_twice, kills=True),
    Scenario("broker", "broker SIGSTOP, then SIGCONT", pause_broker, allow_503=True),
    Scenario("postgres", "restart PostgreSQL", restart_postgres),
    Scenario("whatsapp", "WhatsApp down", whatsapp_down),
    Scenario(
        "supplier",
        "supplier times out after charging",
        supplier_charges_then_times_out,
        options=LITTLE_STOCK,
        extra_check=no_double_purchase,
        fault_at=0.0,  # before the first purchase, which comes within seconds
    ),
    Scenario("forged", "10,000 forged/malformed/oversized webhooks", forged_mix),
    Scenario(
        "hostile",
        "signed attacks (unpaid, cancel-by-header, caps, odd ids) with the forged mix",
        hostile_mix,
        extra_check=hostile_check,
    ),
]
BY_NAME = {s.name: s for s in ALL}
