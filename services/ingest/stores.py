"""The store registry: platform, secrets, sku mapping, locale and channel order per store."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import asyncpg

from shared.db import DbConn


@dataclass(frozen=True)
class Store:
    store_id: str
    platform: str
    name: str
    secrets: tuple[str, ...]
    sku_map: dict[str, str] = field(default_factory=dict)
    locale: str = "ar"
    channels: tuple[str, ...] = ("whatsapp", "sms", "email")

    def internal_sku(self, platform_sku: str) -> str:
        return self.sku_map.get(platform_sku, platform_sku)


class StoreRegistry:
    """Reads stores from the database, cached briefly so a change needs no restart."""

    def __init__(self, pool: asyncpg.Pool, ttl_s: float = 5.0):
        self.pool = pool
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, Store | None]] = {}

    async def get(self, store_id: str) -> Store | None:
        now = time.monotonic()
        hit = self._cache.get(store_id)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        row = await self.pool.fetchrow("SELECT * FROM stores WHERE store_id = $1", store_id)
        store = _from_row(row) if row else None
        self._cache[store_id] = (now, store)
        return store

    async def all(self) -> list[Store]:
        return [_from_row(r) for r in await self.pool.fetch("SELECT * FROM stores ORDER BY 1")]


async def upsert_store(conn: DbConn | asyncpg.Pool, store: Store) -> None:
    await conn.execute(
        """
        INSERT INTO stores (store_id, platform, name, secrets, sku_map, locale, channels)
        VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7)
        ON CONFLICT (store_id) DO UPDATE SET
            platform = excluded.platform, name = excluded.name, secrets = excluded.secrets,
            sku_map = excluded.sku_map, locale = excluded.locale, channels = excluded.channels,
            updated_at = now()
        """,
        store.store_id,
        store.platform,
        store.name,
        list(store.secrets),
        json.dumps(store.sku_map),
        store.locale,
        list(store.channels),
    )


def _from_row(row: asyncpg.Record) -> Store:
    return Store(
        store_id=row["store_id"],
        platform=row["platform"],
        name=row["name"],
        secrets=tuple(row["secrets"]),
        sku_map=json.loads(row["sku_map"]),
        locale=row["locale"],
        channels=tuple(row["channels"]),
    )
