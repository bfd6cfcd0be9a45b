"""The pre-commit hooks run what `make lint` runs, so a commit is checked as CI checks it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def lint_commands() -> list[str]:
    """The recipe lines of the Makefile's `lint` target, with $(BIN) spelled out."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^lint:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe, "the Makefile has no lint target"
    return [line.strip().replace("$(BIN)", ".venv/bin") for line in recipe.group(1).splitlines()]


def test_pre_commit_runs_exactly_the_lint_target():
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    entries = [hook["entry"] for repo in config["repos"] for hook in repo["hooks"]]
    assert entries == lint_commands()


LAYERED = ("shared", "services", "deploy", "bench", "chaos")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / ".venv/bin/lint-imports"), "--no-cache"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},  # these packages, not the installed ones
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_layers_hold_in_the_code_as_it_is():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_forbidden_import_breaks_the_contracts(tmp_path):
    """The contracts catch what they are there for: a copy of the code with a service importing
    another service and an operator command importing a service's code fails the check."""
    for package in LAYERED:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with (tmp_path / "services/allocator/stock.py").open("a") as f:
        f.write("\nfrom services.ingest import fields  # noqa\n")
    with (tmp_path / "deploy/cli/stock.py").open("a") as f:
        f.write("\nfrom services.allocator import vault  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "services.allocator is not allowed to import services.ingest" in result.stdout
    assert "deploy.cli.stock is not allowed to import services" in result.stdout
    assert "shared imports no service KEPT" in result.stdout
