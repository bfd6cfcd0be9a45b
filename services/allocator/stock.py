"""What an operator reads about stock and orders. Codes are shown masked, never whole.

Every read names the account: one account's stock and orders are invisible in another's view.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from shared.codecrypt import CodeCipher, CodeDecryptError, SealedCode
from shared.db import DbConn


@dataclass(frozen=True)
class SkuStock:
    sku: str
    available: int  # can be handed out now
    reserved: int  # handed to an order, message not yet accepted by a provider
    sold: int  # reached the buyer
    backordered: int  # units of paid orders waiting for a code
    expiring_soon: int  # available, expiring within the window
    expired: int  # never handed out
    quarantined: int  # withdrawn from cancelled orders, never resold


async def stock_report(
    conn: DbConn, account: str, expiring_days: int = 7, sku: str | None = None
) -> list[SkuStock]:
    rows = await conn.fetch(
        """
        WITH c AS (
            SELECT sku,
              count(*) FILTER (WHERE status = 'available'
                               AND (expires_at IS NULL OR expires_at > now())) AS available,
              count(*) FILTER (WHERE status = 'available' AND expires_at > now()
                               AND expires_at <= now() + make_interval(days => $1)) AS expiring,
              count(*) FILTER (WHERE status = 'available' AND expires_at <= now()) AS expired,
              count(*) FILTER (WHERE status = 'revoked') AS quarantined
            FROM codes WHERE account = $3 AND ($2::text IS NULL OR sku = $2) GROUP BY sku
        ), u AS (
            SELECT sku,
              count(*) FILTER (WHERE code_id IS NOT NULL AND delivered_at IS NULL
                               AND revoked_at IS NULL) AS reserved,
              count(*) FILTER (WHERE delivered_at IS NOT NULL AND revoked_at IS NULL) AS sold,
              count(*) FILTER (WHERE code_id IS NULL) AS backordered
            FROM units WHERE account = $3 AND ($2::text IS NULL OR sku = $2) GROUP BY sku
        )
        SELECT coalesce(c.sku, u.sku) AS sku,
               coalesce(available, 0) AS available, coalesce(reserved, 0) AS reserved,
               coalesce(sold, 0) AS sold, coalesce(backordered, 0) AS backordered,
               coalesce(expiring, 0) AS expiring, coalesce(expired, 0) AS expired,
               coalesce(quarantined, 0) AS quarantined
        FROM c FULL JOIN u ON c.sku = u.sku ORDER BY 1
        """,
        expiring_days,
        sku,
        account,
    )
    return [
        SkuStock(
            r["sku"],
            r["available"],
            r["reserved"],
            r["sold"],
            r["backordered"],
            r["expiring"],
            r["expired"],
            r["quarantined"],
        )
        for r in rows
    ]


def mask(code: str) -> str:
    """Enough to recognise a code on the phone with the buyer, not enough to use it."""
    return f"XXXX-…-{code[-4:]}" if len(code) > 8 else "XXXX"


async def order_allocation(
    conn: DbConn, cipher: CodeCipher, account: str, order_key: str
) -> dict[str, Any] | None:
    """The order's units and their codes, masked; None when the account has no such order."""
    order = await conn.fetchrow(
        "SELECT order_key, account, store_id, order_id, paid_at, parts, cancelled_at "
        "FROM orders WHERE order_key = $1 AND account = $2",
        order_key,
        account,
    )
    if order is None:
        return None
    units = await conn.fetch(
        """
        SELECT u.line_no, u.unit_no, u.sku, u.part, u.delivered_at, u.revoked_at, c.sealed
        FROM units u LEFT JOIN codes c ON c.code_id = u.code_id
        WHERE u.order_key = $1 ORDER BY u.line_no, u.unit_no
        """,
        order_key,
    )
    return {
        **{
            k: order[k]
            for k in ("order_key", "account", "store_id", "order_id", "paid_at", "parts")
        },
        "cancelled_at": order["cancelled_at"],
        "units": [
            {
                "line": u["line_no"],
                "unit": u["unit_no"],
                "sku": u["sku"],
                "part": u["part"],
                "state": _state(u),
                "code": _masked(cipher, u["sealed"], u["sku"]),
            }
            for u in units
        ],
    }


def _state(unit: Any) -> str:
    if unit["revoked_at"]:
        return "revoked"
    if unit["sealed"] is None:
        return "backordered"
    return "delivered" if unit["delivered_at"] else "reserved"


def _masked(cipher: CodeCipher, sealed: str | None, sku: str) -> str | None:
    if sealed is None:
        return None
    try:
        return mask(cipher.open(SealedCode.from_text(sealed), sku))
    except CodeDecryptError:
        return "undecryptable"


def as_dicts(rows: list[SkuStock]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
