"""The embedded PostgreSQL asks every login for a scram password, and each service connects as
its own role: not a superuser, owner of its own schema (so its migrations run), and unable to
read another service's."""

from __future__ import annotations

import asyncpg
import pytest

from deploy.embedded.postgres import (
    DATABASE_SERVICES,
    ServiceRole,
    hand_schemas_to_their_roles,
)
from services.allocator.main import SQL as ALLOCATOR_SQL
from services.ingest.main import SQL as INGEST_SQL
from services.notifier.main import SQL as NOTIFIER_SQL
from shared.db import connect_and_migrate, migrate
from tests.conftest import as_role

pytestmark = pytest.mark.integration
SQL = {"ingest": INGEST_SQL, "allocator": ALLOCATOR_SQL, "notifier": NOTIFIER_SQL}


async def test_no_login_without_the_password(pg_server):
    without = as_role(pg_server, "postgres", "").replace("postgres:@", "postgres@")
    with pytest.raises(
        (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)
    ):
        await asyncpg.connect(without, timeout=5)
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(as_role(pg_server, "postgres", "guess"), timeout=5)
    conn = await asyncpg.connect(pg_server)
    try:
        method = await conn.fetchval(
            "SELECT string_agg(DISTINCT auth_method, ',') FROM pg_hba_file_rules"
        )
        assert method == "scram-sha-256"
    finally:
        await conn.close()


async def test_each_service_migrates_its_own_schema_and_reads_no_other(service_databases):
    pools = {}
    try:
        for service in DATABASE_SERVICES:
            pools[service] = await connect_and_migrate(
                service_databases[service], service, SQL[service]
            )
        for service, pool in pools.items():
            assert (
                await pool.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
                is False
            )
            assert await pool.fetchval("SELECT current_user") == f"tasleem_{service}"
            assert (
                await pool.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = $1", service)
                > 1
            )
        notifier, allocator = pools["notifier"], pools["allocator"]
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await notifier.fetch("SELECT * FROM allocator.codes")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await allocator.fetch("SELECT * FROM ingest.stores")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await notifier.execute("CREATE ROLE intruder SUPERUSER")
    finally:
        for pool in pools.values():
            await pool.close()


async def test_what_tasleem_up_prepares_as_superuser_is_handed_to_each_service(
    database, service_databases
):
    admin = await asyncpg.connect(database)
    try:
        for service in DATABASE_SERVICES:
            await migrate(admin, service, SQL[service])  # as `tasleem up` does, as superuser
    finally:
        await admin.close()
    roles = [ServiceRole(s, "") for s in DATABASE_SERVICES]
    await hand_schemas_to_their_roles(database, roles)
    for service in DATABASE_SERVICES:
        # the service starts: its migrations (none left) and its writes work as its own role
        pool = await connect_and_migrate(service_databases[service], service, SQL[service])
        try:
            owners = await pool.fetch(
                "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = $1", service
            )
            assert [r["tableowner"] for r in owners] == [f"tasleem_{service}"]
            await pool.execute("INSERT INTO schema_migrations (version, name) VALUES (999, 'x')")
        finally:
            await pool.close()
