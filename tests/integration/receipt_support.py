"""The receipts' real path for notifier tests: the gateway's endpoints on a known port (Twilio
signs the URL it was given), `delivery.receipt` on a real broker, and a notifier consumer that
applies them, as services/notifier/main.py wires it."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestServer

from deploy.embedded.broker import client_settings
from deploy.embedded.processes import free_port
from services.ingest.main import lifespan
from services.ingest.settings import IngestSettings
from services.notifier import receipts
from services.notifier.handlers import Delivery
from services.notifier.settings import NotifierSettings
from shared import kafka_clients, runtime
from shared.codecrypt import generate_key_settings
from shared.events import DeliveryReceipt
from shared.kafka import ConsumerLoop, ensure_topics, topic_specs


@contextlib.asynccontextmanager
async def receipt_path(
    database: str, kafka: str, pool: asyncpg.Pool, delivery: Delivery, **secrets: Any
) -> AsyncIterator[str]:
    """Yields the gateway's URL; receipts posted there are applied to `pool`'s journal."""
    await ensure_topics(client_settings(kafka), topic_specs(4))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = IngestSettings(
        kafka_bootstrap=kafka,
        database_url=database,
        gateway_public_url=url,
        vault_keys=generate_key_settings()["TASLEEM_VAULT_KEYS"],  # the gateway seals secrets
        **secrets,
    )
    app = web.Application()
    rt = runtime.Runtime("ingest", settings, app)
    notifier = NotifierSettings(kafka_bootstrap=kafka)
    producer = kafka_clients.producer(notifier)
    await producer.start()

    async def on_receipts(batch: Sequence[DeliveryReceipt]) -> None:
        await receipts.apply(batch, pool, delivery)

    loop = ConsumerLoop(
        service="notifier",
        consumer=kafka_clients.group_consumer(
            notifier, DeliveryReceipt.topic, group_id=f"notifier-{uuid.uuid4().hex[:8]}"
        ),
        producer=producer,
        handlers={DeliveryReceipt.topic: on_receipts},
    )
    consuming = asyncio.create_task(loop.run())
    try:
        async with lifespan(rt):
            server = TestServer(app, port=port)
            await server.start_server()
            try:
                while not loop.ready:
                    await asyncio.sleep(0.05)
                yield url
            finally:
                await server.close()
    finally:
        loop.stop()
        with contextlib.suppress(Exception):
            await consuming
        await producer.stop()
