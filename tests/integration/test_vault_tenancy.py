"""Tenancy in the vault, on a real PostgreSQL: an order takes codes of its own account only,
also when allocators race; purchases land in the account they were bought for; existing
codes are given an owner by migration 005; a cancellation only withdraws its own account's
order; a key rotation re-seals every code; one huge order is refused, not allocated."""

import asyncio
import base64
import os
import shutil
from datetime import UTC, datetime

import asyncpg
import pytest
from pydantic import SecretStr

from services.allocator import handlers, rekey, vault
from services.allocator.main import SQL, paid_orders
from services.allocator.settings import AllocatorSettings
from shared.codecrypt import CodeCipher, SealedCode
from shared.db import connect_and_migrate, migrate
from shared.events import (
    CodeAllocated,
    CodesPurchased,
    Customer,
    OrderCancelled,
    OrderLine,
    OrderPaid,
    Stock,
    event_id_for,
)
from shared.kafka import PermanentError
from shared.settings import VaultKeySettings

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool(database: str):
    pool = await connect_and_migrate(database, "allocator", SQL, max_size=12)
    yield pool
    await pool.close()


def paid(store: str, order_id: str, *lines: tuple[str, int], account: str = "") -> OrderPaid:
    key = f"standard:{store}:{order_id}"
    now = datetime.now(UTC)
    return OrderPaid(
        event_id=event_id_for("order.paid", key),
        order_key=key,
        platform="standard",
        store_id=store,
        account=account,
        order_id=order_id,
        lines=[OrderLine(sku=sku, quantity=q) for sku, q in lines],
        customer=Customer(phone="+966500000001"),
        paid_at=now,
        received_at=now,
    )


async def stock_up(pool, cipher, account: str, sku: str, codes: list[str]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await vault.import_plain_codes(conn, cipher, Stock(account, sku), codes, source="test")
        await handlers.distribute(conn, [Stock(account, sku)])


async def allocate(pool, batch):
    async with pool.acquire() as conn, conn.transaction():
        return await handlers.allocate(batch, conn)


def opened(cipher, applied) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for row in applied.rows:
        for m in row.messages:
            if m.topic == CodeAllocated.topic:
                event = CodeAllocated.model_validate_json(m.payload)
                out.setdefault(event.order_key, []).extend(
                    cipher.open(SealedCode.from_text(c.sealed), c.sku) for c in event.codes
                )
    return out


CROSSED = """
SELECT count(*) FROM units u JOIN codes c ON c.code_id = u.code_id
JOIN orders o ON o.order_key = u.order_key
WHERE c.account <> u.account OR u.account <> o.account
"""


async def test_an_order_never_takes_another_accounts_code(pool, cipher):
    await stock_up(pool, cipher, "shop-a", "PSN", [f"A-{i}" for i in range(5)])
    await stock_up(pool, cipher, "shop-b", "PSN", ["B-0"])
    applied = await allocate(pool, [paid("shop-b", "1", ("PSN", 3))])
    assert opened(cipher, applied) == {"standard:shop-b:1": ["B-0"]}  # and 2 wait
    async with pool.acquire() as conn:
        a, b = await vault.stock_levels(conn, [Stock("shop-a", "PSN"), Stock("shop-b", "PSN")])
    assert (a.available, a.backordered) == (5, 0)  # shop-a's codes untouched
    assert (b.available, b.backordered) == (0, 2)

    # shop-a's new stock does not fill shop-b's backorder; a purchase for shop-b does
    await stock_up(pool, cipher, "shop-a", "PSN", ["A-5"])
    assert await pool.fetchval("SELECT count(*) FROM units WHERE code_id IS NULL") == 2
    purchase = CodesPurchased(
        event_id="p-b",
        account="shop-b",
        sku="PSN",
        supplier="reloadly",
        reference="r-b",
        codes=[cipher.seal(c, "PSN").to_text() for c in ("B-1", "B-2")],
        purchased_at=datetime.now(UTC),
    )
    async with pool.acquire() as conn, conn.transaction():
        applied = await handlers.receive_codes([purchase], conn, cipher)
    assert sorted(opened(cipher, applied)["standard:shop-b:1"]) == ["B-1", "B-2"]
    assert await pool.fetchval(CROSSED) == 0
    # an account given explicitly wins over the store id
    applied = await allocate(pool, [paid("shop-c", "1", ("PSN", 1), account="shop-a")])
    assert opened(cipher, applied)["standard:shop-c:1"][0].startswith("A-")


async def test_racing_allocators_of_two_accounts_never_cross(pool, cipher):
    for account in ("shop-a", "shop-b"):
        prefix = account[-1].upper()
        await stock_up(pool, cipher, account, "PSN", [f"{prefix}-{i}" for i in range(150)])
    orders = [
        paid(store, str(n), ("PSN", 1 + n % 3))
        for n in range(120)
        for store in ("shop-a", "shop-b")
    ]
    batches = [orders[i::6] for i in range(6)]  # six allocators, interleaved accounts
    results = await asyncio.gather(*(allocate(pool, b) for b in batches))
    codes = {}
    for applied in results:
        codes.update(opened(cipher, applied))
    for key, got in codes.items():
        store = key.split(":")[1]
        assert all(c.startswith(store[-1].upper() + "-") for c in got), key
    every = [c for got in codes.values() for c in got]
    assert len(every) == len(set(every)) == 300  # both vaults emptied, never a code twice
    assert await pool.fetchval(CROSSED) == 0


async def test_the_claim_reads_the_accounts_index_only(pool, cipher):
    await stock_up(pool, cipher, "shop-a", "PSN", [f"A-{i}" for i in range(50)])
    async with pool.acquire() as conn:
        await conn.execute("SET enable_seqscan = off")
        plan = "\n".join(
            r[0]
            for r in await conn.fetch(
                "EXPLAIN SELECT code_id FROM codes WHERE account = 'shop-a' AND sku = 'PSN' "
                "AND status = 'available' ORDER BY expires_at ASC NULLS LAST, code_id LIMIT 5"
            )
        )
    index_cond = [line for line in plan.splitlines() if "Index Cond" in line]
    assert "codes_claimable" in plan and "Sort" not in plan
    assert index_cond and "account" in index_cond[0]  # the account leads the index


async def test_a_cancellation_withdraws_only_its_own_accounts_order(pool, cipher):
    await stock_up(pool, cipher, "shop-a", "PSN", ["A-0", "A-1"])
    await allocate(pool, [paid("shop-a", "1", ("PSN", 1))])
    forged = OrderCancelled(
        event_id="c-1",
        order_key="standard:shop-a:1",
        platform="standard",
        store_id="shop-x",  # another store naming shop-a's order
        order_id="1",
        cancelled_at=datetime.now(UTC),
    )
    async with pool.acquire() as conn, conn.transaction():
        applied = await handlers.cancel([forged], conn)
    assert applied.rows == []
    assert await pool.fetchval("SELECT count(*) FROM codes WHERE status = 'revoked'") == 0
    assert await pool.fetchval("SELECT cancelled_at FROM orders") is None


async def test_migration_005_gives_existing_codes_their_only_store_or_holds_them(
    database, cipher, tmp_path
):
    before = tmp_path / "sql"
    before.mkdir()
    for path in sorted(SQL.glob("00[1-4]_*.sql")):
        shutil.copy(path, before / path.name)
    conn = await asyncpg.connect(database)
    try:
        await migrate(conn, "allocator", before)
        await conn.execute("SET search_path TO allocator")
        for n, sku in enumerate(["ONE", "ONE", "SHARED", "NONE"]):
            await conn.execute(
                "INSERT INTO codes (sku, sealed, fingerprint) VALUES ($1, 'k1:x', $2)",
                sku,
                bytes([n]) * 32,
            )
        for key, store, sku in [
            ("k1", "s1", "ONE"),
            ("k2", "s1", "SHARED"),
            ("k3", "s2", "SHARED"),
        ]:
            await conn.execute(
                "INSERT INTO orders (order_key, store_id, order_id, customer, lines, paid_at) "
                "VALUES ($1, $2, '1', '{}', '[]', now())",
                key,
                store,
            )
            await conn.execute(
                "INSERT INTO units (order_key, line_no, unit_no, sku) VALUES ($1, 0, 0, $2)",
                key,
                sku,
            )
        await conn.execute("INSERT INTO sku_totals (sku, received) VALUES ('ONE', 2)")
        assert await migrate(conn, "allocator", SQL) == [n for n, _ in _numbers() if n >= 5]
        owners = dict(await conn.fetch("SELECT DISTINCT sku, account FROM codes"))
        assert owners == {"ONE": "s1", "SHARED": ":legacy", "NONE": ":legacy"}
        units = dict(await conn.fetch("SELECT order_key, account FROM units"))
        assert units == {"k1": "s1", "k2": "s1", "k3": "s2"}
        assert await conn.fetchval("SELECT account FROM sku_totals WHERE sku = 'ONE'") == "s1"
        # ':legacy' stock serves no store until it is handed over
        moved = await vault.move_stock(conn, Stock(":legacy", "SHARED"), "s2")
        assert moved == 1
        assert await conn.fetchval("SELECT account FROM codes WHERE sku = 'SHARED'") == "s2"
    finally:
        await conn.close()


def _numbers():
    from shared.db import migration_files

    return migration_files(SQL)


def ciphers(keys: str, env: dict[str, str]) -> CodeCipher:
    settings = VaultKeySettings(
        vault_keys=SecretStr(keys),
        vault_fingerprint_key=SecretStr(env["TASLEEM_VAULT_FINGERPRINT_KEY"]),
    )
    return CodeCipher.from_settings(settings)


async def test_rekey_reseals_old_key_codes_under_the_first_key(pool, cipher, vault_env):
    await stock_up(pool, cipher, "shop-a", "PSN", [f"OLD-{i}" for i in range(25)])
    await allocate(pool, [paid("shop-a", "1", ("PSN", 2))])  # allocated ones are re-sealed too
    new_id, new_key = "k9", "k9:" + base64.b64encode(os.urandom(32)).decode()
    rotated = ciphers(f"{new_key},{vault_env['TASLEEM_VAULT_KEYS']}", vault_env)
    await stock_up(pool, rotated, "shop-a", "PSN", ["NEW-0"])
    async with pool.acquire() as conn:
        report = await rekey.rekey(conn, rotated, batch=10)
    assert (report.rekeyed, report.batches, report.remaining_old) == (25, 3, 0)
    assert "OLD-" not in str(report.as_dict())
    sealed = await pool.fetch("SELECT sku, sealed FROM codes")
    assert {s["sealed"].split(":")[0] for s in sealed} == {new_id}
    plain = sorted(rotated.open(SealedCode.from_text(s["sealed"]), s["sku"]) for s in sealed)
    assert plain == sorted(["NEW-0", *(f"OLD-{i}" for i in range(25))])
    async with pool.acquire() as conn:
        again = await rekey.rekey(conn, rotated)
    assert (again.rekeyed, again.remaining_old) == (0, 0)  # idempotent
    # the old key can go: a cipher with the new key alone opens and allocates every code
    only_new = ciphers(new_key, vault_env)
    applied = await allocate(pool, [paid("shop-a", "2", ("PSN", 24))])
    codes = [
        only_new.open(SealedCode.from_text(c.sealed), c.sku)
        for row in applied.rows
        for m in row.messages
        for c in CodeAllocated.model_validate_json(m.payload).codes
    ]
    assert len(codes) == 24 and all(c.startswith(("OLD-", "NEW-")) for c in codes)


async def test_an_order_over_the_hard_limit_is_refused_and_the_rest_allocated(pool, cipher):
    await stock_up(pool, cipher, "shop-a", "PSN", [f"A-{i}" for i in range(10)])
    settings = AllocatorSettings(max_units_per_order=150, max_units_per_transaction=4)

    class Levels:
        def record(self, *args):
            pass

    class Relay:
        async def submit(self, rows):
            pass

    handle = paid_orders(pool, Relay(), Levels(), settings)  # type: ignore[arg-type]
    huge = paid("shop-a", "huge", *((f"SKU-{n}", 100) for n in range(2)))
    small = [paid("shop-a", str(n), ("PSN", 2)) for n in range(4)]
    with pytest.raises(PermanentError, match="200 units, over the allocator's limit of 150"):
        await handle([small[0], huge, *small[1:]])
    assert await pool.fetchval("SELECT count(*) FROM orders") == 4
    assert await pool.fetchval("SELECT count(*) FROM units WHERE sku LIKE 'SKU-%'") == 0
    with pytest.raises(PermanentError):
        await handle([huge])  # alone, as the consumer loop retries it before dead-lettering
    assert handlers.ORDERS_REFUSED.labels("too_many_units")._value.get() >= 1
    # a batch over the per-transaction bound is allocated run by run, each alone
    assert [len(run) for run in handlers.chunks(small, 4)] == [2, 2]
