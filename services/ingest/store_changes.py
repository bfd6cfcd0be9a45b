"""Changing the store registry: validated edits, secret rotation, and what may be shown.

Shared by the admin endpoint and `tasleem stores`, so both refuse the same mistakes and both
publish the same `store.config` (never a secret) after a change.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.ingest.platforms import PLATFORMS
from services.ingest.stores import Store
from shared.events import StoreConfig, event_id_for

CHANNELS = ("whatsapp", "sms", "email")


class InvalidChange(ValueError):
    """A store change that would leave the registry wrong (the message names no secret)."""


class StoreChange(BaseModel):
    """The fields to set; on a new store platform, name and secrets are required."""

    model_config = ConfigDict(extra="forbid")

    platform: Literal["standard", "salla", "zid", "shopify", "woocommerce"] | None = None
    name: str | None = Field(None, min_length=1, max_length=200)
    secrets: list[str] | None = Field(None, min_length=1, max_length=2)
    sku_map: dict[str, str] | None = None
    locale: Literal["ar", "en"] | None = None
    channels: list[Literal["whatsapp", "sms", "email"]] | None = Field(None, min_length=1)
    salla_strategy: Literal["signature", "token"] | None = None
    templates: dict[str, str] | None = None


def apply(store_id: str, existing: Store | None, change: StoreChange) -> Store:
    """The store after `change`; InvalidChange when the result would not work."""
    if existing is None:
        if change.platform is None or change.name is None or change.secrets is None:
            raise InvalidChange("a new store needs platform, name and secrets")
        base = Store(store_id, change.platform, change.name, tuple(change.secrets))
    else:
        base = existing
    fields: dict[str, Any] = {
        k: v for k, v in change.model_dump(exclude_none=True).items() if k in _STORE_FIELDS
    }
    for name in ("secrets", "channels"):
        if name in fields:
            fields[name] = tuple(fields[name])
    store = Store(**{**_as_fields(base), **fields})
    check_secrets(store.platform, store.secrets)
    if len(set(store.channels)) != len(store.channels):
        raise InvalidChange("channels must not repeat")
    return store


def rotate(store: Store, new_secret: str) -> Store:
    """The new secret first (it is the one the platform will use), the newest old one kept."""
    secrets = (new_secret, store.secrets[0])
    check_secrets(store.platform, secrets)
    return Store(**{**_as_fields(store), "secrets": secrets})


def check_secrets(platform: str, secrets: tuple[str, ...]) -> None:
    if platform not in PLATFORMS:
        raise InvalidChange(f"platform must be one of {', '.join(PLATFORMS)}")
    if not 1 <= len(secrets) <= 2 or any(not s or len(s) > 512 for s in secrets):
        raise InvalidChange("one or two non-empty secrets are needed")
    if len(set(secrets)) != len(secrets):
        raise InvalidChange("the two secrets must differ")
    for secret in secrets:
        if platform == "standard":
            try:
                key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
            except (binascii.Error, ValueError):
                key = b""
            if not secret.startswith("whsec_") or not key:
                raise InvalidChange("a Standard Webhooks secret is 'whsec_' + base64")
        if platform == "zid" and ":" not in secret:
            raise InvalidChange("a Zid secret is the subscription's 'username:password'")


def fingerprint(secret: str) -> str:
    """What may be shown of a secret: enough to tell two apart, nothing to sign with."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:12]


def shown(store: Store) -> dict[str, Any]:
    """The store as operators see it: secrets replaced by fingerprints."""
    return {**_as_fields(store), "secrets": [fingerprint(s) for s in store.secrets]}


def config_event(store: Store) -> StoreConfig:
    """The store's non-secret settings for `store.config`."""
    return StoreConfig(
        event_id=event_id_for(
            "store.config",
            store.store_id,
            store.name,
            store.channels,
            store.locale,
            sorted(store.templates.items()),
        ),
        store_id=store.store_id,
        platform=store.platform,
        name=store.name,
        locale=store.locale,  # type: ignore[arg-type]
        channels=list(store.channels),
        templates=dict(store.templates),
    )


_STORE_FIELDS = (
    "store_id",
    "platform",
    "name",
    "secrets",
    "sku_map",
    "locale",
    "channels",
    "salla_strategy",
    "templates",
)


def _as_fields(store: Store) -> dict[str, Any]:
    return {name: getattr(store, name) for name in _STORE_FIELDS}
