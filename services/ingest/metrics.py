from prometheus_client import Counter, Gauge, Histogram

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
