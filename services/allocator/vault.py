"""The code vault's SQL: import codes, queue order units, and fill waiting units with codes.

Allocation is one idea used everywhere: units wait in arrival order per stock (an account's
sku), and `fill` pairs the oldest waiting units with the earliest-expiring available codes of
the same account and sku, both claimed with `FOR UPDATE SKIP LOCKED` so concurrent allocators
never wait on each other. Every statement that reads codes or units names the account: no
order takes another account's code. The unique constraints on `codes.fingerprint` and
`units.code_id` are the last word on "never twice".
"""

from __future__ import annotations

import asyncio
import bisect
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from services.allocator import importing
from shared.codecrypt import CodeCipher, SealedCode
from shared.db import DbConn
from shared.events import Stock

# Accounts beginning with ':' are never a store's: ':legacy' holds codes stored before
# accounts whose owner could not be proven (migration 005). No order draws from them and no
# level is published for them.
LEGACY_ACCOUNT = ":legacy"


REPORT_LINES = 100  # line numbers an import report lists of each kind; the rest are counted
IMPORT_BATCH = 1000  # codes sealed and inserted at a time: an import's memory is one batch


class FirstLines:
    """The smallest `REPORT_LINES` line numbers seen, and how many were seen in all."""

    def __init__(self) -> None:
        self.count = 0
        self._kept: list[tuple[int, str]] = []

    def add(self, line: int, reason: str = "") -> None:
        self.count += 1
        if len(self._kept) < REPORT_LINES or line < self._kept[-1][0]:
            bisect.insort(self._kept, (line, reason))
            del self._kept[REPORT_LINES:]

    @property
    def truncated(self) -> bool:
        return self.count > len(self._kept)

    def lines(self) -> list[int]:
        return [line for line, _ in self._kept]

    def problems(self) -> list[importing.Problem]:
        return [importing.Problem(line, reason) for line, reason in self._kept]


@dataclass
class ImportReport:
    """What an import did, by line number; never the codes themselves. Each list holds the
    first `REPORT_LINES` lines and the counts say how many there were in all, so the report
    of a huge bad file stays small."""

    added: int = 0
    duplicated: FirstLines = field(default_factory=FirstLines)
    invalidated: FirstLines = field(default_factory=FirstLines)

    @property
    def duplicates(self) -> int:
        return self.duplicated.count

    @property
    def duplicate_lines(self) -> list[int]:
        return self.duplicated.lines()

    @property
    def invalid(self) -> list[importing.Problem]:
        return self.invalidated.problems()

    def as_dict(self) -> dict[str, object]:
        return {
            "added": self.added,
            "duplicates": self.duplicates,
            "duplicate_lines": self.duplicate_lines,
            "invalid_count": self.invalidated.count,
            "invalid": [{"line": p.line, "reason": p.reason} for p in self.invalid],
            "truncated": self.duplicated.truncated or self.invalidated.truncated,
        }


@dataclass(frozen=True)
class NewCode:
    sealed: str
    fingerprint: bytes
    expires_at: datetime | None = None
    cost: Decimal | None = None
    batch: str = ""


async def store_codes(
    conn: DbConn, stock: Stock, codes: Sequence[NewCode], *, source: str
) -> set[bytes]:
    """Insert sealed codes into an account's sku, skipping any whose fingerprint is already
    in the vault (any account's: a code is money once); returns the fingerprints that were new."""
    if not codes:
        return set()
    rows = await conn.fetch(
        """
        INSERT INTO codes (account, sku, sealed, fingerprint, source, expires_at, cost, batch)
        SELECT $1, $2, s, f, $3, e, c, b
        FROM unnest($4::text[], $5::bytea[], $6::timestamptz[], $7::numeric[], $8::text[])
            AS t(s, f, e, c, b)
        ON CONFLICT (fingerprint) DO NOTHING
        RETURNING fingerprint
        """,
        stock.account,
        stock.sku,
        source,
        [c.sealed for c in codes],
        [c.fingerprint for c in codes],
        [c.expires_at for c in codes],
        [c.cost for c in codes],
        [c.batch for c in codes],
    )
    if rows:
        await conn.execute(
            """
            INSERT INTO sku_totals (account, sku, received) VALUES ($1, $2, $3)
            ON CONFLICT (account, sku)
                DO UPDATE SET received = sku_totals.received + excluded.received
            """,
            stock.account,
            stock.sku,
            len(rows),
        )
    return {r["fingerprint"] for r in rows}


async def code_pattern(conn: DbConn, stock: Stock) -> str | None:
    pattern: str | None = await conn.fetchval(
        "SELECT code_pattern FROM sku_rules WHERE account = $1 AND sku = $2", *stock
    )
    return pattern


async def set_code_pattern(conn: DbConn, stock: Stock, pattern: str) -> None:
    await conn.execute(
        "INSERT INTO sku_rules (account, sku, code_pattern) VALUES ($1, $2, $3) "
        "ON CONFLICT (account, sku) DO UPDATE SET code_pattern = excluded.code_pattern",
        *stock,
        pattern,
    )


async def import_stock(
    conn: DbConn,
    cipher: CodeCipher,
    stock: Stock,
    items: Iterable[importing.Item],
    *,
    source: str,
    expires_at: datetime | None = None,
    cost: Decimal | None = None,
    batch: str = "",
) -> ImportReport:
    """Seal and store a stock file's codes into an account's sku, batch by batch, deduplicated
    in the file and against the vault (an earlier batch of the file is in the vault by then).

    `items` is read as it comes (`importing.read`); `expires_at`, `cost` and `batch` apply to
    lines that do not say otherwise. A code already expired is refused with its line, as a
    duplicate is. Run it in a transaction: the file lands whole or not."""
    report = ImportReport()
    pending: dict[bytes, tuple[int, NewCode]] = {}
    now = datetime.now(UTC)

    async def flush() -> None:
        added = await store_codes(conn, stock, [c for _, c in pending.values()], source=source)
        report.added += len(added)
        for fingerprint, (line, _) in pending.items():
            if fingerprint not in added:
                report.duplicated.add(line)
        pending.clear()

    for read, item in enumerate(items, start=1):
        if read % IMPORT_BATCH == 0:
            await asyncio.sleep(0)  # a file of bad lines never awaits: let the consumer run
        if isinstance(item, importing.Problem):
            report.invalidated.add(item.line, item.reason)
            continue
        expires = item.expires_at or expires_at
        if expires is not None and expires <= now:
            # a code past its expiry can never be handed out: refused, not stored unseen
            report.invalidated.add(
                item.line, f"already expired (valid through {_through(expires)})"
            )
            continue
        fingerprint = cipher.fingerprint(item.code)
        if fingerprint in pending:
            report.duplicated.add(item.line)
            continue
        pending[fingerprint] = (
            item.line,
            NewCode(
                cipher.seal(item.code, stock.sku).to_text(),
                fingerprint,
                expires,
                item.cost if item.cost is not None else cost,
                item.batch or batch,
            ),
        )
        if len(pending) >= IMPORT_BATCH:
            await flush()
    await flush()
    return report


def _through(expires: datetime) -> str:
    """The last day a code is valid on (UTC): a file's date 2026-12-31 is stored as the
    moment after that day, and is shown again as that day."""
    return (expires - timedelta(microseconds=1)).astimezone(UTC).date().isoformat()


async def import_plain_codes(
    conn: DbConn,
    cipher: CodeCipher,
    stock: Stock,
    codes: Iterable[str],
    *,
    source: str,
    expires_at: datetime | None = None,
) -> ImportReport:
    """Import a list of codes, one per entry (the simplest stock file)."""
    return await import_stock(
        conn, cipher, stock, importing.from_codes(codes), source=source, expires_at=expires_at
    )


def fingerprint_sealed(cipher: CodeCipher, sku: str, sealed_codes: Sequence[str]) -> list[NewCode]:
    """Fingerprints for codes that arrive sealed (from the restocker); raises on a bad one."""
    return [
        NewCode(text, cipher.fingerprint(cipher.open(SealedCode.from_text(text), sku)))
        for text in sealed_codes
    ]


@dataclass(frozen=True)
class Claimed:
    code_id: int
    sku: str
    sealed: str
    expires_at: datetime | None


@dataclass(frozen=True)
class UnitRow:
    """A unit of an order line and the code it got (None: it waits, a backorder)."""

    order_key: str
    account: str  # whose codes it may take
    line_no: int
    unit_no: int
    sku: str
    code: Claimed | None = None
    part: int | None = None

    @property
    def stock(self) -> Stock:
        return Stock(self.account, self.sku)


async def claim_codes(conn: DbConn, demand: Mapping[Stock, int]) -> dict[Stock, list[Claimed]]:
    """Claim up to `demand[stock]` available codes of each account's sku, earliest-expiring
    first, in one statement; the account is part of every lookup (and leads the index).
    SKIP LOCKED: codes another allocator is claiming are left to it, not waited on. The
    claimed ids are gathered in an ARRAY first: the planner cannot see the per-stock limits
    and would otherwise join the whole table."""
    wanted = {stock: n for stock, n in demand.items() if n > 0}
    if not wanted:
        return {}
    rows = await conn.fetch(
        """
        UPDATE codes SET status = 'allocated'
        WHERE code_id = ANY(ARRAY(
            SELECT c.code_id FROM unnest($1::text[], $2::text[], $3::int[]) AS d(account, sku, n)
            CROSS JOIN LATERAL (
                SELECT code_id FROM codes
                WHERE codes.account = d.account AND codes.sku = d.sku AND status = 'available'
                  AND (expires_at IS NULL OR expires_at > now())
                ORDER BY expires_at ASC NULLS LAST, code_id
                LIMIT d.n
                FOR UPDATE SKIP LOCKED) AS c))
        RETURNING code_id, account, sku, sealed, expires_at
        """,
        [stock.account for stock in wanted],
        [stock.sku for stock in wanted],
        list(wanted.values()),
    )
    claimed: dict[Stock, list[Claimed]] = {}
    for r in sorted(rows, key=lambda r: (r["expires_at"] is None, r["expires_at"], r["code_id"])):
        claimed.setdefault(Stock(r["account"], r["sku"]), []).append(
            Claimed(r["code_id"], r["sku"], r["sealed"], r["expires_at"])
        )
    return claimed


async def stocks_with_backorders(conn: DbConn, stocks: Iterable[Stock]) -> set[Stock]:
    """Stocks that already have units waiting: new units must queue behind them (FIFO)."""
    stocks = list(stocks)
    rows = await conn.fetch(
        """
        SELECT s.account, s.sku FROM unnest($1::text[], $2::text[]) AS s(account, sku)
        WHERE EXISTS (SELECT 1 FROM units u
                      WHERE u.account = s.account AND u.sku = s.sku AND u.code_id IS NULL)
        """,
        [s.account for s in stocks],
        [s.sku for s in stocks],
    )
    return {Stock(r["account"], r["sku"]) for r in rows}


async def insert_units(conn: DbConn, units: Sequence[UnitRow]) -> None:
    """New units, with their codes where they got one, in arrival order (their `seq`).

    By COPY, which takes less than half the time of INSERT … SELECT unnest; units are only
    ever written for orders inserted in the same transaction, so none can exist already."""
    if not units:
        return
    await conn.copy_records_to_table(
        "units",
        columns=("order_key", "account", "line_no", "unit_no", "sku", "code_id", "part"),
        records=[
            (
                u.order_key,
                u.account,
                u.line_no,
                u.unit_no,
                u.sku,
                u.code.code_id if u.code else None,
                u.part,
            )
            for u in units
        ],
    )


async def fill_waiting(conn: DbConn, stocks: Iterable[Stock], limit: int = 10_000) -> list[UnitRow]:
    """Pair the oldest waiting units of `stocks` with available codes of the same account
    and sku (backorders, FIFO).

    Returns the pairs; the caller numbers their parts and `assign`s them."""
    stocks = sorted(stocks)
    waiting = await conn.fetch(
        """
        SELECT d.account, d.sku, w.order_key, w.line_no, w.unit_no
        FROM unnest($1::text[], $2::text[]) AS d(account, sku)
        CROSS JOIN LATERAL (
            SELECT order_key, line_no, unit_no, seq FROM units
            WHERE units.account = d.account AND units.sku = d.sku AND code_id IS NULL
            ORDER BY seq LIMIT $3
            FOR UPDATE SKIP LOCKED) AS w
        ORDER BY w.seq
        """,
        [s.account for s in stocks],
        [s.sku for s in stocks],
        limit,
    )
    if not waiting:
        return []
    codes = await claim_codes(conn, Counter(Stock(w["account"], w["sku"]) for w in waiting))
    pending = {stock: iter(found) for stock, found in codes.items()}
    pairs = []
    for w in waiting:
        code = next(pending.get(Stock(w["account"], w["sku"]), iter(())), None)
        if code is not None:
            pairs.append(
                UnitRow(w["order_key"], w["account"], w["line_no"], w["unit_no"], w["sku"], code)
            )
    return pairs


async def assign(conn: DbConn, units: Sequence[UnitRow]) -> None:
    """Record the codes (and the part that carries them) of units that were waiting."""
    await conn.execute(
        """
        UPDATE units SET code_id = t.c, part = t.p
        FROM unnest($1::text[], $2::int[], $3::int[], $4::bigint[], $5::int[]) AS t(k, l, u, c, p)
        WHERE units.order_key = t.k AND units.line_no = t.l AND units.unit_no = t.u
        """,
        [u.order_key for u in units],
        [u.line_no for u in units],
        [u.unit_no for u in units],
        [u.code.code_id for u in units if u.code],
        [u.part for u in units],
    )


@dataclass(frozen=True)
class StockLevel:
    stock: Stock
    available: int
    backordered: int
    received_total: int


async def stock_levels(conn: DbConn, stocks: Iterable[Stock]) -> list[StockLevel]:
    stocks = sorted(stocks)
    rows = await conn.fetch(
        """
        SELECT s.account, s.sku,
          (SELECT count(*) FROM codes c
           WHERE c.account = s.account AND c.sku = s.sku AND c.status = 'available'
             AND (c.expires_at IS NULL OR c.expires_at > now())) AS available,
          (SELECT count(*) FROM units u
           WHERE u.account = s.account AND u.sku = s.sku AND u.code_id IS NULL) AS backordered,
          coalesce((SELECT received FROM sku_totals t
                    WHERE t.account = s.account AND t.sku = s.sku), 0) AS received
        FROM unnest($1::text[], $2::text[]) AS s(account, sku)
        """,
        [s.account for s in stocks],
        [s.sku for s in stocks],
    )
    return [
        StockLevel(Stock(r["account"], r["sku"]), r["available"], r["backordered"], r["received"])
        for r in rows
    ]


async def move_stock(conn: DbConn, stock: Stock, to_account: str) -> int:
    """Give an account's available codes of a sku to another account (the owner of codes
    held in ':legacy'); returns how many moved. Allocated and revoked codes stay put."""
    moved: int = await conn.fetchval(
        """
        WITH m AS (
            UPDATE codes SET account = $3
            WHERE account = $1 AND sku = $2 AND status = 'available' RETURNING 1)
        SELECT count(*) FROM m
        """,
        *stock,
        to_account,
    )
    if moved:
        await conn.execute(
            """
            INSERT INTO sku_totals (account, sku, received) VALUES ($1, $2, $3)
            ON CONFLICT (account, sku)
                DO UPDATE SET received = sku_totals.received + excluded.received
            """,
            to_account,
            stock.sku,
            moved,
        )
    return moved
