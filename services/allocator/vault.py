"""The code vault's SQL: import codes, queue order units, and fill waiting units with codes.

Allocation is one idea used everywhere: units wait in arrival order per sku, and `fill` pairs
the oldest waiting units with the earliest-expiring available codes, both claimed with
`FOR UPDATE SKIP LOCKED` so concurrent allocators never wait on each other. The unique
constraints on `codes.fingerprint` and `units.code_id` are the last word on "never twice".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from services.allocator import importing
from shared.codecrypt import CodeCipher, SealedCode
from shared.db import DbConn


@dataclass
class ImportReport:
    """What an import did, by line number; never the codes themselves."""

    added: int = 0
    duplicate_lines: list[int] = field(default_factory=list)
    invalid: list[importing.Problem] = field(default_factory=list)

    @property
    def duplicates(self) -> int:
        return len(self.duplicate_lines)

    def as_dict(self) -> dict[str, object]:
        return {
            "added": self.added,
            "duplicates": self.duplicates,
            "duplicate_lines": self.duplicate_lines,
            "invalid": [{"line": p.line, "reason": p.reason} for p in self.invalid],
        }


@dataclass(frozen=True)
class NewCode:
    sealed: str
    fingerprint: bytes
    expires_at: datetime | None = None
    cost: Decimal | None = None
    batch: str = ""


async def store_codes(
    conn: DbConn, sku: str, codes: Sequence[NewCode], *, source: str
) -> set[bytes]:
    """Insert sealed codes, skipping any whose fingerprint is already in the vault; returns
    the fingerprints that were new."""
    if not codes:
        return set()
    rows = await conn.fetch(
        """
        INSERT INTO codes (sku, sealed, fingerprint, source, expires_at, cost, batch)
        SELECT $1, s, f, $2, e, c, b
        FROM unnest($3::text[], $4::bytea[], $5::timestamptz[], $6::numeric[], $7::text[])
            AS t(s, f, e, c, b)
        ON CONFLICT (fingerprint) DO NOTHING
        RETURNING fingerprint
        """,
        sku,
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
            INSERT INTO sku_totals (sku, received) VALUES ($1, $2)
            ON CONFLICT (sku) DO UPDATE SET received = sku_totals.received + excluded.received
            """,
            sku,
            len(rows),
        )
    return {r["fingerprint"] for r in rows}


async def code_pattern(conn: DbConn, sku: str) -> str | None:
    pattern: str | None = await conn.fetchval(
        "SELECT code_pattern FROM sku_rules WHERE sku = $1", sku
    )
    return pattern


async def import_stock(
    conn: DbConn,
    cipher: CodeCipher,
    sku: str,
    parsed: importing.ParsedFile,
    *,
    source: str,
    expires_at: datetime | None = None,
    cost: Decimal | None = None,
    batch: str = "",
) -> ImportReport:
    """Seal and store a parsed stock file, deduplicated in the file and against the vault.

    `expires_at`, `cost` and `batch` apply to lines that do not say otherwise."""
    report = ImportReport(invalid=list(parsed.problems))
    line_of: dict[bytes, int] = {}
    batch_codes: list[NewCode] = []
    for item in parsed.lines:
        fingerprint = cipher.fingerprint(item.code)
        if fingerprint in line_of:
            report.duplicate_lines.append(item.line)
            continue
        line_of[fingerprint] = item.line
        batch_codes.append(
            NewCode(
                cipher.seal(item.code, sku).to_text(),
                fingerprint,
                item.expires_at or expires_at,
                item.cost if item.cost is not None else cost,
                item.batch or batch,
            )
        )
    added = await store_codes(conn, sku, batch_codes, source=source)
    report.added = len(added)
    report.duplicate_lines.extend(
        line_of[c.fingerprint] for c in batch_codes if c.fingerprint not in added
    )
    report.duplicate_lines.sort()
    return report


async def import_plain_codes(
    conn: DbConn,
    cipher: CodeCipher,
    sku: str,
    codes: Sequence[str],
    *,
    source: str,
    expires_at: datetime | None = None,
) -> ImportReport:
    """Import a list of codes, one per entry (the simplest stock file)."""
    parsed = importing.parse("\n".join(codes), "lines")
    return await import_stock(conn, cipher, sku, parsed, source=source, expires_at=expires_at)


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
    line_no: int
    unit_no: int
    sku: str
    code: Claimed | None = None
    part: int | None = None


async def claim_codes(conn: DbConn, demand: Mapping[str, int]) -> dict[str, list[Claimed]]:
    """Claim up to `demand[sku]` available codes per sku, earliest-expiring first, in one
    statement. SKIP LOCKED: codes another allocator is claiming are left to it, not waited on.
    The claimed ids are gathered in an ARRAY first: the planner cannot see the per-sku limits
    and would otherwise join the whole table."""
    wanted = {sku: n for sku, n in demand.items() if n > 0}
    if not wanted:
        return {}
    rows = await conn.fetch(
        """
        UPDATE codes SET status = 'allocated'
        WHERE code_id = ANY(ARRAY(
            SELECT c.code_id FROM unnest($1::text[], $2::int[]) AS d(sku, n)
            CROSS JOIN LATERAL (
                SELECT code_id FROM codes
                WHERE codes.sku = d.sku AND status = 'available'
                  AND (expires_at IS NULL OR expires_at > now())
                ORDER BY expires_at ASC NULLS LAST, code_id
                LIMIT d.n
                FOR UPDATE SKIP LOCKED) AS c))
        RETURNING code_id, sku, sealed, expires_at
        """,
        list(wanted),
        list(wanted.values()),
    )
    claimed: dict[str, list[Claimed]] = {}
    for r in sorted(rows, key=lambda r: (r["expires_at"] is None, r["expires_at"], r["code_id"])):
        claimed.setdefault(r["sku"], []).append(
            Claimed(r["code_id"], r["sku"], r["sealed"], r["expires_at"])
        )
    return claimed


async def skus_with_backorders(conn: DbConn, skus: Iterable[str]) -> set[str]:
    """Skus that already have units waiting: new units must queue behind them (FIFO)."""
    rows = await conn.fetch(
        """
        SELECT s.sku FROM unnest($1::text[]) AS s(sku)
        WHERE EXISTS (SELECT 1 FROM units u WHERE u.sku = s.sku AND u.code_id IS NULL)
        """,
        list(skus),
    )
    return {r["sku"] for r in rows}


async def insert_units(conn: DbConn, units: Sequence[UnitRow]) -> None:
    """New units, with their codes where they got one, in arrival order (their `seq`).

    By COPY, which takes less than half the time of INSERT … SELECT unnest; units are only
    ever written for orders inserted in the same transaction, so none can exist already."""
    if not units:
        return
    await conn.copy_records_to_table(
        "units",
        columns=("order_key", "line_no", "unit_no", "sku", "code_id", "part"),
        records=[
            (u.order_key, u.line_no, u.unit_no, u.sku, u.code.code_id if u.code else None, u.part)
            for u in units
        ],
    )


async def fill_waiting(conn: DbConn, skus: Iterable[str], limit: int = 10_000) -> list[UnitRow]:
    """Pair the oldest waiting units of `skus` with available codes (backorders, FIFO).

    Returns the pairs; the caller numbers their parts and `assign`s them."""
    waiting = await conn.fetch(
        """
        SELECT d.sku, w.order_key, w.line_no, w.unit_no
        FROM unnest($1::text[]) AS d(sku)
        CROSS JOIN LATERAL (
            SELECT order_key, line_no, unit_no, seq FROM units
            WHERE units.sku = d.sku AND code_id IS NULL
            ORDER BY seq LIMIT $2
            FOR UPDATE SKIP LOCKED) AS w
        ORDER BY w.seq
        """,
        sorted(skus),
        limit,
    )
    if not waiting:
        return []
    codes = await claim_codes(conn, Counter(w["sku"] for w in waiting))
    pending = {sku: iter(found) for sku, found in codes.items()}
    pairs = []
    for w in waiting:
        code = next(pending.get(w["sku"], iter(())), None)
        if code is not None:
            pairs.append(UnitRow(w["order_key"], w["line_no"], w["unit_no"], w["sku"], code))
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
    sku: str
    available: int
    backordered: int
    received_total: int


async def stock_levels(conn: DbConn, skus: Sequence[str]) -> list[StockLevel]:
    rows = await conn.fetch(
        """
        SELECT s.sku,
          (SELECT count(*) FROM codes c WHERE c.sku = s.sku AND c.status = 'available'
             AND (c.expires_at IS NULL OR c.expires_at > now())) AS available,
          (SELECT count(*) FROM units u WHERE u.sku = s.sku AND u.code_id IS NULL) AS backordered,
          coalesce((SELECT received FROM sku_totals t WHERE t.sku = s.sku), 0) AS received
        FROM unnest($1::text[]) AS s(sku)
        """,
        list(skus),
    )
    return [StockLevel(r["sku"], r["available"], r["backordered"], r["received"]) for r in rows]
