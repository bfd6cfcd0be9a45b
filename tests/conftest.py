"""Real parts for the tests: an embedded PostgreSQL (once per session) and a Tansu broker (per
module), or the servers named in TASLEEM_DATABASE_URL / TASLEEM_KAFKA_BOOTSTRAP."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import pytest

from deploy.embedded.broker import EMBEDDED_ENV, EmbeddedBroker
from deploy.embedded.postgres import (
    DATABASE_SERVICES,
    EmbeddedPostgres,
    ServiceRole,
    create_service_roles,
)
from deploy.embedded.processes import free_port
from shared.codecrypt import CodeCipher, generate_key_settings
from shared.settings import VaultKeySettings

# The tests' broker is the embedded one (or a server of the developer's): no idempotent
# producer. Settings built in tests and the services they start inherit this.
os.environ.update(EMBEDDED_ENV)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A PostgreSQL server DSN (to its `postgres` database)."""
    external = os.environ.get("TASLEEM_DATABASE_URL")
    if external:
        yield external
        return
    # Not under pytest's own temporary root: as root, the server runs as an unprivileged user
    # that must traverse to its data, and every pytest session that starts on this machine
    # (a second `make test`, another clone's) closes `/tmp/pytest-of-root` to its owner
    # again, which cut a running server off its own files (PANIC on pg_control).
    home = Path(tempfile.mkdtemp(prefix="tasleem-test-pg-"))
    server = EmbeddedPostgres(home / "data", free_port(), home / "postgres.log")
    server.start()
    try:
        asyncio.run(_wait_for_pg(server.dsn, server))
        yield server.dsn
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


async def _wait_for_pg(dsn: str, server: EmbeddedPostgres) -> None:
    for _ in range(300):
        if not server.process.running():
            raise RuntimeError(f"PostgreSQL exited:\n{server.process.tail()}")
        try:
            conn = await asyncpg.connect(dsn, timeout=2)
            await conn.close()
            return
        except (OSError, asyncpg.PostgresError):
            await asyncio.sleep(0.2)
    raise RuntimeError("PostgreSQL did not start")


@contextlib.asynccontextmanager
async def fresh_database(pg_server: str) -> AsyncIterator[str]:
    """A new, empty database on the server, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_server)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    try:
        yield _with_database(pg_server, name)
    finally:
        admin = await asyncpg.connect(pg_server)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await admin.close()


@pytest.fixture
async def database(pg_server: str) -> AsyncIterator[str]:
    """A fresh database for one test."""
    async with fresh_database(pg_server) as dsn:
        yield dsn


@pytest.fixture(scope="module")
async def module_database(pg_server: str) -> AsyncIterator[str]:
    """A fresh database shared by one module's tests."""
    async with fresh_database(pg_server) as dsn:
        yield dsn


def _with_database(dsn: str, name: str) -> str:
    base, _, _ = dsn.rpartition("/")
    return f"{base}/{name}"


def as_role(dsn: str, role: str, password: str) -> str:
    """`dsn` with another user and password (the embedded server wants a password)."""
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(role, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture
async def service_databases(database: str) -> AsyncIterator[dict[str, str]]:
    """A fresh database set up as `tasleem up` does: each service's DSN logs in (scram) as its
    own non-superuser role, which owns its schema. Keys: ingest, allocator, notifier."""
    name = database.rpartition("/")[2]
    roles = [ServiceRole(s, secrets.token_urlsafe(16)) for s in DATABASE_SERVICES]
    await create_service_roles(database, name, roles)
    yield {r.service: as_role(database, r.name, r.password) for r in roles}


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A broker bootstrap address: a fresh embedded Tansu per test module."""
    external = os.environ.get("TASLEEM_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    broker = EmbeddedBroker(free_port(), tmp_path_factory.mktemp("broker") / "broker.log")
    broker.start()
    try:
        asyncio.run(_wait_for_port(broker.port))
        yield broker.bootstrap
    finally:
        broker.stop()


async def _wait_for_port(port: int) -> None:
    for _ in range(150):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


@pytest.fixture(scope="session")
def vault_env() -> dict[str, str]:
    return generate_key_settings()


@pytest.fixture(scope="session")
def cipher(vault_env: dict[str, str]) -> CodeCipher:
    return CodeCipher.from_settings(
        VaultKeySettings(
            vault_keys=vault_env["TASLEEM_VAULT_KEYS"],
            vault_fingerprint_key=vault_env["TASLEEM_VAULT_FINGERPRINT_KEY"],
        )
    )


REPO = Path(__file__).resolve().parent.parent
