"""The whole stack, receipts on: the notifier SIGKILLed with more than 100 WhatsApp sends in
flight, and the gateway killed between a provider's receipt and its publish. Each ends with
the chaos check: every buyer has each of their codes exactly once, nothing acknowledged lost."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from chaos.harness import Run, Scenario, Settings, exercise
from chaos.invariants import inbox, unready
from chaos.scenarios import _fault, _restarted
from deploy.embedded.stack import Stack, StackOptions

pytestmark = pytest.mark.e2e

SURGE = Settings(orders=900, rate=300, drain_limit_s=180)


@pytest.fixture(scope="module")
async def stack(tmp_path_factory, module_database) -> AsyncIterator[tuple[Stack, dict[str, Any]]]:
    # a broker of its own: one test stops it
    options = StackOptions(
        home=tmp_path_factory.mktemp("receipts"),
        database_url=module_database,
        kafka_bootstrap=None,
        demo_stock_per_sku=800,
    )
    stack = Stack(options)
    try:
        info = await stack.start()
        supervisor = asyncio.create_task(stack.supervise())
        yield stack, info
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor
    finally:
        stack.stop()


async def sending(database: str) -> int:
    conn = await asyncpg.connect(database)
    try:
        return int(
            await conn.fetchval("SELECT count(*) FROM notifier.attempts WHERE status = 'sending'")
        )
    finally:
        await conn.close()


async def receipts_state(run: Run) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{run.info['sandbox']}/receipts/_settings") as resp,
    ):
        state: dict[str, Any] = await resp.json()
        return state


async def kill_notifier_mid_sends(run: Run) -> float:
    """WhatsApp answers in 700 ms; once the notifier's 128 sends are nearly all in flight,
    SIGKILL (what is still 'sending' after it was cut off by the kill)."""
    await _fault(run, "whatsapp", {"latency_ms": 700})
    deadline = time.monotonic() + 60
    in_flight = 0
    while in_flight < 120:
        if time.monotonic() > deadline:
            raise RuntimeError(f"never 120 sends in flight (at most {in_flight})")
        in_flight = await sending(run.info["database"])
    process = run.stack.processes["notifier"]
    old = process.pid
    process.signal(signal.SIGKILL)
    killed = time.monotonic()
    run.notes["in_flight_at_kill"] = await sending(run.info["database"])
    await _fault(run, "whatsapp", {"latency_ms": 0})
    await _restarted(process, old)
    if await unready({"notifier": run.info["notifier"]}, limit_s=120, names=("notifier",)):
        raise RuntimeError("the notifier was not ready after its restart")
    return killed


async def test_sigkill_with_100_whatsapp_sends_in_flight_sends_no_code_twice(stack):
    running, info = stack
    scenario = Scenario(
        "notifier-kill", "SIGKILL mid-send", kill_notifier_mid_sends, kills=True, fault_at=0.0
    )

    outcome = await exercise(running, info, scenario, SURGE)

    assert outcome.notes["in_flight_at_kill"] >= 100, outcome.notes
    assert outcome.problems == [], outcome.evidence
    assert outcome.acknowledged == outcome.delivered
    assert outcome.duplicates == outcome.lost == 0
    assert outcome.restarts.get("notifier", 0) >= 1
    # the buyers already have the cut-off messages: once the notifier has resolved every one of
    # them (by receipt, after the resume sweep), still nobody has a code twice
    resolved = await settled(info, limit_s=90)
    assert resolved["sending"] == 0, resolved
    # Each cut-off attempt is settled by its receipt (through the resume's wait, counted here,
    # or applied before the resume reached its part), or, when no receipt came because the
    # provider never got the request (still queued in the client, or cut off before WhatsApp
    # read it), it is sent again. How many go each way depends on timing; that none of the
    # ones sent again had reached the buyer is what the inbox shows below.
    assert resolved["receipt"] >= 1, resolved
    codes = [c for got in (await inbox(info["sandbox"])).values() for c in got]
    assert len(codes) == len(set(codes))


async def settled(info: dict[str, Any], limit_s: float) -> dict[str, float]:
    """Waits until no part is left unfinished; how the restarted notifier resolved the attempts
    the kill cut off (its own counter, since its start)."""
    conn = await asyncpg.connect(info["database"])
    try:
        deadline = time.monotonic() + limit_s
        while True:
            left = await conn.fetchval(
                "SELECT count(*) FROM notifier.deliveries WHERE status IN ('pending', 'sending')"
            )
            if left == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
    finally:
        await conn.close()
    found: dict[str, float] = {"sending": left}
    async with aiohttp.ClientSession() as session, session.get(f"{info['notifier']}/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith("tasleem_notifier_interrupted_attempts_total{"):
                how = line.split('resolution="')[1].split('"')[0]
                found[how] = found.get(how, 0) + float(line.rsplit(" ", 1)[1])
    return found


async def kill_gateway_before_its_publish(run: Run) -> float:
    """The broker stops: receipts reach the gateway and wait there for an ack that does not
    come; the gateway is SIGKILLed with them in hand, the broker resumes, the providers retry."""
    broker = run.stack.broker
    assert broker is not None
    before = await receipts_state(run)
    broker.process.signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(1.5)  # receipts arrive and hang on the publish
        gateway = run.stack.processes["ingest"]
        old = gateway.pid
        gateway.signal(signal.SIGKILL)
        killed = time.monotonic()
        await _restarted(gateway, old)
    finally:
        broker.process.signal(signal.SIGCONT)
    if await unready({"ingest": run.info["ingest"]}, limit_s=120, names=("ingest",)):
        raise RuntimeError("the gateway was not ready after its restart")
    run.notes["retried_receipts"] = (await receipts_state(run))["retried"] - before["retried"]
    return killed


async def test_a_gateway_killed_before_publishing_a_receipt_loses_none(stack):
    running, info = stack
    scenario = Scenario(
        "gateway-kill",
        "gateway SIGKILL mid-publish",
        kill_gateway_before_its_publish,
        kills=True,
        allow_503=True,
        fault_at=0.3,
    )

    outcome = await exercise(
        running, info, scenario, Settings(orders=300, rate=100, drain_limit_s=180)
    )

    assert outcome.problems == [], outcome.evidence
    assert outcome.duplicates == outcome.lost == 0
    assert outcome.notes["retried_receipts"] > 0  # the providers did retry
    conn = await asyncpg.connect(info["database"])
    try:
        deadline = time.monotonic() + 60
        while True:  # every receipt arrived in the end: no part is left merely 'accepted'
            left = await conn.fetchval(
                "SELECT count(*) FROM notifier.deliveries WHERE status = 'accepted'"
            )
            if left == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
    finally:
        await conn.close()
    assert left == 0
