"""The code vault's SQL: import codes, queue order units, and fill waiting units with codes.

Allocation is one idea used everywhere: units wait in arrival order per sku, and `fill` pairs
the oldest waiting units with the earliest-expiring available codes, both claimed with
`FOR UPDATE SKIP LOCKED` so concurrent allocators never wait on each other. The unique
constraints on `codes.fingerprint` and `units.code_id` are the last word on "never twice".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from shared.codecrypt import CodeCipher, SealedCode
from shared.db import DbConn


@dataclass(frozen=True)
class FilledUnit:
    order_key: str
    line_no: int
    unit_no: int
    sku: str
    code_id: int
    sealed: str
    expires_at: datetime | None


@dataclass
class ImportReport:
    added: int = 0
    duplicates: int = 0
    invalid: int = 0


async def store_codes(
    conn: DbConn,
    sku: str,
    sealed_with_fingerprint: Sequence[tuple[str, bytes]],
    *,
    source: str,
    expires_at: datetime | None = None,
) -> int:
    """Insert sealed codes, skipping any whose fingerprint is already in the vault."""
    if not sealed_with_fingerprint:
        return 0
    rows = await conn.fetch(
        """
        INSERT INTO codes (sku, sealed, fingerprint, source, expires_at)
        SELECT $1, s, f, $4, $5 FROM unnest($2::text[], $3::bytea[]) AS t(s, f)
        ON CONFLICT (fingerprint) DO NOTHING
        RETURNING code_id
        """,
        sku,
        [s for s, _ in sealed_with_fingerprint],
        [f for _, f in sealed_with_fingerprint],
        source,
        expires_at,
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
    return len(rows)


async def import_plain_codes(
    conn: DbConn,
    cipher: CodeCipher,
    sku: str,
    codes: Sequence[str],
    *,
    source: str,
    expires_at: datetime | None = None,
) -> ImportReport:
    """Seal and store plain codes (from a file), deduplicated in the batch and in the vault."""
    report = ImportReport()
    seen: set[bytes] = set()
    batch: list[tuple[str, bytes]] = []
    for code in codes:
        if not code.strip():
            report.invalid += 1
            continue
        fingerprint = cipher.fingerprint(code)
        if fingerprint in seen:
            report.duplicates += 1
            continue
        seen.add(fingerprint)
        batch.append((cipher.seal(code.strip(), sku).to_text(), fingerprint))
    report.added = await store_codes(conn, sku, batch, source=source, expires_at=expires_at)
    report.duplicates += len(batch) - report.added
    return report


def fingerprint_sealed(
    cipher: CodeCipher, sku: str, sealed_codes: Sequence[str]
) -> list[tuple[str, bytes]]:
    """Fingerprints for codes that arrive sealed (from the restocker); raises on a bad one."""
    out = []
    for text in sealed_codes:
        sealed = SealedCode.from_text(text)
        out.append((text, cipher.fingerprint(cipher.open(sealed, sku))))
    return out


async def queue_units(conn: DbConn, units: Sequence[tuple[str, int, int, str]]) -> None:
    """Append (order_key, line_no, unit_no, sku) units to the waiting line, in the given order."""
    if not units:
        return
    await conn.execute(
        """
        INSERT INTO units (order_key, line_no, unit_no, sku)
        SELECT k, l, u, s FROM unnest($1::text[], $2::int[], $3::int[], $4::text[])
            WITH ORDINALITY AS t(k, l, u, s, n)
        ORDER BY n
        ON CONFLICT DO NOTHING
        """,
        [u[0] for u in units],
        [u[1] for u in units],
        [u[2] for u in units],
        [u[3] for u in units],
    )


async def fill(conn: DbConn, sku: str, limit: int = 10_000) -> list[FilledUnit]:
    """Give the oldest waiting units of `sku` the earliest-expiring codes; returns the pairs."""
    waiting = await conn.fetch(
        """
        SELECT order_key, line_no, unit_no FROM units
        WHERE sku = $1 AND code_id IS NULL
        ORDER BY seq LIMIT $2
        FOR UPDATE SKIP LOCKED
        """,
        sku,
        limit,
    )
    if not waiting:
        return []
    claimed = await conn.fetch(
        """
        UPDATE codes SET status = 'allocated'
        WHERE code_id IN (
            SELECT code_id FROM codes
            WHERE sku = $1 AND status = 'available'
              AND (expires_at IS NULL OR expires_at > now())
            ORDER BY expires_at ASC NULLS LAST, code_id
            LIMIT $2
            FOR UPDATE SKIP LOCKED)
        RETURNING code_id, sealed, expires_at
        """,
        sku,
        len(waiting),
    )
    if not claimed:
        return []
    codes = sorted(claimed, key=lambda r: (r["expires_at"] is None, r["expires_at"], r["code_id"]))
    pairs = list(zip(waiting, codes, strict=False))
    await conn.execute(
        """
        UPDATE units SET code_id = t.c
        FROM unnest($1::text[], $2::int[], $3::int[], $4::bigint[]) AS t(k, l, u, c)
        WHERE units.order_key = t.k AND units.line_no = t.l AND units.unit_no = t.u
        """,
        [w["order_key"] for w, _ in pairs],
        [w["line_no"] for w, _ in pairs],
        [w["unit_no"] for w, _ in pairs],
        [c["code_id"] for _, c in pairs],
    )
    return [
        FilledUnit(
            w["order_key"],
            w["line_no"],
            w["unit_no"],
            sku,
            c["code_id"],
            c["sealed"],
            c["expires_at"],
        )
        for w, c in pairs
    ]


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
