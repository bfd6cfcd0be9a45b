"""Two processes per consumer stage in one consumer group (StackOptions.replicas): the orders
are shared between them, and every order still reaches its buyer exactly once."""

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from deploy import demo
from deploy.embedded.stack import Stack, StackOptions
from shared.events import CodeAllocated, OrderPaid

pytestmark = pytest.mark.e2e

STAGES = {"allocator": OrderPaid.topic, "notifier": CodeAllocated.topic}


@pytest.fixture(scope="module")
async def stack(tmp_path_factory, module_database, kafka):
    options = StackOptions(
        home=tmp_path_factory.mktemp("stack"),
        database_url=module_database,
        kafka_bootstrap=kafka,
        demo_stock_per_sku=200,
        replicas={"allocator": 2, "notifier": 2},
    )
    stack = Stack(options)
    try:
        yield stack, await stack.start()
    finally:
        stack.stop()


async def handled(session: aiohttp.ClientSession, port: int, topic: str) -> float:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "tasleem_messages"
        for sample in family.samples
        if sample.name == "tasleem_messages_total"
        and sample.labels["topic"] == topic
        and sample.labels["outcome"] == "ok"
    )


async def test_replicas_share_their_stage_s_partitions_and_deliver_each_order_once(stack):
    running, info = stack
    assert {"allocator-2", "notifier-2"} <= set(running.processes)

    result = await demo.surge(info, orders=120, rate=60, timeout_s=180, seed=3)

    assert result.accepted == 120
    assert result.delivered_orders == set(result.order_keys)
    assert len(result.code_ids) == len(set(result.code_ids)), "no code handed out twice"
    async with aiohttp.ClientSession() as session:
        for stage, topic in STAGES.items():
            counts = [
                await handled(session, running.ports[name], topic) for name in (stage, f"{stage}-2")
            ]
            assert all(n > 0 for n in counts), f"{stage}: a replica handled nothing: {counts}"
        # the follower drops repeated events by id; the buyers' inboxes would show a part
        # that two notifiers both sent: one message per part sent, and none beyond
        async with session.get(f"{info['sandbox']}/inbox") as resp:
            inbox = (await resp.json())["messages"]
    assert len(inbox) == len(result.latencies_ms)
    assert {m["to"] for m in inbox} == set(result.customers.values())
