from enum import StrEnum

from prometheus_client import Counter, Gauge, Histogram

from services.ingest.errors import IngestError
from services.ingest.platforms import PLATFORMS
from shared import metrics
from shared.events import StoreConfig

RECEIVED = Counter(
    "tasleem_ingest_webhooks_total",
    "Webhooks received, by platform and outcome (accepted, ignored, rejected)",
    ["platform", "outcome"],
)
REJECTED = Counter(
    "tasleem_ingest_rejected_total", "Webhooks refused, by reason", ["platform", "reason"]
)
PUBLISH_SECONDS = Histogram(
    "tasleem_ingest_publish_seconds",
    "Time from a verified webhook to the broker's acknowledgement",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
IN_FLIGHT = Gauge("tasleem_ingest_in_flight", "Webhook requests being handled")


class Outcome(StrEnum):
    """What became of a webhook or receipt: the `outcome` label, and the answer's `status`."""

    ACCEPTED = "accepted"  # published to its topic
    IGNORED = "ignored"  # verified, but nothing to act on (an unpaid order, a "read" status)
    REJECTED = "rejected"  # refused with an error (the `reason` is on REJECTED)
    PING = "ping"  # a platform's connectivity check


def rejection_reasons() -> list[str]:
    """Every error code the gateway can answer with (each IngestError subclass has one)."""
    found, todo = [IngestError.code], list(IngestError.__subclasses__())
    while todo:
        error = todo.pop()
        found.append(error.code)
        todo.extend(error.__subclasses__())
    return sorted(set(found))


def init_series() -> None:
    """Every platform's outcomes and rejection reasons at zero from the start, so the 5xx
    alert's `rate(...{reason="broker_unavailable"})` has a series before the first 503."""
    for platform in PLATFORMS:
        for outcome in Outcome:
            RECEIVED.labels(platform, outcome)
        for reason in rejection_reasons():
            REJECTED.labels(platform, reason)
    RECEIVED.labels("unknown", Outcome.REJECTED)  # a path naming no platform we serve
    REJECTED.labels("unknown", "unknown_store")
    metrics.init_published_series("ingest", [StoreConfig.topic])
