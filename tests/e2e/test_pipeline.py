"""The whole system as a user runs it: signed orders in, the right codes in the right inboxes."""

import asyncio
import json
import os
import re
import sys

import aiohttp
import promql_parser
import pytest
from aiokafka import TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from deploy import demo
from deploy.embedded.broker import client_settings
from deploy.embedded.stack import Stack, StackOptions
from shared import kafka_clients
from shared.codecrypt import CodeCipher, SealedCode
from shared.events import CodeAllocated, InventoryLevel, MessageSent
from shared.settings import VaultKeySettings
from tests.deploy.test_monitoring import (
    PROMETHEUS_SERIES,
    SERVICES,
    dashboard_queries,
    repo_dashboard,
    repo_rules,
    rule_list,
    selectors,
)
from tests.tooling import require_tool

pytestmark = pytest.mark.e2e
CODE = re.compile(r"[A-Z]{3,4}-[0-9A-F]{6}-[0-9A-F]{6}|RLD-[0-9A-F]{12}")  # demo, supplier


@pytest.fixture(scope="module")
async def stack(tmp_path_factory, module_database, kafka):
    # Little stock, so the surge runs into backorders and the restocker has to buy. Each
    # store is its own account with its own stock: the surge's 300 orders, spread over the
    # stores, want about 25 units of each store's sku.
    options = StackOptions(
        home=tmp_path_factory.mktemp("stack"),
        database_url=module_database,
        kafka_bootstrap=kafka,
        demo_stock_per_sku=20,
        reorder_point=10,
        order_quantity=30,
    )
    stack = Stack(options)
    try:
        yield stack, await stack.start()
    finally:
        stack.stop()
    exits = {name: p.proc.returncode for name, p in stack.processes.items() if p.proc}
    assert exits == dict.fromkeys(exits, 0), f"a process did not stop cleanly: {exits}"


async def allocations(kafka: str, order_keys: set[str]) -> dict[str, list[CodeAllocated]]:
    consumer = kafka_clients.reader(client_settings(kafka), CodeAllocated.topic)
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
    stocks = len(info["stores"]) * len(info["skus"])  # each store's sku is bought for apart
    assert len(bought) <= 2 * stocks
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

    # a client of the running allocator's admin API, with the stack's own operate token
    env = dict(os.environ)
    cli = [sys.executable, "-m", "deploy.cli", "stock", "import", "--account", "demo-store"]
    cli += ["--sku", "NEW-SKU", "--json"]
    cli += ["--home", str(running.home), str(path)]
    code, out, err = await run(cli, env)
    assert code == 0, err
    assert json.loads(out) == {
        "account": "demo-store",
        "sku": "NEW-SKU",
        "added": 5,
        "duplicates": 2,
        "duplicate_lines": [6, 8],
        "invalid_count": 1,
        "invalid": [{"line": 7, "reason": "empty line"}],
        "truncated": False,
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
    token = (running.home / "admin" / "allocator-read.token").read_text().strip()
    async with aiohttp.ClientSession() as session:
        url = f"{info['allocator']}/admin/stock/NEW-SKU?account=demo-store"
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


# ---- monitoring: what the alerts and the dashboard query is what the services export -------
# These run after the orders above went through, against the same running stack.

# labels Prometheus adds when it scrapes (the ServiceMonitor's), never in a service's exposition
TARGET_LABELS = {"job", "instance", "pod", "namespace", "service_name"}


async def scrape(info: dict) -> dict[str, str]:
    """Each service's /metrics, as Prometheus would read it."""
    texts = {}
    async with aiohttp.ClientSession() as session:
        for name in SERVICES:
            async with session.get(f"{info[name]}/metrics") as resp:
                assert resp.status == 200, name
                texts[name] = await resp.text()
    return texts


def samples(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def selected(selector: promql_parser.VectorSelector, sample: Sample) -> bool:
    """Would Prometheus' selector pick this sample (target labels aside)?"""
    if sample.name != selector.name:
        return False
    for matcher in selector.matchers.matchers:
        if matcher.name in TARGET_LABELS:
            continue
        value = sample.labels.get(matcher.name, "")
        if matcher.op == promql_parser.MatchOp.Equal:
            ok = value == matcher.value
        elif matcher.op == promql_parser.MatchOp.NotEqual:
            ok = value != matcher.value
        elif matcher.op == promql_parser.MatchOp.Re:
            ok = re.fullmatch(matcher.value, value) is not None
        else:
            ok = re.fullmatch(matcher.value, value) is None
        if not ok:
            return False
    return True


def owner(selector: promql_parser.VectorSelector) -> str | None:
    """The service a rule's series comes from: its `service` label or its name's stage."""
    for matcher in selector.matchers.matchers:
        if matcher.name == "service" and matcher.op == promql_parser.MatchOp.Equal:
            return str(matcher.value)
    stage = selector.name.split("_")[1]
    return stage if stage in SERVICES else None


def unmatched_queries(scraped: dict[str, list[Sample]]) -> list[str]:
    """Each selector of an alert rule or a dashboard panel with no sample in the scrape of
    the service it belongs to (a dashboard panel: its row's; a rule: see `owner`, else any)."""
    rules = rule_list(repo_rules())
    recorded = {r["record"] for r in rules if "record" in r}
    queries = [(None, r["expr"]) for r in rules] + list(dashboard_queries(repo_dashboard()))
    missing = []
    for service, expr in queries:
        for selector in selectors(expr):
            if selector.name in recorded | PROMETHEUS_SERIES:
                continue
            where = [service or owner(selector)] if service or owner(selector) else SERVICES
            if not any(selected(selector, s) for name in where for s in scraped[name]):
                missing.append(f"{selector} (from {', '.join(where)}) in {expr.strip()!r}")
    return missing


async def test_every_series_the_alerts_and_the_dashboard_select_is_in_its_services_scrape(stack):
    running, info = stack
    # the restocker measures its lag on a timer: give it a few rounds
    for _ in range(30):
        scraped = {name: samples(text) for name, text in (await scrape(info)).items()}
        missing = unmatched_queries(scraped)
        if not missing:
            break
        await asyncio.sleep(1)
    assert not missing, "\n".join(missing)

    # every consumer (the gateway is none) reports its lag in the one family the alert reads
    for name in SERVICES:
        lags = [s for s in scraped[name] if s.name == "tasleem_consumer_lag"]
        assert {s.labels["service"] for s in lags} == ({name} if name != "ingest" else set())
    restocker = {
        (s.labels["group"], s.labels["topic"], s.labels["partition"])
        for s in scraped["restocker"]
        if s.name == "tasleem_consumer_lag"
    }
    partitions = range(running.options.partitions)
    assert restocker == {("restocker", InventoryLevel.topic, str(p)) for p in partitions}
    # the old, non-base-unit gauge is gone
    assert not [s for s in scraped["restocker"] if "cover_minutes" in s.name]
    # every configured provider's circuit is reported from the start
    circuits = {
        s.labels["provider"]: s.value
        for s in scraped["notifier"]
        if s.name == "tasleem_provider_circuit_open"
    }
    assert set(circuits) == {"whatsapp", "unifonic", "twilio", "email"}
    assert set(circuits.values()) <= {0.0, 1.0}


async def test_promtool_accepts_every_services_metrics(stack):
    promtool = require_tool("promtool", apt_package="prometheus")
    _, info = stack
    for name, text in (await scrape(info)).items():
        proc = await asyncio.create_subprocess_exec(
            promtool,
            "check",
            "metrics",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(text.encode()), 60)
        assert proc.returncode == 0, f"promtool check metrics on {name}'s /metrics: {out.decode()}"


async def sent_event_ids(kafka: str) -> set[str]:
    consumer = kafka_clients.reader(client_settings(kafka), MessageSent.topic)
    await consumer.start()
    found: set[str] = set()
    try:
        while batch := await consumer.getmany(timeout_ms=1000):
            for records in batch.values():
                found |= {MessageSent.model_validate_json(r.value).event_id for r in records}
    finally:
        await consumer.stop()
    return found


async def test_the_delivery_histogram_counts_each_message_sent_exactly_once(stack):
    _, info = stack
    for _ in range(15):  # a late report may still be on its way to the broker
        scraped = samples((await scrape(info))["notifier"])
        counted = sum(s.value for s in scraped if s.name == "tasleem_delivery_seconds_count")
        sent = await sent_event_ids(info["kafka"])
        if counted == len(sent):
            break
        await asyncio.sleep(1)
    assert len(sent) >= 300
    assert counted == len(sent), "tasleem_delivery_seconds must count each message.sent once"
    within = sum(
        s.value
        for s in scraped
        if s.name == "tasleem_delivery_seconds_bucket" and s.labels["le"] == "30.0"
    )
    assert 0 < within <= counted


async def test_the_restockers_lag_is_its_groups_distance_to_the_end_of_each_partition(stack):
    running, info = stack
    tps = [TopicPartition(InventoryLevel.topic, p) for p in range(running.options.partitions)]
    # reads the group's committed offsets; it subscribes to nothing, so it never joins the group
    offsets = kafka_clients.reader(client_settings(info["kafka"]), group_id="restocker")
    await offsets.start()
    try:
        for _ in range(30):
            committed = {tp: await offsets.committed(tp) for tp in tps}
            ends = await offsets.end_offsets(tps)  # after: never behind what was committed
            # A partition no level went to has nothing committed, and nothing to catch up on.
            # Faust at times commits one past the log's end (seen here: 14 on a partition
            # ending at 13): nothing is left to read, and the lag is 0, never negative.
            expected = {
                str(tp.partition): float(max(ends[tp] - (committed[tp] or 0), 0)) for tp in tps
            }
            exported = {
                s.labels["partition"]: s.value
                for s in samples((await scrape(info))["restocker"])
                if s.name == "tasleem_consumer_lag"
            }
            if exported == expected:
                break
            await asyncio.sleep(1)
    finally:
        await offsets.stop()
    assert exported == expected, f"committed {committed}, ends {ends}"
    assert sum(committed[tp] or 0 for tp in tps) > 0, "the restocker consumed levels"
