"""The sandbox's configuration: which stores it plays and the credentials each party accepts."""

from __future__ import annotations

import base64
import binascii
from decimal import Decimal
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from deploy.sandbox.faults import FaultUpdate


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a typo in the config file fails at start


class StoreConfig(_Section):
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    platform: Literal["standard", "salla", "zid", "shopify", "woocommerce"] = "standard"
    name: str
    # Standard: `whsec_<base64>`; Salla, Shopify, WooCommerce: the HMAC key (or Salla's token);
    # Zid: `username:password` for basic auth.
    secret: str = Field(min_length=1)
    salla_strategy: Literal["signature", "token"] = "signature"
    # Zid only: what its orders API accepts for this store, `<Authorization>:<X-Manager-Token>`
    # (PLATFORM_APIS.md); none: the API refuses every call for it
    api_credential: str | None = None
    prices: dict[str, Decimal] = {}
    default_price: Decimal = Decimal("50.00")

    @model_validator(mode="after")
    def _secret_fits_platform(self) -> StoreConfig:
        if self.platform == "standard":
            if not self.secret.startswith("whsec_"):
                raise ValueError("a Standard Webhooks secret starts with 'whsec_'")
            try:
                base64.b64decode(self.secret.removeprefix("whsec_"), validate=True)
            except binascii.Error as exc:
                raise ValueError("the secret after 'whsec_' must be base64") from exc
        if self.platform == "zid" and ":" not in self.secret:
            raise ValueError("a Zid secret is 'username:password'")
        if self.api_credential is not None:
            if self.platform != "zid":
                raise ValueError("only a Zid store has an orders API credential")
            if ":" not in self.api_credential:
                raise ValueError("a Zid API credential is '<Authorization>:<X-Manager-Token>'")
        return self


class WhatsAppConfig(_Section):
    token: str = "sandbox-whatsapp-token"
    phone_number_id: str = "1234567890"
    app_secret: str = "sandbox-whatsapp-app-secret"  # signs status webhooks
    # when set, Meta's verification request (hub.challenge) must succeed before any status
    # webhook is sent, as for a real app's callback URL
    verify_token: str | None = None
    not_on_whatsapp: list[str] = ["+966500000000"]
    # where status webhooks (delivered / failed) are POSTed; none: no webhooks
    status_webhook_url: str | None = None
    # messages per second per business number before error 130429; none: no limit
    throughput_per_s: int | None = Field(default=None, gt=0)


class UnifonicConfig(_Section):
    app_sid: str = "sandbox-unifonic-appsid"
    dlr_url: str | None = None  # where delivery receipts are POSTed; none: no receipts


class TwilioConfig(_Section):
    account_sid: str = "AC00000000000000000000000000000000"
    auth_token: str = "sandbox-twilio-auth-token"


class SesConfig(_Section):
    # When set, requests must carry a valid SigV4 signature by this key pair (recomputed from
    # the headers the request says it signed, as AWS does). When unset, unsigned is accepted.
    access_key: str | None = None
    secret_key: str = ""
    region: str = "me-south-1"
    # events (Delivery, Bounce) of sends naming this configuration set go by SNS to
    # `sns_endpoint`, signed, once the subscription is confirmed; none: no events
    configuration_set: str | None = None
    sns_endpoint: str | None = None
    sns_topic_arn: str = "arn:aws:sns:me-south-1:000000000000:tasleem-ses-events"


class ReloadlyConfig(_Section):
    client_id: str = "sandbox-reloadly-client"
    client_secret: str = "sandbox-reloadly-secret"
    products: dict[str, int] = {"SKU-A": 101, "SKU-B": 102}  # our sku -> supplier productId
    unit_price: Decimal = Decimal("9.50")
    balance: Decimal = Decimal("100000.00")
    code_prefix: str = "RLD"
    token_ttl_s: int = Field(default=3600, gt=0)
    charge_timeout_s: float = Field(default=30.0, ge=0)  # the sleep of "charge_then_timeout"


class BambooConfig(_Section):
    client_id: str = "sandbox-bamboo-client"
    client_secret: str = "sandbox-bamboo-secret"
    account_id: int = 4242
    products: dict[str, int] = {"SKU-A": 201, "SKU-B": 202}  # our sku -> supplier ProductId
    unit_price: Decimal = Decimal("9.40")
    balance: Decimal = Decimal("100000.00")
    code_prefix: str = "BMB"
    processing_s: float = Field(default=1.0, ge=0)  # how long an order stays "Processing"
    charge_timeout_s: float = Field(default=30.0, ge=0)


class Like4CardConfig(_Section):
    email: str = "sandbox@like4card.test"
    password: str = "sandbox-like4card-password"
    phone: str = "966500000001"
    device_id: str = "sandbox-device"
    security_code: str = "sandbox-security-code"
    hash_key: str = "sandbox-hash-key"
    # serialCode is AES-256-CBC encrypted with keys derived from these (see like4card.py)
    secret_key: str = "sandbox-secret-key"
    secret_iv: str = "sandbox-secret-iv"
    products: dict[str, int] = {"SKU-A": 301, "SKU-B": 302}  # our sku -> supplier productId
    unit_price: Decimal = Decimal("9.60")
    balance: Decimal = Decimal("100000.00")
    code_prefix: str = "L4C"
    charge_timeout_s: float = Field(default=30.0, ge=0)


class SuppliersConfig(_Section):
    reloadly: ReloadlyConfig = ReloadlyConfig()
    bamboo: BambooConfig = BambooConfig()
    like4card: Like4CardConfig = Like4CardConfig()


class SandboxConfig(_Section):
    gateway: str
    # the sandbox's own address, as its callers reach it (SNS's SigningCertURL, SubscribeURL)
    url: str | None = None
    stores: list[StoreConfig]
    whatsapp: WhatsAppConfig = WhatsAppConfig()
    unifonic: UnifonicConfig = UnifonicConfig()
    twilio: TwilioConfig = TwilioConfig()
    ses: SesConfig = SesConfig()
    suppliers: SuppliersConfig = SuppliersConfig()
    faults: dict[str, FaultUpdate] = {}  # faults switched on from the start, by party
    seed: int | None = None

    @field_validator("gateway")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    def store(self, store_id: str) -> StoreConfig | None:
        return next((store for store in self.stores if store.id == store_id), None)


CONFIG = web.AppKey("config", SandboxConfig)
