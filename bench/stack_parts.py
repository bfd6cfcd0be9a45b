"""Real parts for benchmarks: an embedded PostgreSQL and broker in a temporary folder."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from deploy.embedded.broker import EmbeddedBroker, client_settings
from deploy.embedded.postgres import EmbeddedPostgres
from deploy.embedded.processes import free_port
from shared.kafka import ensure_topics, topic_specs


@dataclass
class Parts:
    home: Path
    database: str
    kafka: str
    postgres: EmbeddedPostgres
    broker: EmbeddedBroker


@contextlib.asynccontextmanager
async def embedded(partitions: int = 4) -> AsyncIterator[Parts]:
    with tempfile.TemporaryDirectory(prefix="tasleem-bench-") as tmp:
        home = Path(tmp)
        postgres = EmbeddedPostgres(home / "pg", free_port(), home / "postgres.log")
        broker = EmbeddedBroker(free_port(), home / "broker.log")
        postgres.start()
        broker.start()
        try:
            for _ in range(300):
                try:
                    conn = await asyncpg.connect(postgres.dsn)
                    break
                except (OSError, asyncpg.PostgresError):
                    await asyncio.sleep(0.2)
            else:
                raise RuntimeError("PostgreSQL did not start")
            await conn.execute("CREATE DATABASE bench")
            await conn.close()
            await ensure_topics(client_settings(broker.bootstrap), topic_specs(partitions))
            yield Parts(home, postgres.dsn_for("bench"), broker.bootstrap, postgres, broker)
        finally:
            broker.stop()
            postgres.stop()
