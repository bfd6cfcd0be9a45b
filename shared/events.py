"""The event contracts on Kafka. Each model is parsed once, at the consumer's edge.

Codes travel sealed (`SealedCode.to_text()`), never in plain text.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import ClassVar, Literal, NamedTuple, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.failures import Refused

# Namespace for deterministic event ids: the same fact always gets the same id.
EVENT_NAMESPACE = uuid.UUID("5f0c2a4e-8f55-4a1e-9a52-3c5b3c1e7a10")


def event_id_for(*parts: object) -> str:
    """A stable id for the fact named by `parts`, so a redelivery is recognised downstream.

    The text of `uuid.uuid5(EVENT_NAMESPACE, "|".join(parts))`, computed without building a
    UUID object: it runs once per order in the ingest gateway and in the allocator, where
    uuid5 cost 6.5 µs of the ~15 it takes to serialise an allocation
    (tests/unit/test_events.py holds the two equal)."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + "|".join(map(str, parts)).encode()).digest())
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest[:16].hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_NAMESPACE_BYTES = EVENT_NAMESPACE.bytes


def order_key(platform: str, store_id: str, order_id: str) -> str:
    """`{platform}:{store_id}:{order_id}`, the one key of an order on every topic.

    Neither platform nor store id may hold a `:`, so the first two separators always end them
    and the order id may hold anything: two stores can never build the same key (store `secx`
    once cancelled store `secx:a`'s order `1`). Keys of well-formed stores are unchanged."""
    if not platform or not store_id or ":" in platform or ":" in store_id:
        raise ValueError("platform and store id must be non-empty and hold no ':'")
    return f"{platform}:{store_id}:{order_id}"


def utcnow() -> datetime:
    return datetime.now(UTC)


class UnsupportedVersion(Refused, ValueError):
    """An event of a major version this consumer does not read: refused into the dead-letter
    topic with the reason, never guessed at."""

    code = "unsupported_version"


class Event(BaseModel):
    """Base of every event: versioned and immutable; unknown fields are ignored.

    How events evolve (docs/architecture.md): add optional fields freely — old consumers ignore
    them, new consumers default them — and never change a field's meaning or type in place.
    A change that old consumers cannot read is a new major version: it goes to a new topic, and
    a record of another `schema_version` on this topic is refused at the consumer's edge
    (`from_kafka`) into the dead-letter topic with the reason."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    topic: ClassVar[str]
    SCHEMA_VERSION: ClassVar[int] = 1  # the major version this topic carries

    schema_version: int = 1
    event_id: str

    @classmethod
    def from_kafka(cls, raw: bytes | str) -> Self:
        """Parse a record at the consumer's edge: validated, and of this topic's version."""
        event = cls.model_validate_json(raw)
        if event.schema_version != cls.SCHEMA_VERSION:
            raise UnsupportedVersion(
                f"{cls.__name__} schema_version {event.schema_version}: this consumer reads "
                f"version {cls.SCHEMA_VERSION} (a new major version belongs on a new topic)"
            )
        return event

    def kafka_key(self) -> bytes:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class Customer(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str = ""
    phone: str | None = Field(None, description="E.164, e.g. +9665XXXXXXXX")
    email: str | None = None
    locale: Literal["ar", "en"] = "ar"


class OrderLine(BaseModel):
    model_config = ConfigDict(frozen=True)

    sku: str = Field(min_length=1, max_length=128)
    quantity: int = Field(ge=1, le=100)
    title: str = ""


class OrderEvent(Event):
    """An event about one order, keyed by `{platform}:{store_id}:{order_id}`."""

    order_key: str

    def kafka_key(self) -> bytes:
        return self.order_key.encode()


class OrderPaid(OrderEvent):
    topic: ClassVar[str] = "order.paid"

    platform: str
    store_id: str
    store_name: str = ""
    order_id: str
    lines: list[OrderLine] = Field(min_length=1)
    customer: Customer
    paid_at: datetime
    received_at: datetime
    currency: str = "SAR"
    total: str | None = None
    # the merchant account whose stock serves the order; "" means the store id
    account: str = ""

    @property
    def stock_account(self) -> str:
        """The account whose codes this order may take (and no other)."""
        return self.account or self.store_id


class OrderCancelled(OrderEvent):
    topic: ClassVar[str] = "order.cancelled"

    platform: str
    store_id: str
    order_id: str
    reason: str = ""
    cancelled_at: datetime
    account: str = ""  # "" means the store id

    @property
    def stock_account(self) -> str:
        return self.account or self.store_id


class AllocatedCode(BaseModel):
    model_config = ConfigDict(frozen=True)

    code_id: int
    sku: str
    sealed: str  # SealedCode.to_text(), bound to the sku
    expires_at: datetime | None = None


class BackorderedUnits(BaseModel):
    model_config = ConfigDict(frozen=True)

    sku: str
    quantity: int


class CodeAllocated(OrderEvent):
    """The codes for an order, or for the part of it that was in stock (part 1, 2, …)."""

    topic: ClassVar[str] = "code.allocated"

    part: int
    store_id: str
    store_name: str = ""
    order_id: str
    customer: Customer
    codes: list[AllocatedCode]
    lines: list[OrderLine]
    backordered: list[BackorderedUnits] = []
    paid_at: datetime
    allocated_at: datetime


class CodeRevoked(OrderEvent):
    topic: ClassVar[str] = "code.revoked"

    code_ids: list[int]
    parts: list[int] = []  # the code.allocated parts these codes travelled in
    reason: str


class MessageSent(OrderEvent):
    topic: ClassVar[str] = "message.sent"

    part: int
    allocation_event_id: str
    channel: str
    provider: str
    provider_message_id: str
    to: str
    attempts: int
    code_count: int
    paid_at: datetime
    accepted_at: datetime
    paid_to_accepted_ms: float


class MessageFailed(OrderEvent):
    topic: ClassVar[str] = "message.failed"

    part: int
    allocation_event_id: str
    reasons: list[str]
    failed_at: datetime


class Stock(NamedTuple):
    """One merchant account's sku: the unit of stock, levels, rules and purchases. Codes of
    one account's sku never serve another account's orders."""

    account: str
    sku: str

    def key(self) -> bytes:
        """The Kafka key (`inventory.level`, `codes.purchased`) and the restocker's table key:
        a JSON pair, so no account or sku text can make two stocks collide."""
        return json.dumps(list(self), ensure_ascii=False, separators=(",", ":")).encode()

    @classmethod
    def from_key(cls, key: bytes) -> Stock:
        """The stock a key names; ValueError for anything but a pair of strings."""
        pair = json.loads(key)
        if not (
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
        ):
            raise ValueError("a stock key is a JSON pair of strings")
        return cls(pair[0], pair[1])

    def __str__(self) -> str:
        return f"{self.account}/{self.sku}"


class InventoryLevel(Event):
    """An account's sku stock after a batch of allocations or an import, coalesced per batch."""

    topic: ClassVar[str] = "inventory.level"

    account: str = ""  # the merchant account that owns this stock
    sku: str
    available: int
    backordered: int
    sold_since_last: int = 0
    # every code ever stored for the sku: lets the restocker see its purchase has landed
    received_total: int = 0
    at: datetime

    def kafka_key(self) -> bytes:
        return Stock(self.account, self.sku).key()


class CodesPurchased(Event):
    topic: ClassVar[str] = "codes.purchased"

    account: str = ""  # whose vault the codes go to
    sku: str
    supplier: str
    reference: str  # the client reference sent to the supplier
    codes: list[str]  # SealedCode.to_text(), each bound to the sku
    unit_cost: str | None = None
    expires_at: datetime | None = None
    purchased_at: datetime

    def kafka_key(self) -> bytes:
        return Stock(self.account, self.sku).key()


class StoreConfig(Event):
    topic: ClassVar[str] = "store.config"

    store_id: str
    platform: str
    name: str
    locale: Literal["ar", "en"] = "ar"
    channels: list[str] = ["whatsapp", "sms", "email"]
    templates: dict[str, str] = {}  # message templates by name; never secrets
    # which providers serve a channel, in order of preference, e.g. {"sms": ["twilio"]}
    providers: dict[str, list[str]] = {}
    instructions: dict[str, str] = {}  # how to redeem a code, by locale

    def kafka_key(self) -> bytes:
        return self.store_id.encode()


class ReceiptStatus(StrEnum):
    """A provider's word on a message it accepted: it holds it, the buyer has it, or it failed
    after all. The values are the wire form, on the topic and in the notifier's tables."""

    ACCEPTED = "accepted"
    DELIVERED = "delivered"
    FAILED = "failed"


class DeliveryReceipt(Event):
    """A provider's word on a message it accepted, verified by the gateway: it holds it
    (`accepted`: WhatsApp's "sent", SES's "Send"), the buyer has it, or it failed after all."""

    topic: ClassVar[str] = "delivery.receipt"

    provider: Literal["whatsapp", "unifonic", "twilio", "email"]
    provider_message_id: str = Field(min_length=1, max_length=256)
    status: ReceiptStatus
    error: str = Field(default="", max_length=300)
    # our attempt key and order key, where the provider echoes them back (attempt_reference)
    attempt_key: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")
    order_key: str | None = Field(default=None, max_length=400)
    received_at: datetime

    def kafka_key(self) -> bytes:
        """The order key when the provider echoed it: the partition of the part's own
        `code.allocated`, so the notifier that owns the part reads its receipts; else the
        provider's message id (Unifonic's DLRs carry none of ours)."""
        return (self.order_key or f"{self.provider}:{self.provider_message_id}").encode()


def attempt_reference(attempt_key: str, order_key: str) -> str:
    """What travels with a send for the provider to echo: our attempt key, then the order key."""
    return f"{attempt_key}.{order_key}"


def reference_token(reference: str) -> str:
    """The reference in base64url, for where few characters are allowed or URLs get requoted
    (an SES tag value, Twilio's callback URL)."""
    return base64.urlsafe_b64encode(reference.encode()).decode().rstrip("=")


def reference_from_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (ValueError, UnicodeDecodeError):  # binascii.Error is a ValueError
        return ""


def parse_attempt_reference(reference: str) -> tuple[str | None, str | None]:
    """(attempt key, order key) from an echoed reference; (None, None) when it is not ours."""
    key, _, order = reference.partition(".")
    if len(key) != 32 or any(c not in "0123456789abcdef" for c in key):
        return None, None
    return key, (order or None) if len(order) <= 400 else None


ALL_EVENTS: tuple[type[Event], ...] = (
    OrderPaid,
    OrderCancelled,
    CodeAllocated,
    CodeRevoked,
    MessageSent,
    MessageFailed,
    InventoryLevel,
    CodesPurchased,
    StoreConfig,
    DeliveryReceipt,
)
EVENT_BY_TOPIC: dict[str, type[Event]] = {e.topic: e for e in ALL_EVENTS}


def validation_summary(exc: ValidationError) -> str:
    """A validation error in a line, naming fields but never echoing their values (they may
    be personal data or codes)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
        for err in exc.errors()[:5]
    )


def dlq_topic(topic: str) -> str:
    return f"{topic}.dlq"
