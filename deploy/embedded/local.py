"""How a CLI command finds the stack it works on: the environment first, else `tasleem up`'s."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from deploy.embedded.broker import client_settings
from shared.settings import KafkaSettings, VaultKeySettings

DEFAULT_HOME = Path(".tasleem")


class NoStack(RuntimeError):
    """Neither the environment nor a running embedded stack says where things are."""


def stack_info(home: Path = DEFAULT_HOME) -> dict[str, Any]:
    path = home / "stack.json"
    if not path.exists():
        raise NoStack(f"no running stack ({path} is missing): start one with `tasleem up`")
    info: dict[str, Any] = json.loads(path.read_text())
    return info


def database_url(home: Path = DEFAULT_HOME) -> str:
    """TASLEEM_DATABASE_URL, or the embedded stack's database."""
    if url := os.environ.get("TASLEEM_DATABASE_URL"):
        return url
    return str(stack_info(home)["database"])


def database_url_of(service: str, home: Path = DEFAULT_HOME) -> str:
    """TASLEEM_DATABASE_URL, or the embedded stack's DSN for `service`'s own role (it owns the
    service's schema; the superuser DSN is `database_url`)."""
    if url := os.environ.get("TASLEEM_DATABASE_URL"):
        return url
    info = stack_info(home)
    return str(info.get("databases", {}).get(service) or info["database"])


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


def vault_keys(home: Path = DEFAULT_HOME) -> VaultKeySettings:
    """The vault keys from the environment, or else the embedded stack's own."""
    settings = VaultKeySettings()
    if settings.vault_keys.get_secret_value():
        return settings
    path = home / "secrets.json"
    if not path.exists():
        raise NoStack("TASLEEM_VAULT_KEYS is not set and no embedded stack was found")
    stored = json.loads(path.read_text())
    return VaultKeySettings(
        vault_keys=SecretStr(stored["TASLEEM_VAULT_KEYS"]),
        vault_fingerprint_key=SecretStr(stored["TASLEEM_VAULT_FINGERPRINT_KEY"]),
    )
