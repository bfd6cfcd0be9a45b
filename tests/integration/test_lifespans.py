"""A service whose start fails part-way leaves nothing open: the database connections its pool
had made are closed, whether its Kafka clients could not be built or its producer could not
reach the broker."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from deploy.embedded.processes import free_port
from services.allocator import main as allocator
from services.allocator.settings import AllocatorSettings
from services.ingest import main as ingest
from services.ingest.settings import IngestSettings
from services.notifier import main as notifier
from services.notifier.settings import NotifierSettings
from shared import runtime

pytestmark = pytest.mark.integration

SERVICES: dict[str, tuple[Any, type[Any]]] = {
    "allocator": (allocator.lifespan, AllocatorSettings),
    "ingest": (ingest.lifespan, IngestSettings),
    "notifier": (notifier.lifespan, NotifierSettings),
}
BROKEN_KAFKA = {
    # nothing listens there: the producer's start fails
    "unreachable": lambda: {"kafka_bootstrap": f"127.0.0.1:{free_port()}"},
    # the clients cannot even be built: their TLS context has no CA file to read
    "unbuildable": lambda: {
        "kafka_bootstrap": "127.0.0.1:9093",
        "kafka_security_protocol": "SSL",
        "kafka_ssl_cafile": "/nonexistent/ca.crt",
    },
}


async def connections_of(database: str, role: str) -> int:
    conn = await asyncpg.connect(database)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND usename = $1",
            role,
        )
        return count
    finally:
        await conn.close()


async def migrations_of(database: str, service: str) -> int:
    conn = await asyncpg.connect(database)
    try:
        count: int = await conn.fetchval(f'SELECT count(*) FROM "{service}".schema_migrations')
        return count
    finally:
        await conn.close()


@pytest.mark.parametrize("broken", list(BROKEN_KAFKA))
@pytest.mark.parametrize("service", list(SERVICES))
async def test_a_start_that_fails_leaves_no_connection_open(
    service, broken, database, service_databases, vault_env, monkeypatch
):
    for name, value in vault_env.items():
        monkeypatch.setenv(name, value)
    lifespan, settings_class = SERVICES[service]
    settings = settings_class(
        database_url=service_databases[service], db_pool_max=4, **BROKEN_KAFKA[broken]()
    )
    rt = runtime.Runtime(service, settings, web.Application())
    with pytest.raises(Exception):  # noqa: B017 - which one is aiokafka's or ssl's business
        async with lifespan(rt):
            pytest.fail("the service started without its broker")
    # the pool was opened (its migrations ran) ...
    assert await migrations_of(database, service) > 0
    # ... and its connections are gone; the server notices a closed one within moments
    role = f"tasleem_{service}"
    deadline = time.monotonic() + 5
    while (left := await connections_of(database, role)) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert left == 0, f"{service} left {left} connections open"
