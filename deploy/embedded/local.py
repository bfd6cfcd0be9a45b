"""How a CLI command finds the stack it works on: the environment first, else `tasleem up`'s
(`stack.json` for addresses, `admin/<service>-<role>.token` for the local operator's tokens)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from deploy.embedded.broker import client_settings
from shared.settings import KafkaSettings

DEFAULT_HOME = Path(".tasleem")


class NoStack(RuntimeError):
    """Neither the environment nor a running embedded stack says where things are."""


def stack_info(home: Path = DEFAULT_HOME) -> dict[str, Any]:
    path = home / "stack.json"
    if not path.exists():
        raise NoStack(f"no running stack ({path} is missing): start one with `tasleem up`")
    info: dict[str, Any] = json.loads(path.read_text())
    return info


def admin_token_path(home: Path, service: str, role: str) -> Path:
    """Where `tasleem up` keeps the token of the local operator for one service and role."""
    return home / "admin" / f"{service}-{role}.token"


def admin_token(home: Path = DEFAULT_HOME, service: str = "notifier", role: str = "operate") -> str:
    """The local operator's bearer token for `service`'s admin API with `role`
    (README: `.tasleem/admin/<service>-<role>.token`)."""
    path = admin_token_path(home, service, role)
    return path.read_text().strip() if path.exists() else ""


def write_private(path: Path, text: str) -> None:
    """Create `path` readable by its owner only from the first byte: never a moment with the
    umask's permissions (a write followed by a chmod leaves one)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def replace_private(path: Path, text: str) -> None:
    """Replace `path` atomically with a new 0600 file (readers see the old or the new one)."""
    staging = path.with_name(path.name + ".new")
    staging.unlink(missing_ok=True)
    write_private(staging, text)
    os.replace(staging, path)


def kafka_settings(home: Path = DEFAULT_HOME) -> KafkaSettings:
    """The cluster named by TASLEEM_KAFKA_BOOTSTRAP (with its TLS/SASL settings from the
    environment), or else the embedded stack's broker."""
    if os.environ.get("TASLEEM_KAFKA_BOOTSTRAP"):
        return KafkaSettings()
    return client_settings(str(stack_info(home)["kafka"]))
