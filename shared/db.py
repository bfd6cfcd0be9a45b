"""PostgreSQL: the asyncpg pool and numbered SQL migrations, one schema per service."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

log = logging.getLogger(__name__)

# A connection, whether owned or borrowed from a pool.
DbConn: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"

MIGRATION_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


async def _light_reset(conn: asyncpg.Connection) -> None:
    """What a released connection needs here: no open transaction. asyncpg's default reset
    (RESET ALL, UNLISTEN, advisory unlock...) costs a round trip on every release, and no
    service leaves session state behind."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 8) -> asyncpg.Pool:
    """A pool whose connections fail fast when the server is gone, so callers can retry."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        command_timeout=30,
        timeout=10,
        reset=_light_reset,
    )
    assert pool is not None
    return pool


def migration_files(folder: Path) -> list[tuple[int, Path]]:
    """`NNN_name.sql` files in order; anything else in the folder is a mistake worth failing on."""
    found = []
    for path in sorted(folder.glob("*.sql")):
        match = MIGRATION_NAME.match(path.name)
        if not match:
            raise ValueError(f"migration file {path.name} is not named NNN_name.sql")
        found.append((int(match.group(1)), path))
    numbers = [n for n, _ in found]
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"duplicate migration numbers in {folder}")
    return found


async def migrate(conn: asyncpg.Connection, schema: str, folder: Path) -> list[int]:
    """Apply the folder's migrations not yet applied to `schema`; returns the numbers applied.

    An advisory lock makes replicas starting together apply each migration exactly once.
    """
    applied_now = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"migrate:{schema}")
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations ('
            "  version int PRIMARY KEY, name text NOT NULL,"
            "  applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {
            r["version"]
            for r in await conn.fetch(f'SELECT version FROM "{schema}".schema_migrations')
        }
        for number, path in migration_files(folder):
            if number in done:
                continue
            await conn.execute(f'SET LOCAL search_path TO "{schema}"')
            await conn.execute(path.read_text())
            await conn.execute(
                f'INSERT INTO "{schema}".schema_migrations (version, name) VALUES ($1, $2)',
                number,
                path.name,
            )
            applied_now.append(number)
            log.info("applied migration %s to schema %s", path.name, schema)
    return applied_now


async def connect_and_migrate(
    dsn: str, schema: str, folder: Path, *, min_size: int = 1, max_size: int = 8
) -> asyncpg.Pool:
    """The service's pool, with its schema migrated and set as the search path."""
    async with _single(dsn) as conn:
        await migrate(conn, schema, folder)
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        command_timeout=30,
        timeout=10,
        server_settings={"search_path": schema},
        reset=_light_reset,
    )
    assert pool is not None
    return pool


class _single:
    """One connection for the duration of a `with` block."""

    def __init__(self, dsn: str):
        self.dsn = dsn

    async def __aenter__(self) -> asyncpg.Connection:
        self.conn = await asyncpg.connect(self.dsn, timeout=10)
        return self.conn

    async def __aexit__(self, *exc: object) -> None:
        await self.conn.close()


async def ping(pool: asyncpg.Pool) -> bool:
    """Readiness: the database answers a query."""
    return await pool.fetchval("SELECT 1") == 1


# Lost connections, a restarting server, deadlocks and serialization failures: worth a retry.
RETRIABLE_DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    # "cannot switch to state 12; another operation (2) is in progress": asyncpg's protocol
    # state on a connection that broke mid-statement while PostgreSQL restarted. Treated as
    # permanent it had an order.paid batch isolated and, once, a paid order dead-lettered
    # (chaos `postgres`); retried, the next attempt gets a fresh connection.
    asyncpg.exceptions.InternalClientError,
    TimeoutError,
)
