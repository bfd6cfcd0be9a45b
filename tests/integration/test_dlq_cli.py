"""`tasleem dlq list | show | replay` against the embedded broker, on dead letters made by the
real consumer loop: reason, service and source shown, codes never, and a replay puts the
original key and value back on the source topic, once, recorded for every operator to see."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from aiokafka import TopicPartition
from typer.testing import CliRunner

from deploy.cli import app
from deploy.embedded.broker import client_settings
from shared import kafka_clients
from shared.codecrypt import CodeCipher
from shared.events import AllocatedCode, CodeAllocated, Customer, OrderLine
from shared.kafka import ConsumerLoop, PermanentError, ensure_topics, topic_specs

pytestmark = pytest.mark.integration
CODE = "DLQ-SECRET-CODE-1"


def allocation(cipher: CodeCipher) -> CodeAllocated:
    now = datetime.now(UTC)
    return CodeAllocated(
        event_id="dlq-alloc-1",
        order_key="standard:s1:dlq1",
        part=1,
        store_id="s1",
        order_id="dlq1",
        customer=Customer(phone="+966551239876", email="buyer@example.com", locale="en"),
        lines=[OrderLine(sku="PSN", quantity=1, title="PlayStation")],
        codes=[AllocatedCode(code_id=1, sku="PSN", sealed=cipher.seal(CODE, "PSN").to_text())],
        paid_at=now,
        allocated_at=now,
    )


async def dead_letter_some(kafka: str, sealed_event: CodeAllocated) -> None:
    """A poison `order.paid` and a `code.allocated` its handler refuses, through the real
    consumer loop, which dead-letters both with its headers."""
    settings = client_settings(kafka)
    await ensure_topics(settings, topic_specs(partitions=1))
    producer = kafka_clients.producer(settings)
    await producer.start()
    try:
        await producer.send_and_wait("order.paid", b'{"not": "an order"}', key=b"standard:s1:p1")
        await producer.send_and_wait(
            "code.allocated", sealed_event.model_dump_json().encode(), key=b"standard:s1:dlq1"
        )
        consumer = kafka_clients.group_consumer(
            settings, "order.paid", "code.allocated", group_id="dlq-test"
        )

        async def refuse(batch: Sequence[object]) -> None:
            raise PermanentError("the store is unknown")

        loop = ConsumerLoop(
            service="testsvc",
            consumer=consumer,
            producer=producer,
            handlers={"order.paid": refuse, "code.allocated": refuse},
        )
        running = asyncio.create_task(loop.run())
        dlq = kafka_clients.reader(settings)
        await dlq.start()
        try:
            parts = [TopicPartition("order.paid.dlq", 0), TopicPartition("code.allocated.dlq", 0)]
            for _ in range(200):
                ends = await dlq.end_offsets(parts)
                if all(ends.values()):
                    break
                await asyncio.sleep(0.1)
            assert all(ends.values()), "nothing was dead-lettered"
        finally:
            await dlq.stop()
            loop.stop()
            await running
    finally:
        await producer.stop()


async def read_topic(kafka: str, topic: str) -> list:
    consumer = kafka_clients.reader(client_settings(kafka), topic)
    await consumer.start()
    try:
        found = []
        for _ in range(20):
            batch = await consumer.getmany(timeout_ms=300)
            found += [r for records in batch.values() for r in records]
        return found
    finally:
        await consumer.stop()


def test_list_show_and_replay_dead_letters(kafka, cipher, monkeypatch, tmp_path):
    event = allocation(cipher)
    asyncio.run(dead_letter_some(kafka, event))
    monkeypatch.setenv("TASLEEM_KAFKA_BOOTSTRAP", kafka)
    runner = CliRunner()
    home = ["--home", str(tmp_path)]

    listed = runner.invoke(app, ["dlq", "list", "--json", *home])
    assert listed.exit_code == 0, listed.output
    letters = {d["topic"]: d for d in map(json.loads, listed.output.splitlines())}
    assert set(letters) == {"order.paid.dlq", "code.allocated.dlq"}
    paid, allocated = letters["order.paid.dlq"], letters["code.allocated.dlq"]
    assert paid["service"] == "testsvc" and paid["reason"].startswith("invalid OrderPaid")
    assert paid["source"] == "order.paid/0/0" and paid["key"] == "standard:s1:p1"
    # our own failures are dead-lettered by their code and reason (shared.failures)
    assert allocated["reason"] == "permanent: the store is unknown"
    assert allocated["payload"]["codes"] == [
        {"code_id": 1, "sku": "PSN", "sealed": "•••", "expires_at": None}
    ]
    assert allocated["payload"]["customer"]["phone"] == "+966•••76"
    assert datetime.fromisoformat(allocated["time"]).tzinfo is not None

    table = runner.invoke(app, ["dlq", "list", *home])
    shown = runner.invoke(app, ["dlq", "show", allocated["id"], *home])
    assert shown.exit_code == 0, shown.output
    for output in (listed.output, table.output, shown.output):
        assert CODE not in output
        assert event.codes[0].sealed not in output  # not even sealed
        assert event.codes[0].sealed[:20] not in output

    replayed = runner.invoke(app, ["dlq", "replay", allocated["id"], "--by", "amal", *home])
    assert replayed.exit_code == 0, replayed.output
    assert f"replayed {allocated['id']}" in replayed.output
    records = asyncio.run(read_topic(kafka, "code.allocated"))
    original, again = records[0], records[-1]
    assert len(records) == 2
    assert (again.key, again.value) == (original.key, original.value)
    assert dict(again.headers)["dlq-replayed-from"] == allocated["id"].encode()

    # the replay is recorded: listed with who and when, and not replayed twice by --all
    after = runner.invoke(app, ["dlq", "list", "--json", *home])
    by_topic = {d["topic"]: d for d in map(json.loads, after.output.splitlines())}
    assert len(by_topic) == 2  # the marker is not a dead letter itself
    (replay,) = by_topic["code.allocated.dlq"]["replays"]
    assert replay["by"] == "amal" and replay["to"] == "code.allocated"
    everything = runner.invoke(app, ["dlq", "replay", "--all", "--by", "amal", *home])
    assert everything.exit_code == 0, everything.output
    assert f"replayed {paid['id']}" in everything.output
    assert allocated["id"] not in everything.output
    assert len(asyncio.run(read_topic(kafka, "code.allocated"))) == 2
    assert len(asyncio.run(read_topic(kafka, "order.paid"))) == 2


def test_replay_refuses_what_it_cannot_find(kafka, monkeypatch, tmp_path):
    monkeypatch.setenv("TASLEEM_KAFKA_BOOTSTRAP", kafka)
    runner = CliRunner()
    missing = runner.invoke(app, ["dlq", "replay", "order.paid.dlq:0:999", "--home", str(tmp_path)])
    assert missing.exit_code == 1 and "no dead letter" in missing.output
    neither = runner.invoke(app, ["dlq", "replay", "--home", str(tmp_path)])
    assert neither.exit_code == 2
