"""Webhook secrets and platform credentials sealed at rest in `ingest.stores` (issue 16), read
back with SQL: never plain after a gateway starts, old plain rows sealed at start, a key rotation
keeps old stores verifying, and a sealed secret moved to another store's row does not verify."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import uuid

import asyncpg
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from deploy.cli import app as tasleem
from deploy.sandbox import platforms as wire
from services.ingest.main import SQL
from shared.codecrypt import SecretSealer
from shared.db import migrate
from tests.integration.gateway_support import (
    ADMIN_TOKEN,
    SANDBOX_STORES,
    VAULT_KEYS,
    ZID_API_CREDENTIAL,
    deliver,
    running_gateway,
    sale,
    sandbox_store,
)

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PLAIN = [s.secret for s in SANDBOX_STORES] + [ZID_API_CREDENTIAL, *ZID_API_CREDENTIAL.split(":")]


async def table_text(database: str, *store_ids: str) -> str:
    """Every value of every stores row (or of these stores'), as PostgreSQL holds it."""
    conn = await asyncpg.connect(database)
    try:
        rows = await conn.fetch(
            "SELECT to_jsonb(s)::text AS row FROM ingest.stores s"
            " WHERE cardinality($1::text[]) = 0 OR store_id = ANY($1) ORDER BY store_id",
            list(store_ids),
        )
        return "\n".join(r["row"] for r in rows)
    finally:
        await conn.close()


async def write_legacy_row(database: str, store_id: str, secret: str) -> None:
    """A store as a gateway before sealing wrote it: the secret in plain text."""
    conn = await asyncpg.connect(database)
    try:
        await migrate(conn, "ingest", SQL)
        await conn.execute(
            "INSERT INTO ingest.stores (store_id, platform, name, secrets, account)"
            " VALUES ($1, 'shopify', 'Legacy', $2, $1)",
            store_id,
            [secret],
        )
    finally:
        await conn.close()


def shopify(store_id: str, secret: str):  # type: ignore[no-untyped-def]
    return sandbox_store("shopify").model_copy(update={"id": store_id, "secret": secret})


async def paid(gateway, store) -> int:  # type: ignore[no-untyped-def]
    return (await deliver(gateway, store, wire.paid(store, sale(wire.numeric_order_id()))))[0]


async def test_old_plain_rows_are_sealed_at_start_and_nothing_is_plain_after(database, kafka):
    legacy = "shpss_legacy-" + os.urandom(6).hex()
    await write_legacy_row(database, "legacy-shop", legacy)
    assert legacy in await table_text(database)
    async with running_gateway(database, kafka, ingest_admin_token=ADMIN_TOKEN) as gateway:
        stored = await table_text(database)
        for secret in [*PLAIN, legacy]:
            assert secret not in stored
        assert await paid(gateway, shopify("legacy-shop", legacy)) == 202  # it still verifies
        for platform in ("standard", "zid"):
            assert await paid(gateway, sandbox_store(platform)) in (200, 202)

        # sealed on write: the admin API, then the CLI (a client of that API)
        added = "shpss_added-" + os.urandom(6).hex()
        reply = await gateway.put(
            "/admin/stores/added-shop",
            json={"platform": "shopify", "name": "Added", "secrets": [added]},
            headers=AUTH,
        )
        assert reply.status == 200
        cli_secret = "tasleem:cli-" + os.urandom(6).hex()
        result = await asyncio.to_thread(
            CliRunner().invoke,
            tasleem,
            ["stores", "add", "cli-zid", "--platform", "zid", "--name", "CLI", "--json"],
            env={
                "TASLEEM_INGEST_URL": str(gateway.make_url("")),
                "TASLEEM_INGEST_ADMIN_TOKEN": ADMIN_TOKEN,
                "TASLEEM_STORE_SECRET": cli_secret,
                "TASLEEM_STORE_API_CREDENTIAL": ZID_API_CREDENTIAL,
            },
        )
        assert result.exit_code == 0, result.output
        stored = await table_text(database)
        for secret in (added, cli_secret):
            assert secret not in stored and secret not in result.output
        assert await paid(gateway, shopify("added-shop", added)) == 202
        assert json.loads(result.stdout)["api_credential"].startswith("sha256:")
        ours = await table_text(database, "legacy-shop", "added-shop", "cli-zid")

    # a second start changes nothing more (the test helper's own stores are written again)
    async with running_gateway(database, kafka):
        assert await table_text(database, "legacy-shop", "added-shop", "cli-zid") == ours


async def test_a_rotated_key_still_verifies_old_stores_which_are_sealed_again(database, kafka):
    async with running_gateway(database, kafka) as gateway:
        assert await paid(gateway, sandbox_store("woocommerce")) == 202
    conn = await asyncpg.connect(database)
    try:
        before = await conn.fetchval(
            "SELECT secrets[1] FROM ingest.stores WHERE store_id = 'woocommerce-store'"
        )
    finally:
        await conn.close()
    old_id = VAULT_KEYS.partition(":")[0]
    assert before.startswith(old_id + ":")

    new_key = f"k-new-{uuid.uuid4().hex[:6]}:{base64.b64encode(os.urandom(32)).decode()}"
    rotated = f"{new_key},{VAULT_KEYS}"  # the new key first, the old kept behind it
    # the stores the tests' helper registers are sealed with the old key
    async with running_gateway(database, kafka, vault_keys=rotated) as gateway:
        assert await paid(gateway, sandbox_store("woocommerce")) == 202
        assert await paid(gateway, sandbox_store("zid")) in (200, 202)
    sealer = SecretSealer.from_keys(SecretStr(rotated))
    conn = await asyncpg.connect(database)
    try:
        rows = await conn.fetch("SELECT secrets, api_credential FROM ingest.stores")
    finally:
        await conn.close()
    sealed = [s for r in rows for s in (*r["secrets"], r["api_credential"]) if s]
    # the start sealed everything again under the new key, so the old one can be retired
    assert sealed and all(sealer.is_current(s) for s in sealed), sealed


async def test_a_sealed_secret_copied_to_another_store_s_row_does_not_verify_there(database, kafka):
    async with running_gateway(database, kafka, ingest_admin_token=ADMIN_TOKEN) as gateway:
        victim = sandbox_store("shopify")
        assert await paid(gateway, victim) == 202
        conn = await asyncpg.connect(database)
        try:
            # someone with write access to the table moves shopify-store's sealed secret to
            # woocommerce-store's row, hoping to sign woocommerce-store's orders with it
            await conn.execute(
                "UPDATE ingest.stores SET secrets = (SELECT secrets FROM ingest.stores"
                " WHERE store_id = 'shopify-store') WHERE store_id = 'woocommerce-store'"
            )
        finally:
            await conn.close()
        await asyncio.sleep(0.3)  # the store cache lives 0.2 s here
        target = sandbox_store("woocommerce").model_copy(update={"secret": victim.secret})
        status, answer = await deliver(
            gateway, target, wire.paid(target, sale(wire.numeric_order_id()))
        )
        assert status == 503 and answer["error"] == "store_misconfigured", answer
        reply = await gateway.get("/admin/stores/woocommerce-store", headers=AUTH)
        assert reply.status == 503 and (await reply.json())["error"] == "store_misconfigured"
        listed = await (await gateway.get("/admin/stores", headers=AUTH)).json()
        assert "woocommerce-store" not in {s["store_id"] for s in listed["stores"]}
        assert await paid(gateway, victim) == 202  # the store it came from is untouched
