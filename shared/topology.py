"""The system's topology as code: every topic, who writes and reads it, and every HTTP route an
outside party calls.

This is the one declaration the rest is checked against: the embedded stack creates its topics
from it, and `tests/deploy/test_topology.py` holds the Kubernetes manifests to it (each
KafkaTopic, each KafkaUser's ACLs, the Ingress paths and the NetworkPolicies), as well as the
README's topic table, which `python -m shared.topology` prints. A service that starts reading a
topic, or a new public endpoint, is added here first; a missing ACL or route then fails a test.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from shared.events import (
    CodeAllocated,
    CodeRevoked,
    CodesPurchased,
    DeliveryReceipt,
    InventoryLevel,
    MessageFailed,
    MessageSent,
    OrderCancelled,
    OrderPaid,
    StoreConfig,
    dlq_topic,
)

SERVICES = ("ingest", "allocator", "notifier", "restocker")
# Production partitions of the pipeline's topics: sized for the largest replica count of the
# group that reads them (KEDA never scales a group past its partitions); they cannot shrink.
PARTITIONS = 12
# The restocker's faust app id (its consumer group, and the prefix of faust's own topics).
RESTOCKER_APP_ID = "restocker"


@dataclass(frozen=True)
class Topic:
    name: str
    about: str
    key: str  # what the record key is: it decides the partition, so what stays in order
    producers: tuple[str, ...]
    # consumer groups, each named after its service: every record reaches one member
    consumers: tuple[str, ...] = ()
    # services whose every replica reads every partition, without a group
    readers: tuple[str, ...] = ()
    partitions: int = PARTITIONS
    compacted: bool = False
    # the topic's consumers send what they cannot parse or handle to `<name>.dlq`
    dead_letters: bool = False
    internal: bool = False  # a topic faust makes for itself, not an event contract


@dataclass(frozen=True)
class Route:
    """An HTTP path prefix that a party outside the cluster calls."""

    path: str
    service: str
    callers: str


PIPELINE = (
    Topic(
        OrderPaid.topic,
        "a paid order, normalised from any platform",
        "order key",
        producers=("ingest",),
        consumers=("allocator",),
        dead_letters=True,
    ),
    Topic(
        OrderCancelled.topic,
        "a refunded or cancelled order",
        "order key",
        producers=("ingest",),
        consumers=("allocator",),
        dead_letters=True,
    ),
    Topic(
        CodeAllocated.topic,
        "an order's codes (sealed), or the units still on backorder",
        "order key",
        producers=("allocator",),
        consumers=("notifier",),
        dead_letters=True,
    ),
    Topic(
        CodeRevoked.topic,
        "codes withdrawn from a cancelled order",
        "order key",
        producers=("allocator",),
        consumers=("notifier",),
        dead_letters=True,
    ),
    Topic(
        MessageSent.topic,
        "a provider accepted the buyer's message",
        "order key",
        producers=("notifier",),
        consumers=("allocator",),
        dead_letters=True,
    ),
    Topic(
        DeliveryReceipt.topic,
        "a provider's receipt (accepted, delivered, failed), verified by the gateway",
        "order key, else the provider's message id",
        producers=("ingest",),
        consumers=("notifier",),
        dead_letters=True,
    ),
    Topic(
        MessageFailed.topic,
        "every channel failed: an operator must act",
        "order key",
        producers=("notifier",),
    ),
    Topic(
        InventoryLevel.topic,
        "an account's stock of a sku: available, reserved, backordered, sales",
        "account and sku",
        producers=("allocator",),
        consumers=("restocker",),
        dead_letters=True,
    ),
    Topic(
        CodesPurchased.topic,
        "codes bought from a supplier for an account (sealed)",
        "account and sku",
        producers=("restocker",),
        consumers=("allocator",),
        dead_letters=True,
    ),
    Topic(
        StoreConfig.topic,
        "a store's delivery settings; the latest per store wins",
        "store id",
        producers=("ingest",),
        readers=("notifier",),
        compacted=True,
    ),
)

# faust's own topics: the per-sku table's changelog must have its source's partitions
RESTOCKER_INTERNAL = (
    Topic(
        f"{RESTOCKER_APP_ID}-skus-changelog",
        "the restocker's table per account and sku (faust changelog)",
        "account and sku",
        producers=("restocker",),
        readers=("restocker",),
        compacted=True,
        internal=True,
    ),
    Topic(
        f"{RESTOCKER_APP_ID}-__assignor-__leader",
        "faust's leader election",
        "none",
        producers=("restocker",),
        consumers=("restocker",),
        partitions=1,
        internal=True,
    ),
)


def dead_letter_topics() -> tuple[Topic, ...]:
    return tuple(
        Topic(
            dlq_topic(t.name),
            f"what the consumers of {t.name} could not parse or handle, with the reason",
            t.key,
            producers=t.consumers,
            partitions=1,
        )
        for t in PIPELINE
        if t.dead_letters
    )


TOPICS: tuple[Topic, ...] = PIPELINE + dead_letter_topics() + RESTOCKER_INTERNAL
TOPIC_BY_NAME = {t.name: t for t in TOPICS}

# Everything outside the cluster may call, all through the gateway: store webhooks and the
# providers' delivery receipts (/webhooks/whatsapp, /twilio, /unifonic, /ses), which it
# verifies and publishes to `delivery.receipt`. /metrics, /readyz and /admin stay inside.
PUBLIC_ROUTES = (
    Route(
        "/webhooks/",
        "ingest",
        "stores (Salla, Zid, Shopify, WooCommerce, Standard Webhooks); receipts from Meta, "
        "Twilio, Unifonic and SES (through SNS)",
    ),
)


def produces(service: str) -> set[str]:
    return {t.name for t in TOPICS if service in t.producers}


def consumes(service: str) -> set[str]:
    """Topics the service reads in its consumer group."""
    return {t.name for t in TOPICS if service in t.consumers}


def reads(service: str) -> set[str]:
    """Topics the service reads without a group."""
    return {t.name for t in TOPICS if service in t.readers}


def markdown_table() -> str:
    """The README's topic table."""
    rows = [
        "| topic | what | key | partitions (production) | written by | read by |",
        "|---|---|---|---|---|---|",
    ]
    for t in PIPELINE:
        readers = [*t.consumers, *(f"{r} (every replica)" for r in t.readers)]
        partitions = f"{t.partitions}, compacted" if t.compacted else str(t.partitions)
        rows.append(
            f"| `{t.name}` | {t.about} | {t.key} | {partitions} | {', '.join(t.producers)} "
            f"| {', '.join(readers) or 'operators (`tasleem` tools, alerts)'} |"
        )
    dlqs = ", ".join(f"`{t.name}`" for t in dead_letter_topics())
    rows.append(
        f"| {dlqs} | poison and permanently failing messages, with the reason in headers "
        "| as the source | 1 | the source's consumers | operators |"
    )
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown_table())
