"""The rendered overlays, validated offline: schemas, configuration, Kafka sizing and access."""

from __future__ import annotations

import os
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from pydantic import SecretStr

from deploy.cli import SERVICES
from services.allocator import main as allocator
from services.allocator.settings import AllocatorSettings
from services.ingest import main as ingest
from services.ingest.settings import IngestSettings
from services.notifier import main as notifier
from services.notifier.settings import NotifierSettings
from services.restocker.main import create_app
from services.restocker.settings import RestockerSettings
from shared import events
from shared.codecrypt import generate_key_settings
from shared.settings import ServiceSettings
from tests.deploy.conftest import K8S, SCHEMAS, Manifest, named, of_kind, schema_key
from tests.kafka_security import problems, write_test_ca

KUBERNETES_VERSION = "1.32.0"  # the oldest minor the manifests promise to apply on
# The custom resources' schemas by `<group>/<kind>_<version>` (deploy/k8s/schemas/README.md).
VALIDATORS = {key: jsonschema.Draft202012Validator(schema) for key, schema in SCHEMAS.items()}
# Custom resources with no upstream schema in deploy/k8s/schemas, and the test that checks them.
NO_UPSTREAM_SCHEMA = {
    "monitoring.coreos.com/podmonitor_v1": "test_crd_validation.py::test_the_database_pod_monitor",
}

SETTINGS: dict[str, type[ServiceSettings]] = {
    "ingest": IngestSettings,
    "allocator": AllocatorSettings,
    "notifier": NotifierSettings,
    "restocker": RestockerSettings,
}

WIRING = {"ingest": ingest.kafka, "allocator": allocator.kafka, "notifier": notifier.kafka}

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
    "allocator_admin_tokens": "no token, no stock imports",
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
        key = schema_key(manifest)
        if key in NO_UPSTREAM_SCHEMA:
            continue
        validator = VALIDATORS.get(key)
        assert validator is not None, f"{where}: no schema deploy/k8s/schemas/{key}.json"
        errors = list(validator.iter_errors(manifest))
        assert not errors, f"{where}: " + "; ".join(
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
        )


def test_crd_schemas_are_valid_json_schemas_from_a_named_upstream_release():
    provenance = (K8S / "schemas" / "README.md").read_text()
    assert SCHEMAS, "no schemas found in deploy/k8s/schemas/<group>/<kind>_<version>.json"
    for key, schema in SCHEMAS.items():
        # the CRDs' patterns are Go (RE2) regexes, `^(?i)...` among them, which Python's `re`
        # refuses as a format: check the structure, not the patterns' dialect
        jsonschema.Draft202012Validator.check_schema(schema, format_checker=None)
        source = schema["x-source"]
        assert {"repo", "tag", "commit", "path"} <= set(source), key
        row = next((line for line in provenance.splitlines() if f"`{key}.json`" in line), "")
        assert source["tag"] in row and source["commit"] in row, f"{key}: not in the README"


def test_every_crd_schema_is_used_by_a_manifest(rendered):
    used = {schema_key(m) for manifests in rendered.values() for m in manifests}
    assert set(SCHEMAS) <= used, f"unused schemas: {sorted(set(SCHEMAS) - used)}"


def test_crd_schemas_reject_a_typo():
    topic = {
        "apiVersion": "kafka.strimzi.io/v1",
        "kind": "KafkaTopic",
        "metadata": {"name": "order.paid"},
        "spec": {"partitions": 12, "replica": 3},
    }
    with pytest.raises(jsonschema.ValidationError, match="replica"):
        VALIDATORS[schema_key(topic)].validate(topic)


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


def secret_value(name: str) -> str:
    """A stand-in for what a Secret holds: the vault keys must be real keys to build a cipher."""
    return generate_key_settings().get(name, f"test-value-of-{name.lower()}")


async def test_each_production_deployment_s_env_builds_clients_for_the_secured_cluster(
    rendered, tmp_path, monkeypatch
):
    """Settings from exactly the env each Deployment sets (secrets filled with test values),
    then every Kafka client its wiring makes: SASL_SSL as its own KafkaUser, the cluster CA
    from the Secret Strimzi writes, and the idempotent producer."""
    manifests = rendered["production"]
    ca = write_test_ca(tmp_path / "ca.crt")
    for service, deployment in deployments(manifests).items():
        env = environment(manifests, deployment)
        for name in [n for n in os.environ if n.startswith("TASLEEM_")]:
            monkeypatch.delenv(name)
        for name, source in env.items():
            secret = "valueFrom" in source
            monkeypatch.setenv(name, secret_value(name) if secret else str(source["value"]))
        # the CA file is the cluster CA Secret's, mounted where the env says
        cafile = env["TASLEEM_KAFKA_SSL_CAFILE"]["value"]
        pod = deployment["spec"]["template"]["spec"]
        (mount,) = [m for m in container(deployment)["volumeMounts"] if m["name"] == "kafka-ca"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == "kafka-ca"]
        assert volume["secret"]["secretName"] == "tasleem-cluster-ca-cert", service
        assert cafile == f"{mount['mountPath']}/{volume['secret']['items'][0]['path']}", service
        monkeypatch.setenv("TASLEEM_KAFKA_SSL_CAFILE", str(ca))

        settings = SETTINGS[service]()
        user = env["TASLEEM_KAFKA_SASL_USERNAME"]["value"]
        password = secret_value("TASLEEM_KAFKA_SASL_PASSWORD")
        assert user == f"tasleem-{service}"
        assert named(manifests, "KafkaUser", user), service
        assert env["TASLEEM_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == user
        if service == "restocker":
            assert problems(create_app(settings), user, password) == []
            continue
        clients = WIRING[service](settings)
        try:
            for client in clients.clients():
                assert problems(client, user, password) == [], (service, client)
            assert clients.producer._txn_manager is not None, f"{service}: not idempotent"
        finally:
            await clients.close()


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


# ---- network and database ----------------------------------------------------------------------


def test_services_stay_inside_and_every_pod_refuses_what_no_policy_allows(overlay):
    """What may come in (the public routes, the ingress controller) is tested against
    shared/topology.py in test_topology.py; here: no Service is exposed by itself, only the
    gateway is open to the whole cluster, and a default deny covers every service's pods."""
    for service in of_kind(overlay, "Service"):
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", service["metadata"]["name"]
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
