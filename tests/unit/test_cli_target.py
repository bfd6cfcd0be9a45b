"""The operator commands' edge without a service: which URL and token a command uses, how a
refusal reads, and the tables people read in an 80-column terminal (the commands against real
services: tests/integration/test_operator_commands.py)."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from deploy.cli import api
from deploy.cli.stock import levels_table
from deploy.cli.stores import stores_table


@pytest.fixture
def home(tmp_path, monkeypatch):
    for service in ("allocator", "notifier"):
        for name in api.env_names(service):
            monkeypatch.delenv(name, raising=False)
    (tmp_path / "admin").mkdir()
    (tmp_path / "stack.json").write_text(json.dumps({"allocator": "http://127.0.0.1:7001/"}))
    (tmp_path / "admin" / "allocator-read.token").write_text("local-read\n")
    (tmp_path / "admin" / "allocator-operate.token").write_text("local-operate\n")
    return tmp_path


def test_the_local_stack_gives_the_url_and_the_token_of_the_role_needed(home):
    assert api.target("allocator", "read", None, None, home) == api.Target(
        "allocator", "http://127.0.0.1:7001", "local-read"
    )
    assert api.target("allocator", "operate", None, None, home).token == "local-operate"


def test_a_stack_file_naming_another_machine_gets_no_token(home):
    stack = home / "stack.json"
    stack.write_text(stack.read_text().replace("127.0.0.1", "attacker.example"))
    with pytest.raises(api.Failed, match="not this machine"):
        api.target("allocator", "read", None, None, home)


def test_flags_then_environment_then_the_stack(home, monkeypatch):
    monkeypatch.setenv("TASLEEM_ALLOCATOR_ADMIN_TOKEN", "from-env")
    # the environment's token goes only where the environment points, never to the stack
    assert api.target("allocator", "read", None, None, home).token == "local-read"
    assert api.target("allocator", "read", None, "from-flag", home).token == "from-flag"
    monkeypatch.setenv("TASLEEM_ALLOCATOR_URL", "https://allocator.example")
    chosen = api.target("allocator", "operate", None, None, home)
    assert (chosen.url, chosen.token) == ("https://allocator.example", "from-env")
    assert api.target("allocator", "read", "http://x:1", None, home).url == "http://x:1"


def test_a_local_token_is_never_sent_to_another_url(home):
    with pytest.raises(api.Failed, match="no admin token for the allocator") as refused:
        api.target("allocator", "operate", "https://allocator.example", None, home)
    assert "TASLEEM_ALLOCATOR_ADMIN_TOKEN" in str(refused.value)
    assert refused.value.code == api.REFUSED


def test_without_a_stack_the_message_says_how_to_name_one(tmp_path, monkeypatch):
    monkeypatch.delenv("TASLEEM_NOTIFIER_URL", raising=False)
    with pytest.raises(api.Failed, match=r"tasleem up.*--url or TASLEEM_NOTIFIER_URL"):
        api.target("notifier", "read", None, None, tmp_path)


def test_a_token_never_shows_in_a_target():
    assert "s3cret" not in repr(api.Target("notifier", "http://n", "s3cret"))


def test_refusals_read_as_what_to_do_with_their_exit_codes():
    forbidden = api.refusal("allocator", 403, {"error": "forbidden", "detail": "x is read-only"})
    assert "needs an operate token of the allocator" in str(forbidden)
    unauthorized = api.refusal("notifier", 401, {"error": "unauthorized", "detail": "bad"})
    assert "TASLEEM_NOTIFIER_ADMIN_TOKEN" in str(unauthorized) and unauthorized.code == 2
    limited = api.refusal("notifier", 429, {"error": "too_many", "detail": "slow down"}, "30")
    assert "try again in 30 s" in str(limited)
    broken = api.refusal("ingest", 503, {"error": "broker_unavailable", "detail": "repeat"})
    assert broken.code == api.UNREACHABLE and "answered 503" in str(broken)
    assert api.refusal("ingest", 404, "not json").code == api.REFUSED


def rendered(table, width: int = 80) -> list[str]:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text().splitlines()


def test_the_levels_table_keeps_every_header_whole_at_80_columns():
    row = dict(available=1234567, reserved=3, sold=100000, backordered=7, expiring_soon=2)
    skus = [
        {"sku": sku, **row, "expired": 1, "quarantined": 0}
        for sku in ("PSN-50", "STEAM-WALLET-100-SAR-GIFT-CARD-SAUDI-ARABIA")
    ]
    lines = rendered(levels_table({"account": "demo-store", "skus": skus, "expiring_days": 7}))
    assert max(map(len, lines)) <= 80
    header = next(line for line in lines if line.startswith("sku"))
    expected = ["sku", "available", "reserved", "sold", "backorder", "expiring", "expired", "held"]
    assert header.split() == expected
    assert "…" not in "\n".join(lines)
    assert any(line.split()[1:] == ["1234567", "3", "100000", "7", "2", "1", "0"] for line in lines)


def test_the_stores_table_keeps_ids_whole_at_80_columns():
    store = {
        "store_id": "cli-9e6dd3",
        "platform": "woocommerce",
        "name": "CLI Cards of the Gulf",
        "locale": "en",
        "channels": ["whatsapp", "sms", "email"],
        "secrets": ["sha256:0123456789ab", "sha256:ba9876543210"],
        "api_credential": "sha256:aaaabbbbcccc",
        "sku_map": {"p-1": "SKU-A"},
    }
    lines = rendered(stores_table([store], title="Stores"))
    text = "\n".join(lines)
    assert max(map(len, lines)) <= 80 and "…" not in text
    assert "cli-9e6dd3" in text and "woocommerce" in text
    assert "01234567" in text and "ba987654" in text and "api aaaabbbb" in text
