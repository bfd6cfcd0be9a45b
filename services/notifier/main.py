"""The notifier: `code.allocated` in, a message to the buyer, `message.sent` out."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiohttp

from services.notifier.handlers import Delivery, deliver
from services.notifier.settings import NotifierSettings
from services.notifier.whatsapp import WhatsAppCloud
from shared import runtime
from shared.codecrypt import CodeCipher
from shared.db import RETRIABLE_DB_ERRORS, connect_and_migrate, ping
from shared.events import CodeAllocated
from shared.kafka import ConsumerLoop, make_producer, publish

SQL = Path(__file__).parent / "sql"
SERVICE = "notifier"


@contextlib.asynccontextmanager
async def lifespan(rt: runtime.Runtime) -> AsyncIterator[None]:
    settings = rt.settings
    assert isinstance(settings, NotifierSettings)
    cipher = CodeCipher.from_settings(settings)
    pool = await connect_and_migrate(
        settings.database_url, "notifier", SQL, max_size=settings.db_pool_max
    )
    producer = make_producer(settings)
    await producer.start()
    session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=settings.provider_timeout_s),
        connector=aiohttp.TCPConnector(limit=settings.max_concurrent_sends),
    )
    try:
        delivery = Delivery(
            whatsapp=WhatsAppCloud(
                session,
                settings.whatsapp_base_url,
                settings.whatsapp_api_version,
                settings.whatsapp_token.get_secret_value(),
                settings.whatsapp_phone_number_id,
            ),
            cipher=cipher,
            template=settings.whatsapp_template,
            deadline_s=settings.message_deadline_s,
            concurrency=asyncio.Semaphore(settings.max_concurrent_sends),
        )

        async def on_allocated(batch: Sequence[CodeAllocated]) -> None:
            await publish(producer, await deliver(batch, pool, delivery), SERVICE)

        loop = ConsumerLoop(
            service=SERVICE,
            settings=settings,
            group_id=settings.consumer_group,
            producer=producer,
            retriable=RETRIABLE_DB_ERRORS,
            handlers={CodeAllocated.topic: on_allocated},
        )
        rt.add_worker("consumer", loop.run, loop.stop)
        rt.add_check("consumer", lambda: loop.ready)
        rt.add_check("database", lambda: ping(pool))
        yield
    finally:
        await session.close()
        await producer.stop()
        await pool.close()


def main() -> int:
    return runtime.run(SERVICE, NotifierSettings(), lifespan)


if __name__ == "__main__":
    raise SystemExit(main())
