"""Alerts and the dashboard: valid PromQL, on metrics the services export, for all four stages."""

from __future__ import annotations

import importlib
import json
import re

import promql_parser
import pytest
from prometheus_client import REGISTRY

from tests.deploy.conftest import K8S, named, of_kind

# Metrics the alerts and dashboard rely on that no service exports yet: each names the service
# that is to export it (listed in deploy/k8s/README.md). An entry here must not hide a typo, so
# it is checked to be still missing below; delete it once the metric exists.
ASSUMED_METRICS = {
    "tasleem_delivery_seconds": "notifier: histogram, order paid -> message.sent, seconds",
    "tasleem_provider_circuit_open": "notifier: gauge 1/0 per provider",
    "tasleem_restocker_stock_cover_seconds": "restocker: gauge per sku, stock / sales rate",
}
SERVICE_MODULES = (
    "services.ingest.main",
    "services.allocator.main",
    "services.notifier.main",
    "services.restocker.app",
)
REQUIRED_ALERTS = {
    "TasleemConsumerLagGrowing",
    "TasleemDeliverySloFastBurn",
    "TasleemDeliverySloSlowBurn",
    "TasleemStockCoverLow",
    "TasleemProviderCircuitOpen",
    "TasleemDeadLettersGrowing",
    "TasleemGateway5xx",
}


def exported_series() -> set[str]:
    """Series names the services can expose, including a histogram's _bucket/_count/_sum."""
    for module in SERVICE_MODULES:
        importlib.import_module(module)
    names = set()
    for family in REGISTRY.collect():
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_count", "_sum"),
        }.get(family.type, ("",))
        names |= {family.name + suffix for suffix in suffixes}
    return names


def base_name(series: str) -> str:
    return re.sub(r"_(bucket|count|sum)$", "", series)


def metric_names(expr: str) -> set[str]:
    names: set[str] = set()

    def visit(node: object) -> bool:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


@pytest.fixture(scope="module")
def rules(rendered) -> list[dict]:
    (rule,) = of_kind(rendered["production"], "PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


@pytest.fixture(scope="module")
def dashboard(rendered) -> dict:
    config = named(rendered["production"], "ConfigMap", "tasleem-dashboard")
    (text,) = config["data"].values()
    return json.loads(text)


def dashboard_exprs(dashboard: dict) -> list[str]:
    # Grafana's own variables are not PromQL: give them a value the parser accepts
    return [
        t["expr"].replace("$__rate_interval", "5m")
        for panel in dashboard["panels"]
        for t in panel.get("targets", [])
    ]


def test_every_rule_and_panel_query_is_valid_promql(rules, dashboard):
    for expr in [r["expr"] for r in rules] + dashboard_exprs(dashboard):
        try:
            promql_parser.parse(expr)
        except ValueError as exc:
            pytest.fail(f"{expr!r}: {exc}")


def test_queries_use_only_metrics_that_exist_or_are_named_as_assumed(rules, dashboard):
    exported = exported_series()
    recorded = {r["record"] for r in rules if "record" in r}
    used = set()
    for expr in [r["expr"] for r in rules] + dashboard_exprs(dashboard):
        used |= metric_names(expr)
    unknown = {
        name
        for name in used - exported - recorded - {"up"}
        if base_name(name) not in ASSUMED_METRICS
    }
    assert not unknown, f"no service exports {sorted(unknown)}"
    now_exported = {m for m in ASSUMED_METRICS if {m, m + "_bucket"} & exported}
    assert not now_exported, f"{sorted(now_exported)} exist now: drop them from ASSUMED_METRICS"


def test_the_alerts_cover_each_failure_the_operators_must_hear_about(rules):
    alerts = {r["alert"]: r for r in rules if "alert" in r}
    assert set(alerts) >= REQUIRED_ALERTS
    for name, alert in alerts.items():
        assert alert["labels"]["severity"] in {"warning", "critical"}, name
        assert alert["annotations"]["summary"], name


def test_the_dashboard_has_a_row_per_stage_with_unique_panel_ids(dashboard):
    rows = [p["title"].split(":")[0] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Ingest", "Allocator", "Notifier", "Restocker"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_the_dashboard_config_map_carries_the_file_in_the_repo(dashboard):
    assert dashboard == json.loads((K8S / "base/monitoring/tasleem-dashboard.json").read_text())
