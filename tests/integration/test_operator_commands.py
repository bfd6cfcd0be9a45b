"""The operator commands (`tasleem stock | vault | notify`) as clients of real running services:
an allocator on PostgreSQL and the broker, a notifier with the sandbox behind it. What they
print for people, what `--json` gives scripts, which token they send, and the exit codes; and
the admin endpoints they use, refusing bad input and read tokens on changes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from click.testing import Result
from typer.testing import CliRunner

from deploy.cli import app
from deploy.embedded.broker import client_settings
from services.allocator import vault
from services.allocator.main import lifespan
from services.allocator.settings import AllocatorSettings
from services.notifier.handlers import deliver
from shared import admin_auth, runtime
from shared.codecrypt import CodeCipher
from shared.events import Stock, StoreConfig
from shared.kafka import ensure_topics, topic_specs
from tests.integration.notifier_support import OPERATOR as NOTIFIER_OPERATOR
from tests.integration.notifier_support import READER as NOTIFIER_READER
from tests.integration.notifier_support import allocation, running_notifier

pytestmark = pytest.mark.integration
OPERATOR, READER = admin_auth.new_token(), admin_auth.new_token()
# a test's commands name their target; none is taken from the developer's environment
HERMETIC = {
    name: None
    for service in ("ingest", "allocator", "notifier", "restocker")
    for name in (f"TASLEEM_{service.upper()}_URL", f"TASLEEM_{service.upper()}_ADMIN_TOKEN")
}


async def tasleem(*args: str, **env: str) -> Result:
    """The command, in a thread (the service answers it on this loop), at 80 columns."""
    environment = {**HERMETIC, "COLUMNS": "80", **env}
    return await asyncio.to_thread(CliRunner().invoke, app, list(args), env=environment)


@contextlib.asynccontextmanager
async def running_allocator(
    database: str, kafka: str, vault_env: dict[str, str], vault_keys: str | None = None
) -> AsyncIterator[str]:
    """An allocator's admin API, wired by its own lifespan; its URL. Tokens: amal operates,
    grafana reads."""
    await ensure_topics(client_settings(kafka), topic_specs(partitions=2))
    settings = AllocatorSettings(
        database_url=database,
        kafka_bootstrap=kafka,
        vault_keys=vault_keys or vault_env["TASLEEM_VAULT_KEYS"],
        vault_fingerprint_key=vault_env["TASLEEM_VAULT_FINGERPRINT_KEY"],
        allocator_admin_tokens=",".join(
            [
                admin_auth.entry("amal", "operate", OPERATOR),
                admin_auth.entry("grafana", "read", READER),
            ]
        ),
    )
    rt = runtime.Runtime("allocator", settings, web.Application())
    rt.app.add_routes(runtime.admin_routes(rt))
    async with lifespan(rt):
        server = TestServer(rt.app)
        await server.start_server()
        try:
            yield str(server.make_url("")).rstrip("/")
        finally:
            await server.close()


async def seed(database: str, cipher: CodeCipher, stock: Stock, codes: list[str]) -> None:
    """Codes put in the vault directly (an account no API reaches, or under an older key)."""
    conn = await asyncpg.connect(database, server_settings={"search_path": "allocator"})
    try:
        await vault.import_plain_codes(conn, cipher, stock, codes, source="test")
    finally:
        await conn.close()


async def http(method: str, url: str, token: str, **options: Any) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, headers={"Authorization": f"Bearer {token}"}, **options) as r,
    ):
        return r.status, await r.json(content_type=None)


STOCK_FILE = (
    "code,expires_at,cost\n"
    "PSN-00A1,2030-01-01,9.5\n"
    "PSN-00A2,31/12/2026,\n"  # a date as people write it
    "PSN-00A3,2020-01-01,\n"  # long gone
    "PSN-00A1,,\n"
    "nope,,\n"
    "PSN-00A4,,abc\n"
    "PSN-00A5,,\n"
)
BAD_DATE = (
    'expires "31/12/2026" is not a date; use ISO 8601, e.g. 2026-12-31 or 2026-12-31T23:59:00+03:00'
)


async def test_stock_commands_against_a_running_allocator(
    database, kafka, vault_env, cipher, tmp_path
):
    async with running_allocator(database, kafka, vault_env) as url:
        operate, read = ("--url", url, "--token", OPERATOR), ("--url", url, "--token", READER)
        rule = await tasleem(
            "stock", "rule", "--account", "s1", "--sku", "PSN", "--pattern", "PSN-[0-9A-F]{4}",
            *operate,
        )  # fmt: skip
        assert rule.exit_code == 0, rule.output
        assert "s1 / PSN: codes must match PSN-[0-9A-F]{4}" in rule.stdout

        path = tmp_path / "codes.csv"
        path.write_text(STOCK_FILE)
        imported = await tasleem(
            "stock", "import", "--account", "s1", "--sku", "PSN", str(path), *operate
        )
        assert imported.exit_code == 0, imported.output
        # for people: a summary and every refused line with its reason, never a code
        lines = imported.stdout.splitlines()
        assert lines[0] == "s1 / PSN: 2 added, 1 duplicate skipped, 4 lines refused"
        assert "  duplicates: line 5" in lines
        assert f"  line 3: {BAD_DATE}" in lines
        assert "  line 4: already expired (valid through 2020-01-01)" in lines
        assert "  line 6: code does not match the sku's format" in lines
        assert any(
            line.startswith("  line 7: cost is not a number; use a decimal") for line in lines
        )
        assert "PSN-00A" not in imported.output

        again = await tasleem(
            "stock", "import", "--account", "s1", "--sku", "PSN", str(path), "--json", *operate
        )
        report = json.loads(again.stdout)  # for scripts: the allocator's report as it is
        assert (report["added"], report["duplicates"], report["duplicate_lines"]) == (
            0,
            3,
            [2, 5, 8],
        )
        assert [p["line"] for p in report["invalid"]] == [3, 4, 6, 7]
        assert report["invalid"][0]["reason"] == BAD_DATE

        # a read token looks, and cannot change anything
        refused = await tasleem(
            "stock", "import", "--account", "s1", "--sku", "PSN", str(path), *read
        )
        assert refused.exit_code == 2
        assert "needs an operate token of the allocator" in refused.output

        # the ':legacy' codes go to their owner, and fill its stock at once
        await seed(database, cipher, Stock(":legacy", "PSN"), ["PSN-0B01", "PSN-0B02", "PSN-0B03"])
        moved = await tasleem("stock", "move", "--sku", "PSN", "--to", "s1", *operate)
        assert moved.exit_code == 0, moved.output
        assert moved.stdout.strip() == "3 available codes of PSN moved from :legacy to s1"
        nothing = await tasleem("stock", "move", "--sku", "PSN", "--to", "s1", "--json", *operate)
        assert json.loads(nothing.stdout) == {
            "sku": "PSN",
            "from": ":legacy",
            "to": "s1",
            "moved": 0,
        }

        levels = await tasleem("stock", "levels", "--account", "s1", *read)
        assert levels.exit_code == 0, levels.output
        table = levels.stdout.splitlines()
        assert max(map(len, table)) <= 80  # whole at 80 columns: no header cut
        header = next(line for line in table if line.startswith("sku"))
        assert header.split() == [
            "sku", "available", "reserved", "sold", "backorder", "expiring", "expired", "held"
        ]  # fmt: skip
        assert "…" not in levels.stdout
        (row,) = [line.split() for line in table if line.startswith("PSN")]
        assert row[:2] == ["PSN", "5"]
        as_json = await tasleem(
            "stock", "levels", "--account", "s1", "--sku", "PSN", "--json", *read
        )
        assert json.loads(as_json.stdout)["skus"][0]["available"] == 5


async def test_new_endpoints_refuse_bad_input_and_read_tokens(database, kafka, vault_env):
    async with running_allocator(database, kafka, vault_env) as url:
        move = f"{url}/admin/stock/PSN/move"
        for query in (
            {"account": "s1", "from": "s1"},  # to itself
            {"account": "s1", "from": "a\x00b"},
            {"account": "s1", "from": "x" * 200},
            {"account": ":legacy"},  # no store's account
            {},
        ):
            status, answer = await http("POST", move, OPERATOR, params=query)
            assert status == 400 and answer["error"] and answer["detail"], (query, answer)
        for batch in ("0", "abc", "10001", "-5"):
            status, answer = await http(
                "POST", f"{url}/admin/vault/rekey", OPERATOR, params={"batch": batch}
            )
            assert status == 400 and "batch is a whole number" in answer["detail"], batch
        for method, where in (("POST", move + "?account=s1"), ("POST", f"{url}/admin/vault/rekey")):
            status, answer = await http(method, where, READER)
            assert status == 403 and answer["error"] == "forbidden"
        # the import's query values are named with the form expected, for API users too
        status, answer = await http(
            "POST", f"{url}/admin/stock/PSN/import", OPERATOR,
            params={"account": "s1", "expires": "31/12/2026"}, data=b"PSN-1\n",
        )  # fmt: skip
        assert (status, answer["detail"]) == (400, BAD_DATE)
        status, answer = await http(
            "POST", f"{url}/admin/stock/PSN/import", OPERATOR,
            params={"account": "s1", "cost": "-1"}, data=b"PSN-1\n",
        )  # fmt: skip
        assert status == 400 and answer["detail"].startswith('cost "-1" is out of range')
        # an expiry in the past refuses every line that names none, by line number
        status, answer = await http(
            "POST", f"{url}/admin/stock/PSN/import", OPERATOR,
            params={"account": "s1", "expires": "2021-03-01"}, data=b"PSN-1\nPSN-2\n",
        )  # fmt: skip
        assert status == 200 and answer["added"] == 0
        assert answer["invalid"] == [
            {"line": n, "reason": "already expired (valid through 2021-03-01)"} for n in (1, 2)
        ]


async def test_commands_say_what_is_wrong_with_the_target(tmp_path):
    none = await tasleem("stock", "levels", "--account", "s1", "--home", str(tmp_path))
    assert none.exit_code == 2 and "no running stack" in none.output
    assert "--url or TASLEEM_ALLOCATOR_URL" in none.output
    tokenless = await tasleem("stock", "levels", "--account", "s1", "--url", "http://127.0.0.1:9")
    assert tokenless.exit_code == 2 and "no admin token for the allocator" in tokenless.output
    gone = await tasleem(
        "stock", "levels", "--account", "s1", TASLEEM_ALLOCATOR_URL="http://127.0.0.1:9",
        TASLEEM_ALLOCATOR_ADMIN_TOKEN="t",
    )  # fmt: skip
    assert gone.exit_code == 3 and "did not answer" in gone.output


async def test_vault_rekey_has_the_allocator_reseal_its_codes_under_its_new_key(
    database, kafka, vault_env, cipher
):
    new_key = "k8:" + base64.b64encode(os.urandom(32)).decode()
    rotated = f"{new_key},{vault_env['TASLEEM_VAULT_KEYS']}"  # the new key first, the old kept
    async with running_allocator(database, kafka, vault_env, vault_keys=rotated) as url:
        # sealed under the old key, as before the rotation
        await seed(database, cipher, Stock("shop-a", "PSN"), [f"CLI-SECRET-{i}" for i in range(3)])
        target = ("--url", url, "--token", OPERATOR)
        refused = await tasleem("vault", "rekey", "--url", url, "--token", READER)
        assert refused.exit_code == 2 and "operate token" in refused.output

        done = await tasleem("vault", "rekey", "--batch", "2", "--json", *target)
        assert done.exit_code == 0, done.output
        report = json.loads(done.stdout)
        assert (report["key_id"], report["rekeyed"], report["batches"]) == ("k8", 3, 2)
        assert report["remaining_old"] == 0
        assert "CLI-SECRET" not in done.output
        conn = await asyncpg.connect(database, server_settings={"search_path": "allocator"})
        try:
            keys = {
                r["k"]
                for r in await conn.fetch("SELECT split_part(sealed, ':', 1) AS k FROM codes")
            }
            assert keys == {"k8"}
            # a code no key opens: reported by id, and the command says the old key is needed
            code_id = await conn.fetchval(
                "UPDATE codes SET sealed = 'k0:AAAA'"
                " WHERE code_id = (SELECT min(code_id) FROM codes) RETURNING code_id"
            )
        finally:
            await conn.close()
        stuck = await tasleem("vault", "rekey", *target)
        assert stuck.exit_code == 1, stuck.output
        assert "0 codes re-sealed under key k8 in 1 batch; 1 left under another key" in stuck.stdout
        assert f"1 code open under no key (code ids {code_id})" in stuck.stdout


async def test_notify_preview_renders_with_the_store_settings_the_notifier_knows(
    cipher, service_databases
):
    async with running_notifier(cipher, service_databases["notifier"]) as notifier:
        read = ("--url", notifier.url, "--token", NOTIFIER_READER)
        arabic = await tasleem("notify", "preview", "--locale", "ar", "--code", "ZZ-99", *read)
        assert arabic.exit_code == 0, arabic.output
        assert "ZZ-99" in arabic.stdout and "رمز" in arabic.stdout
        assert "the default templates" in arabic.stdout
        email = await tasleem(
            "notify", "preview", "--locale", "en", "--channel", "email", "--store", "Gulf Games",
            *read,
        )  # fmt: skip
        assert email.exit_code == 0, email.output
        assert "Subject: Gulf Games" in email.stdout and 'dir="ltr"' in email.stdout
        bad = await tasleem("notify", "preview", "--locale", "fr", *read)
        assert bad.exit_code == 2 and "locale is ar or en" in bad.output

        # a store's own templates and instructions, as store.config gave them to the notifier
        notifier.delivery.channels.stores.apply(
            StoreConfig(
                event_id="store-config-gulf",
                store_id="gulf",
                platform="standard",
                name="Gulf Games",
                locale="en",
                templates={"sms.en": "{store} -> {codes} for {product}", "whatsapp": "gulf_codes"},
                instructions={"en": "Open the PlayStation Store."},
            )
        )
        sms = await tasleem("notify", "preview", "--store-id", "gulf", "--code", "AB-1", *read)
        assert sms.exit_code == 0, sms.output
        assert "sms (en), its own settings" in sms.stdout  # the store's language by default
        assert "Gulf Games -> AB-1 for PlayStation 50 SAR" in sms.stdout
        whatsapp = await tasleem(
            "notify", "preview", "--store-id", "gulf", "--channel", "whatsapp", "--json", *read
        )
        answer = json.loads(whatsapp.stdout)
        assert (answer["template"], answer["store_known"]) == ("gulf_codes", True)
        assert answer["params"][0] == "Gulf Games"

        # any query: a JSON 4xx, never a 5xx
        preview = f"{notifier.url}/admin/preview"
        for query in (
            {"channel": "pigeon"},
            {"locale": "xx" * 40},
            {"store_id": "s" * 300},
            {"code": "\u202eevil"},
            {"code": ""},
            {"product": "p" * 300},
            [("code", f"C-{i}") for i in range(11)],
        ):
            status, body = await http("GET", preview, NOTIFIER_READER, params=query)
            assert status == 400 and body["error"] == "bad_query", (query, body)


async def test_notify_resend_sends_the_local_stacks_operate_token_and_deliveries_show_it(
    cipher, service_databases, tmp_path
):
    async with running_notifier(cipher, service_databases["notifier"]) as notifier:
        event = allocation(cipher, "cli1", "CLI-CODE-1", phone="+966551230009")
        await deliver([event], notifier.pool, notifier.delivery)
        home = local_stack(tmp_path, notifier.url)

        sent = await tasleem(
            "notify", "resend", event.order_key, "--phone", "+966500000001",
            "--reason", "ticket 42", "--home", str(home),
        )  # fmt: skip
        assert sent.exit_code == 0, sent.output
        assert "resent to +966500000001" in sent.stdout and "part 1: accepted" in sent.stdout
        assert "CLI-CODE-1" not in sent.output
        assert len(await notifier.inbox("+966500000001")) == 1

        # the read token of the local stack shows the audit: caller amal, the operate token's
        history = await tasleem(
            "notify", "deliveries", event.order_key, "--home", str(home), "--json"
        )
        (resend,) = json.loads(history.stdout)["resends"]
        assert (resend["caller"], resend["reason"], resend["phone"]) == (
            "amal", "ticket 42", "+966500000001"
        )  # fmt: skip
        table = await tasleem("notify", "deliveries", event.order_key, "--home", str(home))
        assert table.exit_code == 0 and "amal" in table.stdout and "ticket 42" in table.stdout

        read_only = await tasleem(
            "notify", "resend", event.order_key, "--url", notifier.url, "--token", NOTIFIER_READER
        )
        assert read_only.exit_code == 2 and "operate token of the notifier" in read_only.output
        # a URL named by hand never gets the local stack's token
        elsewhere = await tasleem(
            "notify", "resend", event.order_key, "--url", notifier.url, "--home", str(home)
        )
        assert elsewhere.exit_code == 2 and "no admin token for the notifier" in elsewhere.output
        unknown = await tasleem("notify", "deliveries", "standard:s1:none", "--home", str(home))
        assert unknown.exit_code == 2 and "no delivery for order" in unknown.output


def local_stack(tmp_path: Path, notifier_url: str) -> Path:
    """A `tasleem up` folder as the commands read it: stack.json and the scoped token files."""
    home = tmp_path / "stack"
    (home / "admin").mkdir(parents=True)
    (home / "stack.json").write_text(json.dumps({"notifier": notifier_url}))
    (home / "admin" / "notifier-operate.token").write_text(NOTIFIER_OPERATOR + "\n")
    (home / "admin" / "notifier-read.token").write_text(NOTIFIER_READER + "\n")
    return home
