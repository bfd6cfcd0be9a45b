"""One chaos scenario from start to verdict: a fresh stack, a surge from the load process, the
fault in the middle of it, then the invariant check."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench import load
from chaos import invariants
from deploy.embedded.stack import SERVICES, Stack, StackOptions


@dataclass
class Settings:
    orders: int = 3000
    rate: float = 100.0
    forged: int = 10_000
    broker_pause_s: float = 15.0
    whatsapp_down_s: float = 30.0
    supplier_fault_s: float = 30.0
    drain_limit_s: float = 300.0


@dataclass
class Run:
    """What a fault needs: the running stack and a place to leave what it observed."""

    stack: Stack
    info: dict[str, Any]
    settings: Settings
    forged_statuses: list[int] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)  # what the fault saw, for the report
    # what a fault hands its check, not for the report (tasks, objects)
    scratch: dict[str, Any] = field(default_factory=dict)


@dataclass
class Scenario:
    name: str
    title: str
    # returns once the fault is over: None, or the monotonic time its last blow was struck
    fault: Callable[[Run], Awaitable[float | None]]
    options: dict[str, Any] = field(default_factory=dict)  # StackOptions overrides
    allow_503: bool = False  # the gateway's documented 503 while the broker is away
    kills: bool = False  # restarts are the point, not a crash
    extra_check: Callable[[Run], Awaitable[list[str]]] | None = None
    fault_at: float = 0.25  # how far into the surge the fault starts

    @property
    def tag(self) -> str:
        """Order ids of this scenario's surge start with it (letters and digits only)."""
        return "CHAOS" + "".join(ch for ch in self.name.upper() if ch.isalnum())


@dataclass
class Outcome:
    scenario: str
    title: str
    orders: int
    acknowledged: int
    delivered: int
    duplicates: int
    lost: int
    failed: int  # reported on message.failed instead of delivered
    recover_s: float | None
    drain_s: float
    ok: bool
    problems: list[str]
    restarts: dict[str, int]
    evidence: list[str] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)


async def inbox_size(session: aiohttp.ClientSession, sandbox: str) -> int:
    async with session.get(f"{sandbox}/inbox") as resp:
        return len((await resp.json())["messages"])


async def time_to_recover(run: Run, cleared: float, load_done: asyncio.Event) -> float | None:
    """Seconds from the fault's end until every service is ready and a buyer receives a message
    again (or, when nothing was left to deliver, until every service is ready)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        before = await inbox_size(session, run.info["sandbox"])
        ready_at = None
        while time.monotonic() - cleared < run.settings.drain_limit_s:
            if ready_at is None and not await invariants.unready(run.info, limit_s=0):
                ready_at = time.monotonic()
            if ready_at is not None:
                if await inbox_size(session, run.info["sandbox"]) > before:
                    return time.monotonic() - cleared
                if load_done.is_set() and time.monotonic() - ready_at > 10:
                    return ready_at - cleared
            await asyncio.sleep(0.25)
    return None


def codes_in_logs(logs: Path, codes: set[str]) -> list[str]:
    """Service logs that contain a plain-text code (the sandbox plays the buyer: not checked)."""
    found = []
    for name in SERVICES:
        path = logs / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        if any(code in text for code in codes):
            found.append(name)
    return found


async def run_scenario(scenario: Scenario, settings: Settings, home: Path) -> Outcome:
    """On a fresh stack of its own (embedded database and broker: chaos stops them)."""
    shutil.rmtree(home, ignore_errors=True)
    wanted: dict[str, Any] = {"demo_stock_per_sku": max(1000, settings.orders)}
    options = StackOptions(
        home=home,
        database_url=None,
        kafka_bootstrap=None,
        **{**wanted, **scenario.options},
    )
    stack = Stack(options)
    try:
        info = await stack.start()
        supervisor = asyncio.create_task(stack.supervise())
        try:
            return await exercise(stack, info, scenario, settings)
        finally:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
    finally:
        await asyncio.to_thread(stack.stop)
        shutil.rmtree(home / "pg", ignore_errors=True)  # large; the logs stay for reading


async def exercise(
    stack: Stack, info: dict[str, Any], scenario: Scenario, settings: Settings
) -> Outcome:
    """Surge, fault a quarter of the way in, recover, drain, check. The stack must be supervised."""
    run = Run(stack, info, settings)
    restarts_before = {n: p.restarts for n, p in stack.all_processes().items()}
    out = stack.home / f"load-{scenario.name}-{int(time.time())}.json"
    sender = await load.start(
        stack.home,
        settings.orders,
        settings.rate,
        out,
        tag=f"{scenario.tag}{int(time.time()) % 10**6}",
    )
    load_done = asyncio.Event()
    waiter = asyncio.create_task(sender.wait())
    waiter.add_done_callback(lambda _: load_done.set())
    try:
        await asyncio.sleep(scenario.fault_at * settings.orders / settings.rate)
        cleared = await scenario.fault(run) or time.monotonic()
        recover_s = await time_to_recover(run, cleared, load_done)
        if await waiter != 0:
            raise RuntimeError(f"the load process failed ({sender.returncode})")
    finally:
        if sender.returncode is None:
            sender.kill()
    orders = load.read(out)
    # every answer the gateway gave the surge, retries included (503s while the broker is away)
    run.notes["gateway_statuses"] = dict(Counter(s for o in orders for s in o.statuses))
    drain_s = await invariants.wait_drained(
        info["sandbox"], orders, info["kafka"], settings.drain_limit_s
    )
    verdict = await invariants.check(
        info, stack.home, orders, forged_statuses=run.forged_statuses, allow_503=scenario.allow_503
    )
    problems = list(verdict.problems)
    if scenario.extra_check:
        problems += await scenario.extra_check(run)
    restarts = {
        n: p.restarts - restarts_before.get(n, 0)
        for n, p in stack.all_processes().items()
        if p.restarts - restarts_before.get(n, 0)
    }
    if not scenario.kills and any(n in SERVICES for n in restarts):
        problems.append(f"a service crashed and was restarted: {restarts}")
    leaked = codes_in_logs(Path(info["logs"]), set(await _all_codes(info["sandbox"])))
    if leaked:
        problems.append(f"plain-text codes in the logs of {leaked}")
    if recover_s is None:
        problems.append("did not recover")
    return Outcome(
        scenario=scenario.name,
        title=scenario.title,
        orders=verdict.orders,
        acknowledged=verdict.acknowledged,
        delivered=verdict.delivered,
        duplicates=verdict.duplicates,
        lost=verdict.lost,
        failed=verdict.failed,
        recover_s=recover_s,
        drain_s=drain_s,
        ok=not problems,
        problems=problems,
        restarts=restarts,
        notes=run.notes,
        evidence=verdict.evidence[:20],
    )


async def _all_codes(sandbox: str) -> list[str]:
    received = await invariants.inbox(sandbox)
    return [code for codes in received.values() for code in codes]


def scratch_home(name: str) -> Path:
    """A folder per run (`<name>-<time>`): a failed run's logs stay for reading even when the
    same scenario runs again (the database files are removed after each run; the logs are
    small)."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    return Path(tempfile.gettempdir()) / "tasleem-chaos" / f"{name}-{stamp}"
