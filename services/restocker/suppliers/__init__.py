"""The wholesale suppliers the restocker buys from, built from settings."""

from __future__ import annotations

from typing import Literal

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from services.restocker.suppliers.bamboo import BambooLike
from services.restocker.suppliers.base import (
    FAIL_OVER_AT_ONCE,
    PENDING,
    Delivery,
    Outcome,
    Pending,
    Reason,
    Supplier,
    SupplierError,
)
from services.restocker.suppliers.like4card import Like4CardLike
from services.restocker.suppliers.reloadly import ReloadlyLike

__all__ = [
    "FAIL_OVER_AT_ONCE",
    "PENDING",
    "BambooLike",
    "Delivery",
    "Like4CardLike",
    "Outcome",
    "Pending",
    "Reason",
    "ReloadlyLike",
    "Supplier",
    "SupplierError",
    "SupplierSettings",
    "build",
]


class SupplierSettings(BaseModel):
    """One supplier account: where it is, how to sign in, and which of our skus it sells."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["reloadly", "bamboo", "like4card"]
    base_url: str
    priority: int = 1  # lower is tried first; the cheaper one first among equals
    lead_time_s: float = Field(default=30.0, gt=0)  # order to codes in the vault, typically
    products: dict[str, str] = {}  # our sku -> the supplier's product id
    # reloadly: client_id, client_secret; bamboo: client_id, client_secret, account_id;
    # like4card: email, password, phone, device_id, security_code, hash_key, secret_key, secret_iv
    credentials: dict[str, SecretStr] = {}


def build(config: SupplierSettings, session: aiohttp.ClientSession) -> Supplier:
    """The adapter for one configured supplier."""
    secrets = {key: value.get_secret_value() for key, value in config.credentials.items()}
    common = (config.name, session, config.base_url, config.products, config.priority)
    if config.kind == "reloadly":
        return ReloadlyLike(
            *common, config.lead_time_s, secrets["client_id"], secrets["client_secret"]
        )
    if config.kind == "bamboo":
        return BambooLike(
            *common,
            config.lead_time_s,
            secrets["client_id"],
            secrets["client_secret"],
            int(secrets["account_id"]),
        )
    return Like4CardLike(*common, config.lead_time_s, secrets)
