"""Render a kustomization offline: `python -m deploy.k8s.render deploy/k8s/overlays/production`.

No kustomize binary installs from PyPI or npm, so this renders the subset the overlays use:
`resources` (files and directories), `configMapGenerator` (files, literals, labels; name hashes
off), `patches` (strategic merge, or JSON 6902 with a `target`), `images`, `namespace` and
`labels` (metadata only). Anything else in a kustomization is refused rather than ignored, so the
output never silently differs from what `kubectl apply -k` would make.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

Manifest = dict[str, Any]

SUPPORTED = {
    "apiVersion",
    "kind",
    "resources",
    "configMapGenerator",
    "generatorOptions",
    "patches",
    "images",
    "namespace",
    "labels",
}


class RenderError(ValueError):
    """The kustomization uses something this renderer does not do, or does not apply."""


def render(directory: Path) -> list[Manifest]:
    """Every manifest the kustomization in `directory` produces, in order."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(spec) - SUPPORTED
    if unknown:
        raise RenderError(f"{directory}: unsupported kustomization fields {sorted(unknown)}")
    manifests: list[Manifest] = []
    for entry in spec.get("resources", []):
        path = (directory / entry).resolve()
        manifests += render(path) if path.is_dir() else load(path)
    manifests += _generate(directory, spec)
    for patch in spec.get("patches", []):
        _apply_patch(manifests, directory, patch)
    for image in spec.get("images", []):
        _set_image(manifests, image)
    for manifest in manifests:
        if "namespace" in spec:
            manifest["metadata"]["namespace"] = spec["namespace"]
        for group in spec.get("labels", []):
            if group.get("includeSelectors") or group.get("includeTemplates"):
                raise RenderError("labels: only metadata labels are supported")
            manifest["metadata"].setdefault("labels", {}).update(group["pairs"])
    return manifests


def load(path: Path) -> list[Manifest]:
    """The documents of a YAML file, skipping empty ones (a file may open with comments)."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _generate(directory: Path, spec: dict[str, Any]) -> list[Manifest]:
    generated = []
    if spec.get("configMapGenerator") and not spec.get("generatorOptions", {}).get(
        "disableNameSuffixHash"
    ):
        raise RenderError("configMapGenerator needs generatorOptions.disableNameSuffixHash: true")
    for generator in spec.get("configMapGenerator", []):
        data: dict[str, str] = {}
        for file in generator.get("files", []):
            key, _, source = file.rpartition("=") if "=" in file else ("", "", file)
            data[key or Path(source).name] = (directory / source).read_text()
        for literal in generator.get("literals", []):
            key, _, value = literal.partition("=")
            data[key] = value
        metadata: dict[str, Any] = {"name": generator["name"]}
        if labels := generator.get("options", {}).get("labels"):
            metadata["labels"] = dict(labels)
        generated.append(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}
        )
    return generated


def _apply_patch(manifests: list[Manifest], directory: Path, patch: dict[str, Any]) -> None:
    documents = load(directory / patch["path"])
    target = patch.get("target")
    if len(documents) == 1 and isinstance(documents[0], list):  # JSON 6902: a list of operations
        if target is None:
            raise RenderError(f"{patch['path']}: a JSON 6902 patch needs a target")
        matched = [m for m in manifests if _matches(m, target)]
        if not matched:
            raise RenderError(f"{patch['path']}: no manifest matches {target}")
        for manifest in matched:
            for operation in documents[0]:
                _json6902(manifest, operation)
        return
    for document in documents:
        selector = target or {
            "kind": document["kind"],
            "name": document["metadata"]["name"],
        }
        matched = [m for m in manifests if _matches(m, selector)]
        if not matched:
            raise RenderError(f"{patch['path']}: no manifest matches {selector}")
        for manifest in matched:
            merged = strategic_merge(manifest, document)
            manifest.clear()
            manifest.update(merged)


def _matches(manifest: Manifest, target: dict[str, Any]) -> bool:
    unknown = set(target) - {"kind", "name"}
    if unknown:
        raise RenderError(f"patch targets may select by kind and name only, not {unknown}")
    return all(
        (manifest["kind"] if key == "kind" else manifest["metadata"]["name"]) == value
        for key, value in target.items()
    )


def strategic_merge(base: Any, patch: Any) -> Any:
    """Maps merge key by key (null deletes); lists of named items merge by `name`, other lists
    are replaced — the strategic-merge rules for the fields these overlays patch."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and _named(base) and _named(patch):
        by_name = {item["name"]: item for item in base}
        result = [
            strategic_merge(by_name[i["name"]], i) if i["name"] in by_name else i for i in patch
        ]
        patched = {item["name"] for item in patch}
        return [item for item in base if item["name"] not in patched] + result
    return copy.deepcopy(patch)


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, dict) and "name" in i for i in items)


def _json6902(manifest: Manifest, operation: dict[str, Any]) -> None:
    op, path = operation["op"], operation["path"]
    keys = [k.replace("~1", "/").replace("~0", "~") for k in path.lstrip("/").split("/")]
    parent: Any = manifest
    for key in keys[:-1]:
        parent = parent[int(key)] if isinstance(parent, list) else parent[key]
    last: Any = keys[-1]
    if isinstance(parent, list):
        last = len(parent) if last == "-" else int(last)
    if op == "add":
        if isinstance(parent, list):
            parent.insert(last, copy.deepcopy(operation["value"]))
        else:
            parent[last] = copy.deepcopy(operation["value"])
    elif op == "replace":
        if isinstance(parent, dict) and last not in parent:
            raise RenderError(f"replace: {path} does not exist")
        parent[last] = copy.deepcopy(operation["value"])
    elif op == "remove":
        del parent[last]
    else:
        raise RenderError(f"unsupported JSON patch op {op!r}")


def _set_image(manifests: list[Manifest], image: dict[str, str]) -> None:
    for manifest in manifests:
        pod = manifest.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            name, _, _tag = container["image"].partition(":")
            if name != image["name"]:
                continue
            new_name = image.get("newName", name)
            if "digest" in image:
                container["image"] = f"{new_name}@{image['digest']}"
            else:
                container["image"] = f"{new_name}:{image.get('newTag', _tag)}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m deploy.k8s.render <kustomization directory>", file=sys.stderr)
        return 2
    yaml.safe_dump_all(render(Path(args[0])), sys.stdout, sort_keys=False, allow_unicode=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
