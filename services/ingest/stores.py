"""The store registry: platform, secrets, sku mapping, locale and channel order per store."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import asyncpg

from services.ingest.errors import RegistryUnavailable
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
    salla_strategy: str = "signature"  # or "token": how a Salla store's webhooks prove origin
    templates: dict[str, str] = field(default_factory=dict)

    def internal_sku(self, platform_sku: str) -> str:
        return self.sku_map.get(platform_sku, platform_sku)


class StoreRegistry:
    """Reads stores from the database, cached briefly so a change needs no restart.

    Concurrent lookups of one store share a single query, so a surge does not turn every
    cache expiry into a burst of identical queries.
    """

    MAX_CACHED = 10_000  # unknown ids are cached too; bound what a spray of them can hold

    def __init__(self, pool: asyncpg.Pool, ttl_s: float = 5.0):
        self.pool = pool
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, Store | None]] = {}
        self._loading: dict[str, asyncio.Future[Store | None]] = {}

    async def get(self, store_id: str) -> Store | None:
        """The store, or None if unknown; RegistryUnavailable if the database cannot say."""
        hit = self._cache.get(store_id)
        if hit is not None and time.monotonic() - hit[0] < self.ttl_s:
            return hit[1]
        loading = self._loading.get(store_id)
        if loading is None:
            loading = asyncio.ensure_future(self._load(store_id))
            self._loading[store_id] = loading
            loading.add_done_callback(lambda _: self._loading.pop(store_id, None))
        try:
            return await asyncio.shield(loading)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            if hit is not None:
                return hit[1]  # the database is away: the last known answer beats a refusal
            raise RegistryUnavailable("the store registry cannot be read; retry later") from None

    async def _load(self, store_id: str) -> Store | None:
        store = await self.fresh(store_id)
        if len(self._cache) >= self.MAX_CACHED:
            self._cache.clear()
        self._cache[store_id] = (time.monotonic(), store)
        return store

    async def fresh(self, store_id: str) -> Store | None:
        """The store as the database has it now, past the cache."""
        row = await self.pool.fetchrow("SELECT * FROM stores WHERE store_id = $1", store_id)
        return _from_row(row) if row else None

    def forget(self, store_id: str) -> None:
        """Drop a cached store, so a change made here is seen at once."""
        self._cache.pop(store_id, None)

    async def all(self) -> list[Store]:
        return [_from_row(r) for r in await self.pool.fetch("SELECT * FROM stores ORDER BY 1")]


async def upsert_store(conn: DbConn | asyncpg.Pool, store: Store) -> None:
    await conn.execute(
        """
        INSERT INTO stores (store_id, platform, name, secrets, sku_map, locale, channels,
                            salla_strategy, templates)
        VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9::jsonb)
        ON CONFLICT (store_id) DO UPDATE SET
            platform = excluded.platform, name = excluded.name, secrets = excluded.secrets,
            sku_map = excluded.sku_map, locale = excluded.locale, channels = excluded.channels,
            salla_strategy = excluded.salla_strategy, templates = excluded.templates,
            updated_at = now()
        """,
        store.store_id,
        store.platform,
        store.name,
        list(store.secrets),
        json.dumps(store.sku_map),
        store.locale,
        list(store.channels),
        store.salla_strategy,
        json.dumps(store.templates),
    )


async def remove_store(conn: DbConn | asyncpg.Pool, store_id: str) -> bool:
    return await conn.execute("DELETE FROM stores WHERE store_id = $1", store_id) == "DELETE 1"


def _from_row(row: asyncpg.Record) -> Store:
    return Store(
        store_id=row["store_id"],
        platform=row["platform"],
        name=row["name"],
        secrets=tuple(row["secrets"]),
        sku_map=json.loads(row["sku_map"]),
        locale=row["locale"],
        channels=tuple(row["channels"]),
        salla_strategy=row["salla_strategy"],
        templates=json.loads(row["templates"]),
    )
