"""What a chaos scenario must still hold: read from the sandbox inbox, the topics, the database.

Every acknowledged order reaches its buyer exactly once with exactly the codes the allocator
gave it (opened with the stack's own keys, as the buyer's message shows them); no code goes to
two buyers; no forged order gets in; the gateway answers no 5xx but the documented 503.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench.load import NO_ANSWER, SentOrder
from deploy.embedded.broker import client_settings
from shared import kafka_clients
from shared.codecrypt import CodeCipher, SealedCode
from shared.events import CodeAllocated, MessageFailed, OrderPaid
from shared.settings import VaultKeySettings

CODE = re.compile(r"[A-Z]{3,4}-[0-9A-F]{6}-[0-9A-F]{6}|RLD-[0-9A-F]{12}")  # demo, supplier
SERVICES = ("ingest", "allocator", "notifier", "restocker")
FORGED_PREFIX = "FORGED"


@dataclass
class Verdict:
    orders: int = 0  # sent by the load process
    acknowledged: int = 0  # answered 2xx by the gateway
    delivered: int = 0  # every code of the order, once, in its buyer's inbox
    failed: int = 0  # reported on message.failed (allowed: reported, not lost)
    duplicates: int = 0  # codes received more than once, or by two buyers
    lost: int = 0  # acknowledged, neither delivered nor reported failed
    wrong: int = 0  # a buyer received codes that are not theirs
    forged_accepted: int = 0
    unexpected_5xx: Counter[int] = field(default_factory=Counter)
    unready: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)  # which orders / messages, for the report

    @property
    def ok(self) -> bool:
        return not self.problems


def cipher_of(home: Path) -> CodeCipher:
    keys = json.loads((home / "secrets.json").read_text())
    return CodeCipher.from_settings(
        VaultKeySettings(
            vault_keys=keys["TASLEEM_VAULT_KEYS"],
            vault_fingerprint_key=keys["TASLEEM_VAULT_FINGERPRINT_KEY"],
        )
    )


async def read_topic(kafka: str, topic: str) -> list[bytes]:
    """Every record on `topic` from the start, until the broker has nothing more."""
    consumer = kafka_clients.reader(client_settings(kafka), topic)
    await consumer.start()
    values: list[bytes] = []
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=1500, max_records=5000)
            if not batch:
                return values
            for records in batch.values():
                values.extend(r.value for r in records if r.value is not None)
    finally:
        await consumer.stop()


async def inbox_messages(sandbox: str) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session,
        session.get(f"{sandbox}/inbox") as resp,
    ):
        return list((await resp.json())["messages"])


async def inbox(sandbox: str, messages: list[dict[str, Any]] | None = None) -> dict[str, list[str]]:
    """Codes received, by recipient (phone or email), as the buyer reads them."""
    if messages is None:
        messages = await inbox_messages(sandbox)
    received: dict[str, list[str]] = {}
    for message in messages:
        received.setdefault(message["to"], []).extend(CODE.findall(message["text"]))
    return received


def codes_for(order: SentOrder, received: dict[str, list[str]]) -> list[str]:
    # A buyer may be reached on any channel: WhatsApp/SMS by phone, email by address.
    return received.get(order.phone, []) + received.get(order.email, [])


async def delivered_count(sandbox: str, orders: list[SentOrder]) -> int:
    """Orders whose buyer holds at least as many codes as they bought (a cheap progress probe)."""
    received = await inbox(sandbox)
    return sum(1 for o in orders if o.acknowledged and len(codes_for(o, received)) >= o.units)


async def wait_drained(
    sandbox: str, orders: list[SentOrder], kafka: str, limit_s: float, quiet_s: float = 30
) -> float:
    """Wait until every acknowledged order is delivered or reported failed, or progress stops
    for `quiet_s`, or `limit_s` passes. Returns the seconds waited."""
    started = time.monotonic()
    wanted = sum(1 for o in orders if o.acknowledged)
    last, last_change = -1, started
    while time.monotonic() - started < limit_s:
        done = await delivered_count(sandbox, orders)
        if done >= wanted:
            break
        if done != last:
            last, last_change = done, time.monotonic()
        elif time.monotonic() - last_change > quiet_s:
            failed = {
                MessageFailed.model_validate_json(v).order_key
                for v in await read_topic(kafka, MessageFailed.topic)
            }
            if done + len(failed & {o.key for o in orders}) >= wanted:
                break
            if time.monotonic() - last_change > 2 * quiet_s:
                break
        await asyncio.sleep(1.0)
    return time.monotonic() - started


async def unready(
    info: dict[str, Any], limit_s: float = 60, names: tuple[str, ...] = SERVICES
) -> list[str]:
    """Services not answering /readyz 200 within `limit_s` (asked at least once)."""
    deadline = time.monotonic() + limit_s
    pending = list(names)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
        while True:
            for name in list(pending):
                try:
                    async with session.get(f"{info[name]}/readyz") as resp:
                        if resp.status == 200:
                            pending.remove(name)
                except (aiohttp.ClientError, TimeoutError):
                    pass
            if not pending or time.monotonic() >= deadline:
                return pending
            await asyncio.sleep(0.5)


async def check(
    info: dict[str, Any],
    home: Path,
    orders: list[SentOrder],
    *,
    forged_statuses: Sequence[int] = (),
    allow_503: bool = False,
) -> Verdict:
    v = Verdict(orders=len(orders))
    acked = [o for o in orders if o.acknowledged]
    v.acknowledged = len(acked)
    v.unready = await unready(info)
    cipher = cipher_of(home)

    allocations: dict[str, dict[str, CodeAllocated]] = {}
    for value in await read_topic(info["kafka"], CodeAllocated.topic):
        event = CodeAllocated.model_validate_json(value)
        allocations.setdefault(event.order_key, {})[event.event_id] = event
    failed = {
        MessageFailed.model_validate_json(value).order_key
        for value in await read_topic(info["kafka"], MessageFailed.topic)
    }
    paid_keys = {
        OrderPaid.model_validate_json(value).order_key
        for value in await read_topic(info["kafka"], OrderPaid.topic)
    }
    messages = await inbox_messages(info["sandbox"])
    received = await inbox(info["sandbox"], messages)

    # no code to two buyers, and no buyer holding a code twice
    every_code = Counter(code for codes in received.values() for code in codes)
    v.duplicates = sum(n - 1 for n in every_code.values() if n > 1)
    twice = {code for code, n in every_code.items() if n > 1}
    for m in messages:  # evidence, without the codes themselves
        if twice & set(CODE.findall(m["text"])):
            v.evidence.append(
                f"message {m.get('id')} to {m['to']} via {m['channel']}/{m['provider']}"
                f" at {m['at']} repeats a code"
            )
    # the same code_id in the allocations of two orders
    owner: dict[int, str] = {}
    for key, parts in allocations.items():
        for event in parts.values():
            for code in event.codes:
                if owner.setdefault(code.code_id, key) != key:
                    v.duplicates += 1

    for order in acked:
        expected = sorted(
            cipher.open(SealedCode.from_text(c.sealed), c.sku)
            for event in allocations.get(order.key, {}).values()
            for c in event.codes
        )
        got = sorted(codes_for(order, received))
        if got == expected and len(expected) == order.units:
            v.delivered += 1
            continue
        n_parts = len(allocations.get(order.key, {}))
        what = (
            f"{order.key}: {order.units} units, {len(expected)} codes allocated in {n_parts}"
            f" parts, {len(got)} received ({len(set(got))} distinct)"
        )
        if order.key in failed:
            v.failed += 1
            what += ", reported on message.failed"
        elif not got:
            v.lost += 1
        elif set(got) - set(expected):
            v.wrong += 1
        elif len(set(got)) < order.units:
            v.lost += 1  # part of the order never arrived
        v.evidence.append(what)

    v.forged_accepted = sum(1 for key in paid_keys if f":{FORGED_PREFIX}" in key)
    v.forged_accepted += sum(1 for s in forged_statuses if 200 <= s < 300)
    conn = await asyncpg.connect(info["database"])
    try:
        v.forged_accepted += await conn.fetchval(
            "SELECT count(*) FROM allocator.orders WHERE order_id LIKE $1", FORGED_PREFIX + "%"
        )
        sold_twice = await conn.fetchval(
            "SELECT count(*) FROM (SELECT code_id FROM allocator.units WHERE code_id IS NOT NULL"
            " GROUP BY code_id HAVING count(*) > 1) twice"
        )
    finally:
        await conn.close()
    v.duplicates += sold_twice

    for status in [s for o in orders for s in o.statuses] + list(forged_statuses):
        if status >= 500 and not (status == 503 and allow_503):
            v.unexpected_5xx[status] += 1

    if v.lost:
        v.problems.append(f"{v.lost} acknowledged orders lost")
    if v.failed:
        v.problems.append(f"{v.failed} acknowledged orders reported failed, not delivered")
    if v.wrong:
        v.problems.append(f"{v.wrong} buyers received codes that are not theirs")
    if v.duplicates:
        v.problems.append(f"{v.duplicates} codes given twice")
    if v.forged_accepted:
        v.problems.append(f"{v.forged_accepted} forged orders accepted")
    if v.unexpected_5xx:
        v.problems.append(f"gateway 5xx: {dict(v.unexpected_5xx)}")
    if v.unready:
        v.problems.append(f"not ready at the end: {v.unready}")
    unanswered = sum(1 for o in orders if o.statuses and o.statuses[-1] == NO_ANSWER)
    if unanswered:
        v.problems.append(f"{unanswered} orders never answered by the gateway")
    return v
