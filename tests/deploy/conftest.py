"""The rendered overlays, once per session: every deploy test reads the same manifests.

They are rendered by real kustomize (`kubectl kustomize`), the same code `kubectl apply -k` runs,
so the tests check exactly what ships. Without kubectl the deploy tests skip on a laptop and fail
in CI (`CI=true`), where a missing renderer must never pass as green.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.tooling import require_tool

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
OVERLAYS = ("dev", "production")

Manifest = dict[str, Any]

# The custom resources' schemas, from the operators' own CRDs: `<group>/<kind>_<version>.json`.
SCHEMAS: dict[str, dict[str, Any]] = {
    str(p.relative_to(K8S / "schemas").with_suffix("")): json.loads(p.read_text())
    for p in sorted((K8S / "schemas").glob("*/*.json"))
}


def schema_key(manifest: Manifest) -> str:
    """Where a custom resource's schema lives in SCHEMAS: `kafka.strimzi.io/kafka_v1`."""
    group, _, version = manifest["apiVersion"].rpartition("/")
    return f"{group}/{manifest['kind'].lower()}_{version}"


def kubectl() -> str:
    """kubectl (on the machine image; installed from Debian's archive under CI=true if not),
    or a printed skip on a laptop without it."""
    return require_tool("kubectl", apt_package="kubectl")


def kustomize(directory: Path) -> list[Manifest]:
    """Every manifest the kustomization in `directory` produces, as `kubectl kustomize` does."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {directory}: {result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[Manifest]]:
    return {name: kustomize(K8S / "overlays" / name) for name in OVERLAYS}


@pytest.fixture(scope="session", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest, rendered: dict[str, list[Manifest]]) -> list[Manifest]:
    """Each overlay's manifests in turn."""
    return rendered[request.param]


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def named(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    (found,) = [m for m in of_kind(manifests, kind) if m["metadata"]["name"] == name]
    return found
