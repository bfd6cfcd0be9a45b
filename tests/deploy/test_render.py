"""The offline kustomize renderer: the subset the overlays use, and a refusal for the rest."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.k8s.render import RenderError, render, strategic_merge

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  template:
    spec:
      containers:
        - name: app
          image: tasleem:0.1.0
          env:
            - name: A
              value: "1"
            - name: B
              value: "2"
"""


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_overlay_patches_merge_named_list_items_and_set_namespace_labels_and_image(tmp_path):
    write(
        tmp_path,
        {
            "base/kustomization.yaml": "resources: [web.yaml]\n",
            "base/web.yaml": DEPLOYMENT,
            "prod/kustomization.yaml": (
                "namespace: shop\nresources: [../base]\n"
                "labels:\n  - pairs: {team: tasleem}\n"
                "images:\n  - {name: tasleem, newName: reg/tasleem, newTag: '2.0'}\n"
                "patches:\n  - path: env.yaml\n"
            ),
            "prod/env.yaml": (
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n"
                "spec:\n  template:\n    spec:\n      containers:\n"
                "        - name: app\n          env:\n            - {name: B, value: '3'}\n"
                "            - {name: C, value: '4'}\n"
            ),
        },
    )
    (web,) = render(tmp_path / "prod")
    container = web["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"]: e["value"] for e in container["env"]} == {"A": "1", "B": "3", "C": "4"}
    assert container["image"] == "reg/tasleem:2.0"
    assert web["metadata"]["namespace"] == "shop"
    assert web["metadata"]["labels"] == {"team": "tasleem"}


def test_json_patch_applies_to_every_target_of_a_kind(tmp_path):
    topic = (
        "apiVersion: kafka.strimzi.io/v1beta2\nkind: KafkaTopic\n"
        "metadata: {{name: {}}}\nspec: {{replicas: 3}}\n"
    )
    write(
        tmp_path,
        {
            "kustomization.yaml": (
                "resources: [a.yaml, b.yaml]\n"
                "patches:\n  - path: one.yaml\n    target: {kind: KafkaTopic}\n"
            ),
            "a.yaml": topic.format("a"),
            "b.yaml": topic.format("b"),
            "one.yaml": "- {op: replace, path: /spec/replicas, value: 1}\n",
        },
    )
    assert [t["spec"]["replicas"] for t in render(tmp_path)] == [1, 1]


def test_a_patch_that_matches_nothing_is_an_error_not_a_no_op(tmp_path):
    write(
        tmp_path,
        {
            "kustomization.yaml": "resources: [web.yaml]\npatches:\n  - path: p.yaml\n",
            "web.yaml": DEPLOYMENT,
            "p.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: typo}\nspec: {}\n",
        },
    )
    with pytest.raises(RenderError, match="no manifest matches"):
        render(tmp_path)


def test_unsupported_kustomize_features_are_refused(tmp_path):
    write(tmp_path, {"kustomization.yaml": "resources: []\nreplicas:\n  - {name: web, count: 3}\n"})
    with pytest.raises(RenderError, match="replicas"):
        render(tmp_path)


def test_strategic_merge_null_deletes_and_plain_lists_are_replaced():
    merged = strategic_merge({"a": 1, "b": 2, "args": ["x", "y"]}, {"a": None, "args": ["z"]})
    assert merged == {"b": 2, "args": ["z"]}
