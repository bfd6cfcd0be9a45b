"""The local stack's admin tokens: one per service and role, each in its own 0600 file, the
services given only digests (tests/integration/test_operator_commands.py: the operator
commands send the right one)."""

from __future__ import annotations

import json
import stat

from typer.testing import CliRunner

from deploy.cli import app
from deploy.embedded.stack import SERVICES, Stack, StackOptions
from shared import admin_auth


def stack_in(home) -> Stack:
    stack = Stack(StackOptions(home=home, database_url="unused", kafka_bootstrap="unused"))
    stack.ports.update(dict.fromkeys(("sandbox", *SERVICES), 1))
    return stack


def test_each_service_gets_the_digests_of_its_own_tokens_only(tmp_path):
    env = stack_in(tmp_path).service_env("http://127.0.0.1:1")
    tokens = {}
    for service in SERVICES:
        for role in ("read", "operate"):
            path = tmp_path / "admin" / f"{service}-{role}.token"
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
            tokens[service, role] = path.read_text().strip()
    assert len(set(tokens.values())) == len(tokens)  # every token is its own
    for service in SERVICES:
        given = env[service][f"TASLEEM_{service.upper()}_ADMIN_TOKENS"]
        credentials = admin_auth.Credentials(admin_auth.parse(given))
        for (owner, role), token in tokens.items():
            assert token not in json.dumps(env)  # no service is given a token itself
            found = credentials.identify(token)
            if owner == service:
                assert found is not None and found.role == role
            else:
                assert found is None, f"{owner}'s {role} token opens {service}"
    # a restarted stack keeps its tokens (curl scripts and the README's commands keep working)
    again = stack_in(tmp_path).service_env("http://127.0.0.1:1")
    assert (
        again["notifier"]["TASLEEM_NOTIFIER_ADMIN_TOKENS"]
        == (env["notifier"]["TASLEEM_NOTIFIER_ADMIN_TOKENS"])
    )


def test_admin_token_command_prints_a_token_and_the_entry_that_accepts_it():
    result = CliRunner().invoke(
        app, ["admin", "token", "--service", "notifier", "--role", "operate", "--caller", "amal"]
    )
    assert result.exit_code == 0, result.output
    lines = dict(line.split(":  ", 1) for line in result.output.strip().splitlines())
    token = lines["token (for amal only)"].strip()
    entry = lines["TASLEEM_NOTIFIER_ADMIN_TOKENS entry"].strip()
    assert token not in entry
    (credential,) = admin_auth.parse(entry)
    assert admin_auth.Credentials([credential]).identify(token) == credential
    assert credential.caller == "amal" and credential.role == "operate"
