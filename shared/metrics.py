"""The consumer-loop and HTTP metrics every service exports, defined once."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

MESSAGES = Counter(
    "tasleem_messages_total",
    "Messages consumed, by topic and outcome (ok, dead_lettered)",
    ["service", "topic", "outcome"],
)
RETRIES = Counter(
    "tasleem_retries_total", "Batches retried after a retriable error", ["service", "topic"]
)
DEAD_LETTERS = Counter(
    "tasleem_dead_letters_total", "Messages sent to a dead-letter topic", ["service", "topic"]
)
HANDLER_SECONDS = Histogram(
    "tasleem_handler_seconds",
    "Time to handle one consumed batch",
    ["service", "topic"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BATCH_SIZE = Histogram(
    "tasleem_batch_size",
    "Messages per consumed batch",
    ["service", "topic"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
CONSUMER_LAG = Gauge(
    "tasleem_consumer_lag",
    "Messages behind the partition's high watermark, measured inside the consumer",
    ["service", "group", "topic", "partition"],
)
EVENTS_PUBLISHED = Counter(
    "tasleem_events_published_total", "Events acknowledged by the broker", ["service", "topic"]
)


def init_consumer_series(service: str, topics: Iterable[str]) -> None:
    """The series of a consumer's topics at zero from the start (Prometheus' instrumentation
    guide), so `rate()` and `increase()` have a series before the first message or dead
    letter. The lag is left out: a partition's lag is known only once it is assigned."""
    for topic in topics:
        for outcome in ("ok", "dead_lettered"):
            MESSAGES.labels(service, topic, outcome)
        RETRIES.labels(service, topic)
        DEAD_LETTERS.labels(service, topic)
        HANDLER_SECONDS.labels(service, topic)
        BATCH_SIZE.labels(service, topic)


def init_published_series(service: str, topics: Iterable[str]) -> None:
    """`tasleem_events_published_total` at zero for each topic the service publishes to."""
    for topic in topics:
        EVENTS_PUBLISHED.labels(service, topic)
