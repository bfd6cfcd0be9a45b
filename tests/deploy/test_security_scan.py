"""checkov on the rendered overlays: no finding, except the skips justified in checkov.yaml."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import K8S


@pytest.mark.timeout(120)
def test_checkov_finds_nothing_unjustified(rendered, tmp_path):
    for name, manifests in rendered.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump_all(manifests, sort_keys=False))
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "checkov"),
            "--config-file",
            str(K8S / "checkov.yaml"),
            "--directory",
            str(tmp_path),
            "--output",
            "json",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=110,
        env={
            "PATH": str(Path(sys.executable).parent),
            "BC_SKIP_MAPPING": "TRUE",
            "HOME": str(tmp_path),
        },
    )
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    assert reports and all(r["check_type"] == "kubernetes" for r in reports)
    failed = [
        f"{c['check_id']} {c['resource']}: {c['check_name']}"
        for r in reports
        for c in r["results"]["failed_checks"]
    ]
    assert not failed, "\n".join(failed)
    assert sum(r["summary"]["passed"] for r in reports) > 100  # the scan did look
