"""The whole system as a user runs it: signed orders in, the right codes in the right inboxes."""

import asyncio
import json
import os
import re
import sys

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer

from deploy import demo
from deploy.embedded.stack import Stack, StackOptions
from shared.codecrypt import CodeCipher, SealedCode
from shared.events import CodeAllocated
from shared.settings import VaultKeySettings

pytestmark = pytest.mark.e2e
CODE = re.compile(r"[A-Z]{3,4}-[0-9A-F]{6}-[0-9A-F]{6}|RLD-[0-9A-F]{12}")  # demo, supplier


@pytest.fixture(scope="module")
async def stack(tmp_path_factory, module_database, kafka):
    # Little stock, so the surge runs into backorders and the restocker has to buy.
    options = StackOptions(
        home=tmp_path_factory.mktemp("stack"),
        database_url=module_database,
        kafka_bootstrap=kafka,
        demo_stock_per_sku=100,
        reorder_point=40,
        order_quantity=150,
    )
    stack = Stack(options)
    try:
        yield stack, await stack.start()
    finally:
        stack.stop()
    exits = {name: p.proc.returncode for name, p in stack.processes.items() if p.proc}
    assert exits == dict.fromkeys(exits, 0), f"a process did not stop cleanly: {exits}"


async def allocations(kafka: str, order_keys: set[str]) -> dict[str, list[CodeAllocated]]:
    consumer = AIOKafkaConsumer(
        CodeAllocated.topic, bootstrap_servers=kafka, auto_offset_reset="earliest"
    )
    await consumer.start()
    found: dict[str, list[CodeAllocated]] = {}
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=1000)
            if not batch:
                break
            for records in batch.values():
                for record in records:
                    event = CodeAllocated.model_validate_json(record.value)
                    if event.order_key in order_keys:
                        parts = found.setdefault(event.order_key, [])
                        if all(p.event_id != event.event_id for p in parts):
                            parts.append(event)
    finally:
        await consumer.stop()
    return found


async def test_300_orders_reach_exactly_their_buyers(stack):
    running, info = stack
    result = await demo.surge(info, orders=300, rate=150, timeout_s=180, seed=7)

    assert result.accepted == 300
    assert result.delivered_orders == set(result.order_keys), "every order delivered in full"
    assert not result.failed_orders
    assert len(result.code_ids) == len(set(result.code_ids)), "no code handed out twice"

    secrets = json.loads((running.home / "secrets.json").read_text())
    cipher = CodeCipher.from_settings(
        VaultKeySettings(
            vault_keys=secrets["TASLEEM_VAULT_KEYS"],
            vault_fingerprint_key=secrets["TASLEEM_VAULT_FINGERPRINT_KEY"],
        )
    )
    by_order = await allocations(info["kafka"], result.order_keys)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{info['sandbox']}/inbox") as resp:
            inbox = (await resp.json())["messages"]
        async with session.get(f"{info['sandbox']}/reloadly/_purchases") as resp:
            purchases = await resp.json()

    received: dict[str, list[str]] = {}
    for message in inbox:
        received.setdefault(message["to"], []).extend(CODE.findall(message["text"]))
    all_codes = [code for codes in received.values() for code in codes]
    assert len(all_codes) == len(set(all_codes)), "a code reached two messages"

    for key, phone in result.customers.items():
        expected = sorted(
            cipher.open(SealedCode.from_text(c.sealed), c.sku)
            for part in by_order[key]
            for c in part.codes
        )
        assert sorted(received.get(phone, [])) == expected, f"{key}: wrong codes"
        assert len(expected) == result.units_by_order[key]

    # the restocker bought, but within its policy: no runaway buying
    bought = purchases["orders"]
    assert bought, "the surge should have needed a purchase"
    assert len(bought) <= 9
    assert len({p["customIdentifier"] for p in bought}) == len(bought)


async def test_stock_import_from_a_file_skips_duplicates_and_fills_backorders(stack, tmp_path):
    running, info = stack
    codes = [f"IMP-{i:06X}-ABCDEF" for i in range(5)]
    path = tmp_path / "codes.txt"
    path.write_text("\n".join([*codes, codes[0], "", codes[1].lower()]) + "\n")
    phone = "+966511122233"
    async with aiohttp.ClientSession() as session:
        order = {
            "lines": [{"sku": "NEW-SKU", "quantity": 2}],
            "customer": {"name": "Late Buyer", "phone": phone, "email": None, "locale": "en"},
        }
        async with session.post(f"{info['sandbox']}/stores/demo-store/orders", json=order) as r:
            assert (await r.json())["status"] == 202  # accepted, but nothing in stock yet

    env = {**os.environ, "TASLEEM_DATABASE_URL": info["database"]}
    cli = [sys.executable, "-m", "deploy.cli", "stock", "import", "--sku", "NEW-SKU"]
    cli += ["--home", str(running.home), str(path)]
    code, out, err = await run(cli, env)
    assert code == 0, err
    assert json.loads(out) == {
        "sku": "NEW-SKU",
        "added": 5,
        "duplicates": 2,
        "duplicate_lines": [6, 8],
        "invalid": [{"line": 7, "reason": "empty line"}],
    }
    assert "IMP-" not in out + err  # a report never shows a code
    code, out, _ = await run(cli, env)
    assert json.loads(out)["added"] == 0

    # the backordered order is filled from the import, oldest first, and delivered
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            async with session.get(f"{info['sandbox']}/inbox", params={"to": phone}) as resp:
                messages = (await resp.json())["messages"]
            if messages:
                break
            await asyncio.sleep(0.1)
    assert len(messages) == 1
    assert sorted(CODE.findall(messages[0]["text"])) == codes[:2]

    # the local stack's admin API answers with its token, and only with it
    token = (running.home / "admin_token").read_text().strip()
    async with aiohttp.ClientSession() as session:
        url = f"{info['allocator']}/admin/stock/NEW-SKU"
        async with session.get(url) as resp:
            assert resp.status == 401
        async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
            (sku,) = (await resp.json())["skus"]
    assert (sku["available"], sku["backordered"]) == (3, 0)
    assert sku["reserved"] + sku["sold"] == 2


async def run(argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()
