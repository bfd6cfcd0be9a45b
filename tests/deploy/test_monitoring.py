"""Alerts and the dashboard: valid PromQL, on metrics the services define, checked by promtool,
and the delivery-SLO burn alerts shown to fire (and to stay quiet) with `promtool test rules`.

That each metric is really exported, with the label values the queries select, is checked
against the running stack's scrapes in tests/e2e/test_pipeline.py.
"""

from __future__ import annotations

import importlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import REGISTRY

from tests.deploy.conftest import K8S, named, of_kind
from tests.tooling import require_tool

RULES_FILE = K8S / "base/monitoring/prometheus-rules.yaml"
DASHBOARD_FILE = K8S / "base/monitoring/tasleem-dashboard.json"
SERVICES = ("ingest", "allocator", "notifier", "restocker")
SERVICE_MODULES = (
    "services.ingest.main",
    "services.allocator.main",
    "services.notifier.main",
    "services.restocker.main",
)
REQUIRED_ALERTS = {
    "TasleemConsumerLagGrowing",
    "TasleemDeliverySloFastBurn",
    "TasleemDeliverySloSlowBurn",
    "TasleemStockCoverLow",
    "TasleemProviderCircuitOpen",
    "TasleemDeadLettersGrowing",
    "TasleemPaidOrderDeadLettered",
    "TasleemGateway5xx",
}
# Synthesised by Prometheus itself, not by a service
PROMETHEUS_SERIES = {"up"}


def exported_series() -> set[str]:
    """Series names the services define, including a histogram's _bucket/_count/_sum."""
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


def selectors(expr: str) -> list[promql_parser.VectorSelector]:
    """Every series selector in a PromQL expression (Grafana's variables given a value)."""
    found: list[promql_parser.VectorSelector] = []

    def visit(node: object) -> bool:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            found.append(node)
        return True

    promql_parser.walk(promql_parser.parse(expr.replace("$__rate_interval", "5m")), visit)
    return found


def metric_names(expr: str) -> set[str]:
    return {s.name for s in selectors(expr)}


def rule_list(prometheus_rule: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for group in prometheus_rule["spec"]["groups"] for r in group["rules"]]


def dashboard_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(service, expr) of every panel query: a panel belongs to the row above it."""
    service = ""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            service = panel["title"].split(":")[0].lower()
        for target in panel.get("targets", []):
            yield service, target["expr"]


def repo_rules() -> dict[str, Any]:
    """The PrometheusRule as committed (for tests that run without kubectl)."""
    found: dict[str, Any] = yaml.safe_load(RULES_FILE.read_text())
    return found


def repo_dashboard() -> dict[str, Any]:
    found: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())
    return found


@pytest.fixture(scope="module")
def prometheus_rule(rendered) -> dict[str, Any]:
    (rule,) = of_kind(rendered["production"], "PrometheusRule")
    return rule


@pytest.fixture(scope="module")
def rules(prometheus_rule) -> list[dict]:
    return rule_list(prometheus_rule)


@pytest.fixture(scope="module")
def dashboard(rendered) -> dict:
    config = named(rendered["production"], "ConfigMap", "tasleem-dashboard")
    (text,) = config["data"].values()
    return json.loads(text)


@pytest.fixture(scope="module")
def rules_file(prometheus_rule, tmp_path_factory) -> Path:
    """The PrometheusRule's spec as a plain Prometheus rules file, as the operator loads it."""
    path = tmp_path_factory.mktemp("rules") / "tasleem.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": prometheus_rule["spec"]["groups"]}))
    return path


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_tool("promtool", apt_package="prometheus")


def test_every_rule_and_panel_query_is_valid_promql(rules, dashboard):
    for expr in [r["expr"] for r in rules] + [e for _, e in dashboard_queries(dashboard)]:
        try:
            promql_parser.parse(expr.replace("$__rate_interval", "5m"))
        except ValueError as exc:
            pytest.fail(f"{expr!r}: {exc}")


def test_queries_use_only_metrics_a_service_defines(rules, dashboard):
    exported = exported_series()
    recorded = {r["record"] for r in rules if "record" in r}
    used = set()
    for expr in [r["expr"] for r in rules] + [e for _, e in dashboard_queries(dashboard)]:
        used |= metric_names(expr)
    unknown = used - exported - recorded - PROMETHEUS_SERIES
    assert not unknown, f"no service defines {sorted(unknown)}"


def test_the_alerts_cover_each_failure_the_operators_must_hear_about(rules):
    alerts = {r["alert"]: r for r in rules if "alert" in r}
    assert set(alerts) >= REQUIRED_ALERTS
    for name, alert in alerts.items():
        assert alert["labels"]["severity"] in {"warning", "critical"}, name
        assert alert["annotations"]["summary"], name


def test_the_dashboard_has_a_row_per_stage_with_unique_panel_ids(dashboard):
    rows = [p["title"].split(":")[0] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Ingest", "Allocator", "Notifier", "Restocker"]
    assert {service for service, _ in dashboard_queries(dashboard)} == set(SERVICES)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_the_dashboard_config_map_carries_the_file_in_the_repo(dashboard):
    assert dashboard == repo_dashboard()


def test_the_rendered_rules_are_the_file_in_the_repo(prometheus_rule):
    assert prometheus_rule["spec"] == repo_rules()["spec"]


def test_promtool_accepts_the_rule_groups(promtool, rules_file):
    result = subprocess.run(
        [promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# ---- the alerts fed with series shaped like real traffic (`promtool test rules`) ----------

# What Prometheus adds to a series when it scrapes the notifier
NOTIFIER = {"job": "tasleem-notifier", "instance": "10.0.0.7:8080", "channel": "whatsapp"}


def series(name: str, labels: dict[str, str], samples: list[float]) -> dict[str, str]:
    text = ",".join(f'{key}="{value}"' for key, value in labels.items())
    return {"series": f"{name}{{{text}}}", "values": " ".join(f"{v:g}" for v in samples)}


def deliveries(per_minute: int, stretches: list[tuple[int, int]]) -> list[dict[str, str]]:
    """The notifier's `tasleem_delivery_seconds` histogram, one scrape a minute: `per_minute`
    deliveries a minute, of which `fast` were within the 30 s SLO, for each (minutes, fast)."""
    total, fast = [0.0], [0.0]
    for minutes, fast_per_minute in stretches:
        for _ in range(minutes):
            total.append(total[-1] + per_minute)
            fast.append(fast[-1] + fast_per_minute)
    name = "tasleem_delivery_seconds"
    return [
        series(f"{name}_count", NOTIFIER, total),
        series(f"{name}_bucket", {**NOTIFIER, "le": "30.0"}, fast),
        series(f"{name}_bucket", {**NOTIFIER, "le": "+Inf"}, total),
    ]


def firing(rule: dict[str, Any], **labels: str) -> dict[str, Any]:
    """The alert as `rule` raises it: its labels and its annotations (untemplated here)."""
    return {"exp_labels": {**rule["labels"], **labels}, "exp_annotations": rule["annotations"]}


def promtool_test(
    promtool: str, rules_file: Path, tmp_path: Path, input_series: list, cases: list
) -> None:
    spec = {
        "rule_files": [str(rules_file)],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": input_series, "alert_rule_test": cases}],
    }
    path = tmp_path / "test.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def alerts(rules) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for r in rules if "alert" in r}


def test_an_hour_long_surge_of_slow_deliveries_fires_the_fast_burn_alert_until_it_ends(
    promtool, rules_file, tmp_path, alerts
):
    # Five quiet hours, then for an hour half of all orders take over 30 s from paid to sent
    # (from 300m to 360m), then all is well again.
    traffic = deliveries(100, [(300, 100), (60, 50), (40, 100)])
    fast, slow = alerts["TasleemDeliverySloFastBurn"], alerts["TasleemDeliverySloSlowBurn"]

    def case(rule: dict[str, Any], at: str, fires: bool) -> dict[str, Any]:
        return {"alertname": rule["alert"], "eval_time": at, "exp_alerts": [firing(rule)] * fires}

    promtool_test(
        promtool,
        rules_file,
        tmp_path,
        traffic,
        [
            case(fast, "300m", False),
            case(fast, "310m", False),  # 10 minutes in: 8% of the last hour, under 14.4%
            case(fast, "330m", True),  # 25% of the last hour (the last 6 h: 4.5%)
            case(slow, "330m", False),  # 6 h at 4.5% is not yet burning the budget 6x
            case(slow, "360m", True),
            # 10 minutes after the fix: the last hour is still 41% slow, but the short window
            # is clean, so the page stops; the slow burn's 30-minute window still sees it
            case(fast, "370m", False),
            case(slow, "370m", True),
            case(slow, "400m", False),
        ],
    )


def test_a_steady_trickle_of_slow_deliveries_fires_only_the_slow_burn_alert(
    promtool, rules_file, tmp_path, alerts
):
    traffic = deliveries(100, [(420, 92)])  # 8% slow, for seven hours
    fast, slow = alerts["TasleemDeliverySloFastBurn"], alerts["TasleemDeliverySloSlowBurn"]
    promtool_test(
        promtool,
        rules_file,
        tmp_path,
        traffic,
        [
            {"alertname": slow["alert"], "eval_time": "10m", "exp_alerts": []},  # pending
            {"alertname": slow["alert"], "eval_time": "2h", "exp_alerts": [firing(slow)]},
            {"alertname": slow["alert"], "eval_time": "7h", "exp_alerts": [firing(slow)]},
            {"alertname": fast["alert"], "eval_time": "2h", "exp_alerts": []},
            {"alertname": fast["alert"], "eval_time": "7h", "exp_alerts": []},
        ],
    )


def test_deliveries_within_the_slo_fire_no_burn_alert(promtool, rules_file, tmp_path, alerts):
    traffic = deliveries(200, [(420, 199)])  # 0.5% slow: within the 1% budget
    cases = [
        {"alertname": name, "eval_time": at, "exp_alerts": []}
        for name in ("TasleemDeliverySloFastBurn", "TasleemDeliverySloSlowBurn")
        for at in ("30m", "3h", "7h")
    ]
    promtool_test(promtool, rules_file, tmp_path, traffic, cases)


def test_stock_cover_low_fires_for_a_short_cover_not_for_a_sku_that_does_not_sell(
    promtool, rules_file, tmp_path, alerts
):
    rule = alerts["TasleemStockCoverLow"]
    restocker = {"job": "tasleem-restocker", "instance": "10.0.0.9:8080"}
    name = "tasleem_restocker_stock_cover_seconds"
    short = series(name, {**restocker, "sku": "SHORT"}, [600.0] * 31)
    unsold = series(name, {**restocker, "sku": "UNSOLD"}, [float("inf")] * 31)  # no sales
    annotations = {
        key: text.replace("{{ $labels.sku }}", "SHORT").replace(
            "{{ $value | humanizeDuration }}", "10m 0s"
        )
        for key, text in rule["annotations"].items()
    }
    promtool_test(
        promtool,
        rules_file,
        tmp_path,
        [short, unsold],
        [
            {"alertname": rule["alert"], "eval_time": "5m", "exp_alerts": []},  # pending
            {
                "alertname": rule["alert"],
                "eval_time": "20m",
                "exp_alerts": [
                    {
                        "exp_labels": {**rule["labels"], "sku": "SHORT"},
                        "exp_annotations": annotations,
                    }
                ],
            },
        ],
    )


def test_one_dead_lettered_paid_order_raises_an_incident_and_other_topics_do_not(
    promtool, rules_file, tmp_path, alerts
):
    """One `order.paid` dead-lettered at minute 30 pages at once and stays raised for the hour
    it takes to handle; a dead-lettered `inventory.level` (a stock report, refreshed by the
    next one) is left to the warning."""
    rule = alerts["TasleemPaidOrderDeadLettered"]
    allocator = {"job": "tasleem-allocator", "instance": "10.0.0.8:8080", "service": "allocator"}
    name = "tasleem_dead_letters_total"
    paid = series(name, {**allocator, "topic": "order.paid"}, [0] * 30 + [1] * 120)
    levels = series(name, {**allocator, "topic": "inventory.level"}, [0] * 30 + [5] * 120)
    raised = {
        "exp_labels": {**rule["labels"], "service": "allocator", "topic": "order.paid"},
        "exp_annotations": {
            key: text.replace("{{ $labels.topic }}", "order.paid")
            .replace("{{ $labels.service }}", "allocator")
            .replace("{{ $value }}", "1")
            for key, text in rule["annotations"].items()
        },
    }
    promtool_test(
        promtool,
        rules_file,
        tmp_path,
        [paid, levels],
        [
            {"alertname": rule["alert"], "eval_time": "29m", "exp_alerts": []},
            {"alertname": rule["alert"], "eval_time": "31m", "exp_alerts": [raised]},
            {"alertname": rule["alert"], "eval_time": "80m", "exp_alerts": [raised]},
            {"alertname": rule["alert"], "eval_time": "100m", "exp_alerts": []},
        ],
    )
