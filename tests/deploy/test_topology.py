"""The manifests against the topology declared in `shared/topology.py`: topics, ACLs, the
Ingress and the NetworkPolicies. A topic a service starts to use without its ACL, or a public
path without its route, fails here."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from services.allocator import main as allocator
from services.notifier import main as notifier
from shared import topology
from shared.events import InventoryLevel
from tests.deploy.conftest import Manifest, named, of_kind

ROOT = Path(__file__).resolve().parents[2]
# Where the production ingress controller runs: the only namespace that may reach a public route.
INGRESS_NAMESPACE = {"kubernetes.io/metadata.name": "ingress-nginx"}


def kafka_topics(manifests: list[Manifest]) -> dict[str, Manifest]:
    return {
        t["spec"].get("topicName", t["metadata"]["name"]): t
        for t in of_kind(manifests, "KafkaTopic")
    }


def deployment_of(manifests: list[Manifest], service: str) -> Manifest:
    return named(manifests, "Deployment", f"tasleem-{service}")


# ---- topics ------------------------------------------------------------------------------------


def test_the_kafka_topics_are_the_topology_s(overlay):
    declared = kafka_topics(overlay)
    assert set(declared) == set(topology.TOPIC_BY_NAME)
    for name, topic in topology.TOPIC_BY_NAME.items():
        spec = declared[name]["spec"]
        assert spec["partitions"] == topic.partitions, name
        policy = spec["config"]["cleanup.policy"]
        assert (policy == "compact") == topic.compacted, name


def test_the_changelog_has_its_source_s_partitions():
    changelog = topology.TOPIC_BY_NAME[f"{topology.RESTOCKER_APP_ID}-skus-changelog"]
    assert changelog.partitions == topology.TOPIC_BY_NAME[InventoryLevel.topic].partitions


def test_the_embedded_stack_creates_the_topology_s_topics():
    from shared.kafka import topic_specs

    specs = {s.name: s for s in topic_specs(4)}
    expected = {t.name for t in topology.TOPICS if not t.internal}
    assert set(specs) == expected
    assert specs["store.config"].compacted and not specs["order.paid"].compacted


def test_every_consumed_topic_is_produced_and_every_dead_letter_has_a_source():
    for topic in topology.TOPICS:
        assert topic.producers, f"nobody writes {topic.name}"
        assert set(topic.producers) | set(topic.consumers) | set(topic.readers) <= set(
            topology.SERVICES
        ), topic.name
        if topic.name.endswith(".dlq"):
            source = topology.TOPIC_BY_NAME[topic.name.removesuffix(".dlq")]
            assert source.dead_letters and set(topic.producers) == set(source.consumers)


# ---- the code reads what the topology says -----------------------------------------------------


async def test_the_services_subscribe_to_what_the_topology_says_they_consume():
    for service, wiring, settings in (
        ("allocator", allocator.kafka, allocator.AllocatorSettings()),
        ("notifier", notifier.kafka, notifier.NotifierSettings()),
    ):
        clients = wiring(settings)
        try:
            assert clients.consumer.subscription() == topology.consumes(service), service
        finally:
            await clients.close()
    assert topology.reads("notifier") == {"store.config"}


def test_the_restocker_agent_reads_what_the_topology_says():
    source = (ROOT / "services" / "restocker" / "main.py").read_text()
    tree = ast.parse(source)
    topics = {
        ast.unparse(node.args[0])
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "app.topic" and node.args
    }
    consumed = {t for t in topology.consumes("restocker") if not topology.TOPIC_BY_NAME[t].internal}
    assert consumed == {InventoryLevel.topic}
    assert "InventoryLevel.topic" in topics


# ---- access ------------------------------------------------------------------------------------


def acls(user: Manifest) -> list[tuple[str, str, str, set[str]]]:
    return [
        (
            a["resource"]["type"],
            a["resource"]["name"],
            a["resource"].get("patternType", "literal"),
            set(a["operations"]),
        )
        for a in user["spec"]["authorization"]["acls"]
    ]


def allowed(user: Manifest, kind: str, name: str, operation: str) -> bool:
    """Kafka's simple authorizer: a literal or prefixed ACL grants the operation; Read and
    Write imply Describe."""
    for acl_kind, acl_name, pattern, operations in acls(user):
        if acl_kind != kind:
            continue
        matches = name == acl_name if pattern == "literal" else name.startswith(acl_name)
        if matches and (
            operation in operations
            or (operation == "Describe" and operations & {"Read", "Write", "Describe"})
        ):
            return True
    return False


@pytest.mark.parametrize("service", topology.SERVICES)
def test_each_kafka_user_may_do_what_the_topology_says_and_nothing_more(rendered, service):
    user = named(rendered["production"], "KafkaUser", f"tasleem-{service}")
    writes = topology.produces(service)
    reads = topology.consumes(service) | topology.reads(service)
    for topic in writes:
        assert allowed(user, "topic", topic, "Write"), f"{service} may not write {topic}"
    for topic in reads:
        assert allowed(user, "topic", topic, "Read"), f"{service} may not read {topic}"
    if topology.consumes(service):
        assert allowed(user, "group", service, "Read"), f"{service} may not join its group"
    for topic in set(topology.TOPIC_BY_NAME) - writes:
        assert not allowed(user, "topic", topic, "Write"), f"{service} may write {topic}"
    for topic in set(topology.TOPIC_BY_NAME) - reads:
        assert not allowed(user, "topic", topic, "Read"), f"{service} may read {topic}"
    for kind, name, pattern, operations in acls(user):
        assert "All" not in operations and name not in ("*", ""), (service, kind, name)
        if pattern != "literal":  # only faust's own topics, by the app id
            assert (service, kind, name) == ("restocker", "topic", f"{topology.RESTOCKER_APP_ID}-")
        if kind == "group":
            assert name == service and operations == {"Read"}


def test_the_acl_check_catches_a_missing_dead_letter_grant(rendered):
    """The gap the topology closed: the restocker dead-letters to inventory.level.dlq."""
    user = named(rendered["production"], "KafkaUser", "tasleem-restocker")
    assert "inventory.level.dlq" in topology.produces("restocker")
    stripped = {
        **user,
        "spec": {
            "authorization": {
                "acls": [
                    a
                    for a in user["spec"]["authorization"]["acls"]
                    if a["resource"]["name"] != "inventory.level.dlq"
                ]
            }
        },
    }
    assert allowed(user, "topic", "inventory.level.dlq", "Write")
    assert not allowed(stripped, "topic", "inventory.level.dlq", "Write")


def test_keda_may_read_the_lag_of_every_scaled_consumer_group(rendered):
    manifests = rendered["production"]
    keda = named(manifests, "KafkaUser", "tasleem-keda")
    for scaled in of_kind(manifests, "ScaledObject"):
        (trigger,) = scaled["spec"]["triggers"]
        group, topic = trigger["metadata"]["consumerGroup"], trigger["metadata"]["topic"]
        assert group in topology.TOPIC_BY_NAME[topic].consumers, (group, topic)
        assert allowed(keda, "group", group, "Describe"), group
        assert allowed(keda, "topic", topic, "Describe"), topic
    for _, _, _, operations in acls(keda):
        assert operations == {"Describe"}


# ---- public routes -----------------------------------------------------------------------------


def ingress_paths(manifests: list[Manifest]) -> dict[str, dict[str, Any]]:
    return {
        path["path"]: path
        for ingress in of_kind(manifests, "Ingress")
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    }


def container_port(manifests: list[Manifest], service: str, backend: dict[str, Any]) -> int:
    """The container port an Ingress backend (a Service's port by name) ends up on."""
    svc = named(manifests, "Service", backend["service"]["name"])
    (port,) = [p for p in svc["spec"]["ports"] if p["name"] == backend["service"]["port"]["name"]]
    (app,) = deployment_of(manifests, service)["spec"]["template"]["spec"]["containers"]
    (target,) = [p for p in app["ports"] if p["name"] == port["targetPort"]]
    return int(target["containerPort"])


def test_every_public_route_is_routed_to_its_service_and_nothing_else_is(rendered):
    manifests = rendered["production"]
    paths = ingress_paths(manifests)
    assert set(paths) == {r.path for r in topology.PUBLIC_ROUTES}
    for route in topology.PUBLIC_ROUTES:
        path = paths[route.path]
        assert path["pathType"] == "Prefix", route.path
        assert path["backend"]["service"]["name"] == f"tasleem-{route.service}", route.path
        container_port(manifests, route.service, path["backend"])  # resolves to a real port


def test_every_public_route_is_served_by_its_service():
    """The route's path (or its prefix, for the stores' /webhooks/{platform}/{store_id}) is a
    path the service's code registers."""
    for route in topology.PUBLIC_ROUTES:
        registered = set()
        for path in (ROOT / "services" / route.service).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and str(node.value).startswith("/webhooks/"):
                    registered.add(node.value)
        assert any(p == route.path or p.startswith(route.path) for p in registered), route


def test_the_notifier_and_the_gateway_agree_on_the_public_address(rendered):
    """Twilio is told where to call back (the gateway, through the Ingress), and its signature
    covers that URL: the notifier gives it, the gateway verifies against it."""
    manifests = rendered["production"]
    (ingress,) = of_kind(manifests, "Ingress")
    (host,) = ingress["spec"]["tls"][0]["hosts"]
    for service in ("notifier", "ingest"):
        config = named(manifests, "ConfigMap", f"tasleem-{service}")["data"]
        assert config["TASLEEM_GATEWAY_PUBLIC_URL"] == f"https://{host}", service


def test_the_notifier_has_no_public_route():
    """Receipts reach the notifier through Kafka only: its one server is the admin server."""
    assert {r.service for r in topology.PUBLIC_ROUTES} == {"ingest"}
    assert topology.consumes("notifier") >= {"delivery.receipt"}
    assert "delivery.receipt" in topology.produces("ingest")


# ---- network policies --------------------------------------------------------------------------


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not selector:
        return True
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        value = labels.get(expression["key"])
        if expression["operator"] == "In" and value not in expression["values"]:
            return False
        if expression["operator"] == "NotIn" and value in expression["values"]:
            return False
        if expression["operator"] == "Exists" and value is None:
            return False
    return True


def reachable(
    policies: list[Manifest],
    pod: dict[str, str],
    port: int,
    from_namespace: dict[str, str],
    from_pod: dict[str, str] | None = None,
    same_namespace: bool = False,
) -> bool:
    """Whether Kubernetes lets a TCP connection in to a pod labelled `pod` on `port`."""
    selecting = [
        p
        for p in policies
        if "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and _selects(p["spec"]["podSelector"], pod)
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports")
            if ports and not any(p.get("port") == port for p in ports):
                continue
            if "from" not in rule:
                return True
            for peer in rule["from"]:
                namespace_ok = (
                    _selects(peer["namespaceSelector"], from_namespace)
                    if "namespaceSelector" in peer
                    else same_namespace
                )
                pod_ok = _selects(peer.get("podSelector", {}), from_pod or {})
                if namespace_ok and pod_ok:
                    return True
    return False


def test_the_ingress_controller_reaches_every_public_route_and_nothing_else(rendered):
    production = rendered["production"]
    public_ports = {
        (route.service, container_port(production, route.service, path["backend"]))
        for route in topology.PUBLIC_ROUTES
        for path in [ingress_paths(production)[route.path]]
    }
    for name, manifests in rendered.items():
        policies = of_kind(manifests, "NetworkPolicy")
        for service in topology.SERVICES:
            deployment = deployment_of(manifests, service)
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            (app,) = deployment["spec"]["template"]["spec"]["containers"]
            for port in (p["containerPort"] for p in app["ports"]):
                ok = reachable(policies, labels, port, INGRESS_NAMESPACE, {"app": "ingress-nginx"})
                assert ok == ((service, port) in public_ports), (name, service, port, ok)


def test_the_network_check_sees_a_closed_port():
    deny = {"spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}
    assert not reachable([deny], {"a": "b"}, 80, INGRESS_NAMESPACE)
    assert reachable([], {"a": "b"}, 80, INGRESS_NAMESPACE)


# ---- the README's table ------------------------------------------------------------------------


def test_the_readme_topic_table_is_the_topology_s():
    readme = (ROOT / "README.md").read_text()
    begin, end = "<!-- topics: python -m shared.topology -->\n", "<!-- /topics -->"
    assert begin in readme and end in readme, "README.md lost its generated topic table"
    table = readme.split(begin, 1)[1].split(end, 1)[0]
    assert table == topology.markdown_table(), "run `python -m shared.topology` into README.md"
