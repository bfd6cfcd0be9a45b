"""External programs some tests run (e.g. promtool), found on PATH.

Under CI (`CI=true`) a missing tool is installed from Debian's archive, and a failed install
fails the test: a missing tool must never pass as green there. Elsewhere the test is skipped,
with the reason and the command that installs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

_installed: dict[str, str] = {}  # apt package -> "" (installed) or why the install failed
_apt_updated = False


def require_tool(name: str, apt_package: str) -> str:
    """The path of `name`; installed with apt-get under CI=true, else a skip if missing."""
    found = shutil.which(name)
    if found is not None:
        return found
    install = f"apt-get install -y --no-install-recommends {apt_package}"
    if os.environ.get("CI") != "true":
        reason = f"{name} is not on PATH (Debian package {apt_package!r}: {install})"
        print(f"skipping: {reason}", file=sys.stderr)
        pytest.skip(reason)
    error = _apt_install(apt_package)
    if error:
        pytest.fail(f"{name} is missing and `{install}` failed:\n{error}")
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"`{install}` succeeded but {name} is still not on PATH")
    return found


def _apt_install(package: str) -> str:
    """Install once per session; returns "" or the failure's output."""
    global _apt_updated
    if package in _installed:
        return _installed[package]
    sudo = [] if os.geteuid() == 0 or shutil.which("sudo") is None else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    steps = [] if _apt_updated else [[*sudo, "apt-get", "update"]]
    steps.append([*sudo, "apt-get", "install", "-y", "--no-install-recommends", package])
    error = ""
    for argv in steps:
        try:
            result = subprocess.run(
                argv, capture_output=True, text=True, env=env, timeout=600, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            error = f"{' '.join(argv)}: {exc!r}"
            break
        if result.returncode != 0:
            error = f"{' '.join(argv)} exited {result.returncode}:\n{result.stderr[-4000:]}"
            break
        if argv[-1] == "update":
            _apt_updated = True
    _installed[package] = error
    return error
