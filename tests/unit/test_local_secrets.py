"""The embedded stack's secrets: each made at random on its own, in files that are 0600 from
the moment they exist (not written and then chmod-ed)."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path

import pytest

from deploy.embedded.stack import SERVICES, Stack, StackOptions


@pytest.fixture
def no_chmod(monkeypatch):
    """A chmod that does nothing: a file is private only if it was created private."""
    monkeypatch.setattr(Path, "chmod", lambda self, mode: None)
    monkeypatch.setattr(os, "chmod", lambda *args, **kwargs: None)
    old = os.umask(0)  # the most permissive umask: permissions come from the create call
    try:
        yield
    finally:
        os.umask(old)


def stack_in(home: Path) -> Stack:
    stack = Stack(StackOptions(home=home, database_url="unused", kafka_bootstrap="unused"))
    stack.ports.update(dict.fromkeys(("sandbox", *SERVICES), 1))
    return stack


def test_secret_files_are_private_from_creation(tmp_path, no_chmod):
    stack = stack_in(tmp_path)
    stack._persisted_secrets()  # made the first time
    assert stat.S_IMODE((tmp_path / "secrets.json").stat().st_mode) == 0o600
    stack.service_env("http://127.0.0.1:2")
    stack._platform_secret("salla")  # a secret asked for later rewrites the file, still private
    for path in [tmp_path / "secrets.json", *sorted((tmp_path / "admin").iterdir())]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((tmp_path / "admin").stat().st_mode) == 0o700


def test_no_secret_is_derived_from_another(tmp_path):
    stack = stack_in(tmp_path)
    env = stack.service_env("http://127.0.0.1:2")
    seed = stack._secret("store_secret").encode()
    # what any one of them was made from before: an HMAC of the store secret
    derived = {
        hmac.new(seed, name.encode(), hashlib.sha256).hexdigest()
        for name in ("admin-api", "whatsapp-app", "unifonic", "unifonic-dlr", "twilio", "ses")
    }
    values = [v for service in env.values() for v in service.values()]
    assert not derived & set(values)
    secrets = [
        stack._platform_secret(p) for p in ("whatsapp-app", "unifonic", "twilio", "ses", "salla")
    ]
    secrets += [stack._supplier_secret(r) for r in ("bamboo", "like4card", "like4card-key")]
    assert len(set(secrets)) == len(secrets)
    for value in secrets:
        assert all(value not in other for other in secrets if other is not value)
    # and they are kept: a restarted stack gives the same
    assert stack_in(tmp_path)._platform_secret("twilio") == stack._platform_secret("twilio")
