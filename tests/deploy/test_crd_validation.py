"""The custom resources against the operators' own rules, and the renderer under them.

jsonschema (test_manifests.py) checks the shape; the CRDs' CEL rules (`x-kubernetes-validations`)
are what the API server evaluates on top, so they are evaluated here with cel-python, each rule
against the value at its node. Also pinned here: real kustomize's semantics where the retired
home-made renderer differed, the operator API versions, and the database's PodMonitor.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import lark
import pytest
from celpy import celtypes
from celpy.evaluation import CELEvalError, base_functions

from tests.deploy import conftest
from tests.deploy.conftest import SCHEMAS, Manifest, kustomize, named, of_kind, schema_key

# ---- a small CEL walker ------------------------------------------------------------------------

CEL = celpy.Environment()
# What cel-python evaluates: its standard functions and the CEL macros. The Kubernetes CEL
# libraries (lists, regex, quantity, url, ip/cidr, format, string extensions) are not in it.
CEL_FUNCTIONS = {name for name in base_functions if name.isidentifier()} | {
    "has",
    "all",
    "exists",
    "exists_one",
    "map",
    "filter",
}
# Upstream rules cel-python cannot evaluate: rule -> why. Each one is left unchecked, visibly;
# test_every_upstream_cel_rule_is_evaluated_or_listed fails when a new one is not listed here.
UNSUPPORTED_RULES: dict[str, str] = {}


def is_transition_rule(rule: str) -> bool:
    """A rule comparing with the stored object (`oldSelf`): it has no meaning offline."""
    return re.search(r"\boldSelf\b", rule) is not None


@functools.cache
def compiled(rule: str) -> celpy.Runner:
    return CEL.program(CEL.compile(rule))


def functions_called(rule: str) -> set[str]:
    """The names of the functions and methods a rule calls (`size`, `matches`, `isSorted` ...)."""
    tree = CEL.compile(rule)
    names = set()
    for node in tree.iter_subtrees():
        if node.data in ("ident_arg", "dot_ident_arg", "member_dot_arg"):
            (token,) = [c for c in node.children if isinstance(c, lark.Token)]
            names.add(str(token))
    return names


def rules_in(schema: Any) -> Iterator[dict[str, Any]]:
    """Every CEL rule anywhere in a schema, wherever it sits."""
    if isinstance(schema, dict):
        yield from schema.get("x-kubernetes-validations", [])
        for value in schema.values():
            yield from rules_in(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from rules_in(item)


def rule_nodes(schema: dict[str, Any], value: Any, path: str = "$") -> Iterator[tuple[str, Any]]:
    """(JSON path, schema node) for every node that holds rules, walked along `value`: a rule binds
    `self` to the value at its node, and is not evaluated where the manifest has no value. The
    schema's defaults are filled in first, as the API server does before it evaluates."""
    if "x-kubernetes-validations" in schema:
        yield path, schema
    properties = schema.get("properties", {})
    if isinstance(value, dict):
        for name, sub in properties.items():
            if name in value:
                yield from rule_nodes(sub, value[name], f"{path}.{name}")
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name, item in value.items():
                if name not in properties:
                    yield from rule_nodes(extra, item, f"{path}.{name}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from rule_nodes(schema["items"], item, f"{path}[{index}]")


def defaulted(schema: dict[str, Any], value: Any) -> Any:
    """`value` with the schema's `default`s filled in where it has no field, all the way down."""
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        filled = {k: copy.deepcopy(s["default"]) for k, s in properties.items() if "default" in s}
        filled.update(value)
        return {k: defaulted(properties.get(k, {}), v) for k, v in filled.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [defaulted(schema["items"], item) for item in value]
    return value


def value_at(document: Any, path: str) -> Any:
    for key, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path):
        document = document[key] if key else document[int(index)]
    return document


def cel_violations(manifest: Manifest) -> list[str]:
    """Each CEL rule of the manifest's CRD that does not hold: `path: message (rule)`."""
    schema = SCHEMAS[schema_key(manifest)]
    document = defaulted(schema, manifest)
    found = []
    for path, node in rule_nodes(schema, document):
        for rule in node["x-kubernetes-validations"]:
            text = rule["rule"]
            if is_transition_rule(text) or text in UNSUPPORTED_RULES:
                continue
            result: object
            try:
                result = compiled(text).evaluate(
                    {"self": celpy.json_to_cel(value_at(document, path))}
                )
            except CELEvalError as exc:  # the API server rejects a rule that errors, too
                result = exc
            if not (isinstance(result, celtypes.BoolType) and result):
                why = (
                    f"error {result.args[0]}" if isinstance(result, CELEvalError) else repr(result)
                )
                found.append(f"{path}: {rule.get('message', text)} ({text}: {why})")
    return found


def custom_resources(manifests: list[Manifest]) -> list[Manifest]:
    return [m for m in manifests if schema_key(m) in SCHEMAS]


def test_every_custom_resource_holds_to_its_crd_cel_rules(overlay):
    checked = 0
    for manifest in custom_resources(overlay):
        where = f"{manifest['kind']}/{manifest['metadata']['name']}"
        assert not cel_violations(manifest), f"{where}: {cel_violations(manifest)}"
        checked += sum(1 for _ in rule_nodes(SCHEMAS[schema_key(manifest)], manifest))
    # the ScaledObjects' replica bounds and the Cluster's image rule, at least, were evaluated
    assert checked >= 4


def test_every_upstream_cel_rule_is_evaluated_or_listed():
    rules = [r["rule"] for schema in SCHEMAS.values() for r in rules_in(schema)]
    assert rules, "no CEL rules found: the schemas lost their x-kubernetes-validations"
    unsupported = {
        rule
        for rule in rules
        if not is_transition_rule(rule) and functions_called(rule) - CEL_FUNCTIONS
    }
    assert unsupported == set(UNSUPPORTED_RULES), (
        "rules using a function cel-python lacks must be listed in UNSUPPORTED_RULES: "
        f"{sorted(unsupported - set(UNSUPPORTED_RULES))}"
    )


def test_the_walker_reaches_every_rule_a_schema_holds():
    """A rule under a keyword the walker does not descend (allOf, oneOf ...) would go unchecked."""

    def reachable(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
        yield from schema.get("x-kubernetes-validations", [])
        for sub in schema.get("properties", {}).values():
            yield from reachable(sub)
        for keyword in ("items", "additionalProperties"):
            if isinstance(schema.get(keyword), dict):
                yield from reachable(schema[keyword])

    for key, schema in SCHEMAS.items():
        assert len(list(reachable(schema))) == len(list(rules_in(schema))), key


def test_functions_cel_python_lacks_are_detected():
    assert functions_called("self.items.isSorted() && size(self.items) > 0") == {"isSorted", "size"}
    assert functions_called("self.items.isSorted()") - CEL_FUNCTIONS == {"isSorted"}
    assert is_transition_rule("self == oldSelf") and not is_transition_rule("self.oldSelfie")


# Manifests that each break one real upstream CEL rule while keeping the structural schema happy.
BROKEN = {
    "CloudNativePG: imageName and imageCatalogRef together": (
        "Cluster",
        lambda spec: spec.update(
            imageCatalogRef={
                "apiGroup": "postgresql.cnpg.io",
                "kind": "ImageCatalog",
                "name": "postgresql",
                "major": 17,
            }
        ),
        "$.spec: imageName and imageCatalogRef are mutually exclusive",
    ),
    "Strimzi: rack awareness by topology label without a key": (
        "Kafka",
        lambda spec: spec["kafka"]["rack"].update(topologyKey=""),
        "$.spec.kafka.rack: topologyKey property is required",
    ),
    "Strimzi: certificate validity on a SCRAM user": (
        "KafkaUser",
        lambda spec: spec["authentication"].update(validityDays=30),
        "$.spec.authentication: 'validityDays' and 'renewalDays' can be configured only with",
    ),
    "KEDA: more minimum than maximum replicas": (
        "ScaledObject",
        lambda spec: spec.update(minReplicaCount=spec["maxReplicaCount"] + 1),
        "$.spec: minReplicaCount must be less than or equal to maxReplicaCount",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_manifest_breaking_an_upstream_cel_rule_fails(rendered, case):
    kind, breaking, expected = BROKEN[case]
    manifest = copy.deepcopy(of_kind(rendered["production"], kind)[0])
    assert not cel_violations(manifest)
    breaking(manifest["spec"])
    jsonschema.Draft202012Validator(SCHEMAS[schema_key(manifest)]).validate(manifest)
    (violation,) = cel_violations(manifest)
    assert violation.startswith(expected), violation


def test_a_rule_that_errors_on_a_missing_field_is_a_violation(rendered):
    kafka = copy.deepcopy(named(rendered["production"], "Kafka", "tasleem"))
    kafka["spec"]["kafka"]["rack"] = {"type": "environment-variable"}  # no envVarName
    (violation,) = cel_violations(kafka)
    assert "envVarName property is required" in violation and "error" in violation


def test_schema_defaults_are_applied_before_the_rules():
    schema = {
        "properties": {"spec": {"properties": {"size": {"type": "integer", "default": 3}}}},
        "type": "object",
    }
    assert defaulted(schema, {"spec": {}}) == {"spec": {"size": 3}}
    assert defaulted(schema, {"spec": {"size": 1}}) == {"spec": {"size": 1}}


# ---- the renderer: real kustomize --------------------------------------------------------------


def keys_starting_with(document: Any, prefix: str, path: str = "$") -> list[str]:
    """The path of every key anywhere in `document` that starts with `prefix`."""
    found = []
    if isinstance(document, dict):
        for key, value in document.items():
            if str(key).startswith(prefix):
                found.append(f"{path}.{key}")
            found += keys_starting_with(value, prefix, f"{path}.{key}")
    elif isinstance(document, list):
        for index, item in enumerate(document):
            found += keys_starting_with(item, prefix, f"{path}[{index}]")
    return found


def test_no_patch_directive_survives_the_rendering(overlay):
    for manifest in overlay:
        assert not keys_starting_with(manifest, "$patch"), manifest["metadata"]["name"]
    assert keys_starting_with({"env": [{"name": "A", "$patch": "delete"}]}, "$patch") == [
        "$.env[0].$patch"
    ]


def test_the_kafka_listeners_are_exactly_the_intended_ones(rendered):
    listeners = {
        name: [
            (item["name"], item["port"], item["tls"], item.get("authentication", {}).get("type"))
            for item in named(manifests, "Kafka", "tasleem")["spec"]["kafka"]["listeners"]
        ]
        for name, manifests in rendered.items()
    }
    # production: SCRAM over TLS and nothing else, no plain listener left over from anywhere
    assert listeners["production"] == [("tls", 9093, True, "scram-sha-512")]
    assert listeners["dev"] == [("plain", 9092, False, None)]


KAFKA = """\
apiVersion: kafka.strimzi.io/v1
kind: Kafka
metadata: {name: k}
spec:
  kafka:
    listeners:
      - {name: plain, port: 9092, type: internal, tls: false}
"""
DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  template:
    spec:
      containers:
        - name: app
          image: app
          env:
            - {name: A, value: "1"}
            - {name: B, value: "2"}
"""


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def test_kustomize_replaces_a_custom_resource_s_list_and_applies_patch_deletes(tmp_path):
    """What the home-made renderer got wrong: a CR has no merge keys, so a strategic-merge patch
    replaces its lists; `$patch: delete` removes an entry instead of leaving a `$patch` key."""
    write(
        tmp_path,
        {
            "kustomization.yaml": (
                "resources: [kafka.yaml, web.yaml]\npatches:\n  - path: tls.yaml\n"
                "  - path: drop-b.yaml\n"
            ),
            "kafka.yaml": KAFKA,
            "web.yaml": DEPLOYMENT,
            "tls.yaml": (
                "apiVersion: kafka.strimzi.io/v1\nkind: Kafka\nmetadata: {name: k}\nspec:\n"
                "  kafka:\n    listeners:\n"
                "      - {name: tls, port: 9093, type: internal, tls: true}\n"
            ),
            "drop-b.yaml": (
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n"
                "  template:\n    spec:\n      containers:\n        - name: app\n"
                "          env:\n            - {name: B, $patch: delete}\n"
            ),
        },
    )
    manifests = kustomize(tmp_path)
    listeners = named(manifests, "Kafka", "k")["spec"]["kafka"]["listeners"]
    assert [item["name"] for item in listeners] == ["tls"]
    (app,) = named(manifests, "Deployment", "web")["spec"]["template"]["spec"]["containers"]
    assert app["env"] == [{"name": "A", "value": "1"}]
    assert not any(keys_starting_with(m, "$patch") for m in manifests)


def test_without_kubectl_the_deploy_tests_skip_on_a_laptop_and_fail_in_ci(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no kubectl on it
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="kubectl"):
        conftest.kubectl()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="kubectl"):
        conftest.kubectl()


# ---- current operators -------------------------------------------------------------------------

# Strimzi 1.2 (kafka-versions.yaml at the 1.2.0 tag) supports Kafka 4.2.0-4.2.1 and 4.3.0-4.3.1.
STRIMZI_KAFKA_VERSIONS = {
    "4.2.0": "4.2-IV1",
    "4.2.1": "4.2-IV1",
    "4.3.0": "4.3-IV0",
    "4.3.1": "4.3-IV0",
}


def retired_apis(manifests: list[Manifest]) -> list[str]:
    """What the current operators no longer serve or have deprecated."""
    found = []
    for m in manifests:
        where = f"{m['kind']}/{m['metadata']['name']}"
        if (
            m["apiVersion"].startswith("kafka.strimzi.io/")
            and m["apiVersion"] != "kafka.strimzi.io/v1"
        ):
            found.append(
                f"{where}: {m['apiVersion']} (Strimzi 1.x serves kafka.strimzi.io/v1 only)"
            )
        found += [f"{where}: {p} (deprecated)" for p in keys_starting_with(m, "enablePodMonitor")]
    return found


def test_no_retired_operator_api_is_used(overlay):
    assert not retired_apis(overlay)
    old = {
        "apiVersion": "kafka.strimzi.io/v1beta2",
        "kind": "KafkaTopic",
        "metadata": {"name": "t"},
    }
    cluster = {
        "apiVersion": "postgresql.cnpg.io/v1",
        "kind": "Cluster",
        "metadata": {"name": "db"},
        "spec": {"monitoring": {"enablePodMonitor": True}},
    }
    assert len(retired_apis([old, cluster])) == 2


def test_kafka_runs_a_version_strimzi_supports(overlay):
    kafka = named(overlay, "Kafka", "tasleem")["spec"]["kafka"]
    assert kafka["version"] in STRIMZI_KAFKA_VERSIONS
    assert kafka["metadataVersion"] == STRIMZI_KAFKA_VERSIONS[kafka["version"]]
    assert "strimzi.io/kraft" not in named(overlay, "Kafka", "tasleem")["metadata"].get(
        "annotations", {}
    )


# No upstream PodMonitor schema is in deploy/k8s/schemas (the extracted set carries ServiceMonitor
# and PrometheusRule only): this is the part of monitoring.coreos.com/v1 PodMonitor used here.
POD_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        }
                    },
                },
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                        },
                    },
                },
            },
        },
    },
}


def test_the_database_pod_monitor(overlay):
    (cluster,) = of_kind(overlay, "Cluster")
    (monitor,) = of_kind(overlay, "PodMonitor")
    jsonschema.Draft202012Validator(POD_MONITOR).validate(monitor)
    assert monitor["metadata"]["namespace"] == cluster["metadata"]["namespace"]
    name = cluster["metadata"]["name"]
    assert monitor["spec"]["selector"]["matchLabels"] == {"cnpg.io/cluster": name}
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    typo = copy.deepcopy(monitor)
    typo["spec"]["podMetricEndpoints"] = typo["spec"].pop("podMetricsEndpoints")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(POD_MONITOR).validate(typo)
