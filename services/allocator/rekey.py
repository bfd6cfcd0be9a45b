"""Re-encrypting the vault under the active key, so that an older key can be retired.

`TASLEEM_VAULT_KEYS` lists keys newest first: the first seals, all open. `rekey` walks the
codes in id order, a batch per transaction, and re-seals every code whose key id is not the
first one's (same sku as associated data, so a code still opens only for its sku). It can be
stopped and run again at any point: what is done stays done, and a second run finds nothing to
do. It never reads a code out of the process, nor says one: the report is counts and ids.

Allocated codes are re-sealed too (the order view opens them), but `code.allocated` events
already published carry the old key id: keep the old key in the notifier's keys until those
are delivered.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.allocator import handlers
from shared.codecrypt import CodeCipher, CodeDecryptError, SealedCode
from shared.db import DbConn
from shared.events import Stock


@dataclass
class RekeyReport:
    key_id: str
    rekeyed: int = 0
    batches: int = 0
    undecryptable: list[int] = field(default_factory=list)  # code ids, never codes
    remaining_old: int = 0  # codes still under another key (the undecryptable ones)

    def as_dict(self) -> dict[str, object]:
        return {
            "key_id": self.key_id,
            "rekeyed": self.rekeyed,
            "batches": self.batches,
            "undecryptable": len(self.undecryptable),
            "undecryptable_code_ids": self.undecryptable[:100],
            "remaining_old": self.remaining_old,
        }


async def rekey(conn: DbConn, cipher: CodeCipher, batch: int = 1000) -> RekeyReport:
    report = RekeyReport(cipher.active_key_id)
    after = 0
    while True:
        async with conn.transaction():
            # FOR UPDATE: an allocator claiming one of these codes meanwhile skips it (SKIP
            # LOCKED) for the few milliseconds the batch takes, and finds it re-sealed after
            rows = await conn.fetch(
                """
                SELECT code_id, account, sku, sealed FROM codes
                WHERE code_id > $1 AND split_part(sealed, ':', 1) <> $2
                ORDER BY code_id LIMIT $3
                FOR UPDATE
                """,
                after,
                cipher.active_key_id,
                batch,
            )
            if not rows:
                break
            after = rows[-1]["code_id"]
            ids, sealed = [], []
            for row in rows:
                try:
                    code = cipher.open(SealedCode.from_text(row["sealed"]), row["sku"])
                except (CodeDecryptError, ValueError):
                    report.undecryptable.append(row["code_id"])
                    continue
                ids.append(row["code_id"])
                sealed.append(cipher.seal(code, row["sku"]).to_text())
                del code
            await conn.execute(
                """
                UPDATE codes SET sealed = t.s
                FROM unnest($1::bigint[], $2::text[]) AS t(id, s) WHERE code_id = t.id
                """,
                ids,
                sealed,
            )
            report.rekeyed += len(ids)
            report.batches += 1
            # a claim that skipped the locked codes may have backordered: serve it now
            stocks = {Stock(r["account"], r["sku"]) for r in rows}
            await handlers.distribute(conn, stocks, report_levels=True)
    report.remaining_old = await conn.fetchval(
        "SELECT count(*) FROM codes WHERE split_part(sealed, ':', 1) <> $1", cipher.active_key_id
    )
    return report
