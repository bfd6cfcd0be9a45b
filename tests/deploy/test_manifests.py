"""The rendered overlays, validated offline: schemas, configuration, Kafka sizing and access."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from pydantic import SecretStr

from deploy.cli import SERVICES
from services.allocator.settings import AllocatorSettings
from services.ingest.settings import IngestSettings
from services.notifier.settings import NotifierSettings
from services.restocker.settings import RestockerSettings
from shared import events
from shared.events import EVENT_BY_TOPIC, dlq_topic
from shared.settings import ServiceSettings
from tests.deploy.conftest import K8S, Manifest, named, of_kind

KUBERNETES_VERSION = "1.32.0"  # the oldest minor the manifests promise to apply on
SCHEMAS = {p.stem: json.loads(p.read_text()) for p in (K8S / "schemas").glob("*.json")}
VALIDATORS = {name: jsonschema.Draft202012Validator(schema) for name, schema in SCHEMAS.items()}

SETTINGS: dict[str, type[ServiceSettings]] = {
    "ingest": IngestSettings,
    "allocator": AllocatorSettings,
    "notifier": NotifierSettings,
    "restocker": RestockerSettings,
}

# A setting with a default may be left out of the manifests, unless it is here: its default suits
# a laptop (localhost, text logs, an empty key) and would be wrong or dangerous in a cluster.
REQUIRED_IN_PRODUCTION = {
    "kafka_bootstrap": "the default is a broker on localhost",
    "database_url": "the default is a database on localhost",
    "admin_host": "127.0.0.1 is unreachable for probes and Prometheus",
    "admin_port": "must equal the container port the probes and Service use",
    "log_format": "containers log JSON",
    "shutdown_grace_s": "terminationGracePeriodSeconds is sized from it",
    "vault_keys": "no key, no codes",
    "vault_fingerprint_key": "no key, no codes",
    "allocator_admin_token": "no token, no stock imports",
    "whatsapp_token": "no token, no deliveries",
    "whatsapp_phone_number_id": "the sender",
    "supplier_base_url": "the default is the sandbox",
    "supplier_client_id": "no credentials, no purchases",
    "supplier_client_secret": "no credentials, no purchases",
    "supplier_products": "no mapping, no purchases",
    "topic_partitions": "must equal inventory.level's partitions (faust changelogs)",
}
# Inherited from ServiceSettings but not used: the restocker keeps its state in faust tables.
NOT_USED = {"restocker": {"database_url", "db_pool_min", "db_pool_max"}}
# Env vars the manifests may set before a settings class reads them (none at the moment).
PENDING_SETTINGS: set[str] = set()


def deployments(manifests: list[Manifest]) -> dict[str, Manifest]:
    """Deployments by the service their container runs (`tasleem run <service>`)."""
    found = {}
    for deployment in of_kind(manifests, "Deployment"):
        args = container(deployment)["args"]
        assert args[0] == "run" and args[1] in SERVICES, args
        found[args[1]] = deployment
    return found


def container(deployment: Manifest) -> dict[str, Any]:
    (app,) = deployment["spec"]["template"]["spec"]["containers"]
    return app


def environment(manifests: list[Manifest], deployment: Manifest) -> dict[str, dict[str, Any]]:
    """Every env var the container gets: name -> its `value`, `valueFrom` or ConfigMap origin."""
    env: dict[str, dict[str, Any]] = {}
    app = container(deployment)
    for source in app.get("envFrom", []):
        assert set(source) == {"configMapRef"}, "secrets come one by one through secretKeyRef"
        config = named(manifests, "ConfigMap", source["configMapRef"]["name"])
        env.update({k: {"value": v, "configMap": True} for k, v in config["data"].items()})
    env.update({e["name"]: e for e in app.get("env", [])})
    return env


def topic_partitions(manifests: list[Manifest]) -> dict[str, int]:
    return {
        t["spec"].get("topicName", t["metadata"]["name"]): t["spec"]["partitions"]
        for t in of_kind(manifests, "KafkaTopic")
    }


# ---- schemas -----------------------------------------------------------------------------------


def test_every_manifest_is_valid_against_its_schema(overlay):
    for manifest in overlay:
        where = f"{manifest['kind']}/{manifest['metadata']['name']}"
        try:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
            continue
        except kubernetes_validate.SchemaNotFoundError:
            pass
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: {exc}")
        group = manifest["apiVersion"].split("/")[0]
        validator = VALIDATORS.get(f"{manifest['kind'].lower()}.{group}")
        assert validator is not None, f"{where}: no schema in deploy/k8s/schemas for this kind"
        errors = list(validator.iter_errors(manifest))
        assert not errors, f"{where}: " + "; ".join(
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
        )


def test_crd_schemas_are_valid_json_schemas():
    for schema in SCHEMAS.values():
        jsonschema.Draft202012Validator.check_schema(schema)


def test_crd_schemas_reject_a_typo():
    topic = {
        "apiVersion": "kafka.strimzi.io/v1beta2",
        "kind": "KafkaTopic",
        "metadata": {"name": "order.paid"},
        "spec": {"partitions": 12, "replica": 3},
    }
    with pytest.raises(jsonschema.ValidationError, match="replica"):
        jsonschema.validate(topic, SCHEMAS["kafkatopic.kafka.strimzi.io"])


# ---- configuration -----------------------------------------------------------------------------


def test_every_env_var_the_services_read_is_set_and_every_one_set_is_read(overlay):
    for service, deployment in deployments(overlay).items():
        fields = SETTINGS[service].model_fields
        readable = {f"TASLEEM_{name.upper()}" for name in fields}
        env = environment(overlay, deployment)
        unread = set(env) - readable - PENDING_SETTINGS
        assert not unread, f"{service}: no settings class reads {sorted(unread)}"
        needed = {
            f"TASLEEM_{name.upper()}"
            for name, info in fields.items()
            if (info.is_required() or name in REQUIRED_IN_PRODUCTION)
            and name not in NOT_USED.get(service, set())
        }
        assert not needed - set(env), f"{service}: {sorted(needed - set(env))} not set"


def test_secrets_come_only_from_secret_key_refs(overlay):
    for service, deployment in deployments(overlay).items():
        fields = SETTINGS[service].model_fields
        secret = {
            f"TASLEEM_{name.upper()}"
            for name, info in fields.items()
            if info.annotation is SecretStr or name == "database_url"  # the DSN has a password
        } | {"TASLEEM_KAFKA_SASL_PASSWORD"}
        for name, source in environment(overlay, deployment).items():
            if name in secret:
                assert "secretKeyRef" in source.get("valueFrom", {}), f"{service}: {name}"
            else:
                assert "valueFrom" not in source, f"{service}: {name} is not a secret"


def test_the_manifests_values_parse_as_the_services_settings(overlay, monkeypatch):
    for service, deployment in deployments(overlay).items():
        env = environment(overlay, deployment)
        for name in list(env) + [n for n in os.environ if n.startswith("TASLEEM_")]:
            monkeypatch.delenv(name, raising=False)
        for name, source in env.items():
            monkeypatch.setenv(name, str(source.get("value", "from-a-secret")))
        settings = SETTINGS[service]()
        app = container(deployment)
        (port,) = app["ports"]
        assert settings.admin_port == port["containerPort"], service
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            assert app[probe]["httpGet"] == {"path": path, "port": port["name"]}, service
        assert app["startupProbe"]["httpGet"]["port"] == port["name"]
        pod = deployment["spec"]["template"]["spec"]
        pre_stop = int(app["lifecycle"]["preStop"]["exec"]["command"][1])
        # the pod must outlive preStop plus the service's own drain, or SIGKILL cuts the drain
        assert pod["terminationGracePeriodSeconds"] > pre_stop + settings.shutdown_grace_s


def test_every_deployment_has_a_disruption_budget_and_is_locked_down(overlay):
    budgets = {
        b["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        for b in of_kind(overlay, "PodDisruptionBudget")
    }
    for service, deployment in deployments(overlay).items():
        assert deployment["metadata"]["name"] in budgets, service
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        hardened = container(deployment)["securityContext"]
        assert hardened["readOnlyRootFilesystem"] is True
        assert hardened["allowPrivilegeEscalation"] is False
        assert hardened["capabilities"]["drop"] == ["ALL"]


def test_every_service_runs_and_only_the_cli_s_services_do(overlay):
    assert set(deployments(overlay)) == set(SERVICES)


# ---- Kafka: topics, scaling, access ------------------------------------------------------------


def test_every_topic_the_system_uses_is_declared(overlay):
    restocker = named(overlay, "ConfigMap", "tasleem-restocker")["data"]["TASLEEM_APP_ID"]
    expected = set(EVENT_BY_TOPIC) | {dlq_topic(t) for t in EVENT_BY_TOPIC}
    expected |= {f"{restocker}-skus-changelog", f"{restocker}-__assignor-__leader"}
    assert set(topic_partitions(overlay)) == expected


def test_faust_changelog_partitions_match_the_restocker_source(overlay):
    partitions = topic_partitions(overlay)
    config = named(overlay, "ConfigMap", "tasleem-restocker")["data"]
    source = partitions[events.InventoryLevel.topic]
    assert int(config["TASLEEM_TOPIC_PARTITIONS"]) == source
    assert partitions[f"{config['TASLEEM_APP_ID']}-skus-changelog"] == source


def test_scaled_objects_scale_each_consumer_group_within_its_partitions(overlay):
    partitions = topic_partitions(overlay)
    services = deployments(overlay)
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in of_kind(overlay, "ScaledObject")}
    for service in ("allocator", "notifier", "restocker"):
        deployment = services[service]
        scaler = scaled[deployment["metadata"]["name"]]["spec"]
        env = environment(overlay, deployment)
        group = (env.get("TASLEEM_CONSUMER_GROUP") or env["TASLEEM_APP_ID"])["value"]
        (trigger,) = scaler["triggers"]
        assert trigger["type"] == "kafka"
        assert trigger["metadata"]["consumerGroup"] == group
        # past the partition count a new consumer gets nothing but still costs a rebalance
        assert scaler["maxReplicaCount"] <= partitions[trigger["metadata"]["topic"]], service
        assert (
            scaler["minReplicaCount"] <= deployment["spec"]["replicas"] <= scaler["maxReplicaCount"]
        )
        behaviour = scaler["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert behaviour["scaleDown"]["stabilizationWindowSeconds"] >= 300, service


def test_production_topics_survive_one_broker_down(rendered):
    manifests = rendered["production"]
    (kafka,) = of_kind(manifests, "Kafka")
    assert kafka["spec"]["kafka"]["config"]["min.insync.replicas"] == 2
    (pool,) = of_kind(manifests, "KafkaNodePool")
    assert pool["spec"]["replicas"] >= 3
    for topic in of_kind(manifests, "KafkaTopic"):
        assert topic["spec"]["replicas"] == 3, topic["metadata"]["name"]
        assert topic["spec"]["config"]["min.insync.replicas"] == 2, topic["metadata"]["name"]


def consumed_topics(service: str) -> set[str]:
    """The topics a ConsumerLoop service handles: the keys of `handlers={X.topic: ...}`."""
    tree = ast.parse((Path("services") / service / "main.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "handlers":
            assert isinstance(node.value, ast.Dict)
            return {
                getattr(events, key.value.id).topic
                for key in node.value.keys
                if isinstance(key, ast.Attribute) and isinstance(key.value, ast.Name)
            }
    raise AssertionError(f"no handlers= in services/{service}/main.py")


# What each service may touch, from ARCHITECTURE.md's topic table: producers and consumers.
# A ConsumerLoop service also writes the dead-letter twin of every topic it reads.
DESIGN = {
    "ingest": ({"order.paid", "order.cancelled", "store.config"}, set()),
    "allocator": (
        {"code.allocated", "code.revoked", "inventory.level"},
        {"order.paid", "order.cancelled", "codes.purchased", "message.sent"},
    ),
    "notifier": (
        {"message.sent", "message.failed"},
        {"code.allocated", "code.revoked", "store.config"},
    ),
    "restocker": ({"codes.purchased"}, {"inventory.level"}),
}


def acls(user: Manifest) -> dict[tuple[str, str, str], set[str]]:
    return {
        (
            a["resource"]["type"],
            a["resource"]["name"],
            a["resource"].get("patternType", "literal"),
        ): set(a["operations"])
        for a in user["spec"]["authorization"]["acls"]
    }


@pytest.mark.parametrize("service", sorted(DESIGN))
def test_each_kafka_user_may_do_what_its_service_does_and_nothing_more(rendered, service):
    manifests = rendered["production"]
    user = acls(named(manifests, "KafkaUser", f"tasleem-{service}"))
    writes, reads = DESIGN[service]
    if service in ("allocator", "notifier"):
        assert consumed_topics(service) <= reads, (
            "a new handler needs its Read ACL and DESIGN entry"
        )
        writes = writes | {dlq_topic(t) for t in reads}
    topics = set(topic_partitions(manifests))
    granted_reads, granted_writes = set(), set()
    for (kind, name, pattern), operations in user.items():
        assert "All" not in operations and name != "*", (kind, name)
        if kind == "topic" and pattern == "literal":
            assert name in topics, f"ACL for an undeclared topic {name}"
            if "Read" in operations:
                granted_reads.add(name)
            if "Write" in operations:
                granted_writes.add(name)
        elif kind == "topic":  # faust's own topics: only the restocker's prefix
            assert (service, name) == ("restocker", "restocker-"), (kind, name)
        else:
            assert (kind, name, operations) == ("group", service, {"Read"}), (kind, name)
    assert granted_reads == reads
    assert granted_writes == writes


# ---- network and database ----------------------------------------------------------------------


def test_only_the_gateway_is_reachable_from_outside(overlay):
    for service in of_kind(overlay, "Service"):
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", service["metadata"]["name"]
    for ingress in of_kind(overlay, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"]["name"] == "tasleem-ingest"
                assert path["path"].startswith("/webhooks/")  # never /metrics or /admin
    policies = of_kind(overlay, "NetworkPolicy")
    open_to_all = [
        p["spec"]["podSelector"]["matchLabels"]
        for p in policies
        for rule in p["spec"].get("ingress", [])
        if "from" not in rule
    ]
    assert open_to_all == [{"app.kubernetes.io/name": "tasleem-ingest"}]
    deny = named(overlay, "NetworkPolicy", "tasleem-services-deny-ingress")["spec"]
    selector = deny["podSelector"]["matchLabels"]
    for deployment in deployments(overlay).values():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), deployment["metadata"]["name"]


def test_database_connections_fit_every_pool_at_full_scale(overlay):
    (cluster,) = of_kind(overlay, "Cluster")
    limit = int(cluster["spec"]["postgresql"]["parameters"]["max_connections"])
    scaled = {
        s["spec"]["scaleTargetRef"]["name"]: s["spec"]["maxReplicaCount"]
        for s in of_kind(overlay, "ScaledObject")
    }
    scaled |= {
        h["spec"]["scaleTargetRef"]["name"]: h["spec"]["maxReplicas"]
        for h in of_kind(overlay, "HorizontalPodAutoscaler")
    }
    total = 0
    for service, deployment in deployments(overlay).items():
        if "database_url" in NOT_USED.get(service, set()):
            continue
        env = environment(overlay, deployment)
        default = SETTINGS[service].model_fields["db_pool_max"].default
        pool = int(env.get("TASLEEM_DB_POOL_MAX", {"value": default})["value"])
        total += pool * scaled[deployment["metadata"]["name"]]
    # superuser_reserved_connections (3) and the operator's own connections need room too
    assert total <= limit - 10, f"{total} pooled connections against max_connections={limit}"
