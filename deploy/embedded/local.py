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


def admin_token(home: Path = DEFAULT_HOME) -> str:
    """The bearer token `tasleem up` gives the local admin APIs (README: `.tasleem/admin_token`)."""
    path = home / "admin_token"
    return path.read_text().strip() if path.exists() else ""


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
