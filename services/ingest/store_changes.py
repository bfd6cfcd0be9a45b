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

from services.ingest import fields
from services.ingest.platforms import PLATFORMS
from services.ingest.stores import Store
from shared.events import StoreConfig, event_id_for

CHANNELS = ("whatsapp", "sms", "email")
API_CREDENTIAL_MAX = 8192  # two JWTs
# platforms whose webhooks prove nothing about the order: the gateway asks their API
CONFIRMED_BY_API = ("zid",)


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
    account: str | None = Field(None, pattern=f"^{fields.STORE_ID.pattern}$")
    max_lines: int | None = Field(None, ge=1, le=1000)
    max_units: int | None = Field(None, ge=1, le=100_000)
    platform_store_id: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]{0,64}$")
    # Zid: `<Authorization token>:<X-Manager-Token>`, what its orders API is asked with
    api_credential: str | None = Field(None, min_length=1, max_length=API_CREDENTIAL_MAX)


def check_store_id(store_id: str) -> None:
    if not fields.valid_store_id(store_id):
        raise InvalidChange(f"a store id is {fields.STORE_ID_RULE} characters")


def apply(store_id: str, existing: Store | None, change: StoreChange) -> Store:
    """The store after `change`; InvalidChange when the result would not work."""
    check_store_id(store_id)
    if _holds_nul(change.model_dump()):
        raise InvalidChange("U+0000 is not allowed in any field")  # PostgreSQL refuses it
    if change.name is not None and fields.has_hidden(change.name):
        raise InvalidChange("name: control and bidi characters are not allowed")
    for platform_sku, sku in (change.sku_map or {}).items():
        if not fields.valid_sku(platform_sku) or not fields.valid_sku(sku):
            raise InvalidChange("sku_map: skus are 1-128 letters, digits and ._:/+#@-")
    if existing is None:
        if change.platform is None or change.name is None or change.secrets is None:
            raise InvalidChange("a new store needs platform, name and secrets")
        base = Store(store_id, change.platform, change.name, tuple(change.secrets))
    else:
        base = existing
    changed: dict[str, Any] = {
        k: v for k, v in change.model_dump(exclude_none=True).items() if k in _STORE_FIELDS
    }
    for name in ("secrets", "channels"):
        if name in changed:
            changed[name] = tuple(changed[name])
    store = Store(**{**_as_fields(base), **changed})
    check_secrets(store.platform, store.secrets)
    check_api_credential(store.platform, store.api_credential)
    if len(set(store.channels)) != len(store.channels):
        raise InvalidChange("channels must not repeat")
    return store


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_holds_nul(v) for v in value)
    return False


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
    if any(fields.has_hidden(s) or s != s.strip() for s in secrets):
        raise InvalidChange("a secret holds no control characters or surrounding spaces")
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


def check_api_credential(platform: str, credential: str) -> None:
    if platform not in CONFIRMED_BY_API:
        if credential:
            raise InvalidChange(f"only {', '.join(CONFIRMED_BY_API)} stores take an API credential")
        return
    authorization, _, manager_token = credential.partition(":")
    if not authorization or not manager_token:
        raise InvalidChange(
            "a Zid store needs its orders API credential, '<Authorization token>:<X-Manager-Token>'"
            " (Zid signs nothing, so each order is confirmed through its API)"
        )
    if any(c.isspace() for c in credential) or fields.has_hidden(credential):
        raise InvalidChange("an API credential holds no spaces or control characters")


def fingerprint(secret: str) -> str:
    """What may be shown of a secret: enough to tell two apart, nothing to sign with."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:12]


def shown(store: Store) -> dict[str, Any]:
    """The store as operators see it: secrets and API credential replaced by fingerprints."""
    return {
        **_as_fields(store),
        "secrets": [fingerprint(s) for s in store.secrets],
        "api_credential": fingerprint(store.api_credential) if store.api_credential else None,
    }


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
    "account",
    "max_lines",
    "max_units",
    "platform_store_id",
    "api_credential",
)


def _as_fields(store: Store) -> dict[str, Any]:
    return {name: getattr(store, name) for name in _STORE_FIELDS}
