"""The store registry: platform, secrets, sku mapping, locale and channel order per store.

Webhook secrets and the platform API credential are sealed before they are written and opened
when a row is read (`SecretSealer`, bound to the store's id): the table never holds them in
plain text, the registry's cache holds them in memory only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field

import asyncpg

from services.ingest.errors import RegistryUnavailable, StoreMisconfigured
from shared.codecrypt import CodeDecryptError, SecretSealer
from shared.db import DbConn

log = logging.getLogger(__name__)

DEFAULT_MAX_LINES = 50
DEFAULT_MAX_UNITS = 100


@dataclass(frozen=True)
class Store:
    store_id: str
    platform: str
    name: str
    secrets: tuple[str, ...] = field(repr=False)
    sku_map: dict[str, str] = field(default_factory=dict)
    locale: str = "ar"
    channels: tuple[str, ...] = ("whatsapp", "sms", "email")
    salla_strategy: str = "signature"  # or "token": how a Salla store's webhooks prove origin
    templates: dict[str, str] = field(default_factory=dict)
    # the merchant account the store belongs to (its codes are that account's): "" = store id
    account: str = ""
    # what one order may ask for; a genuine sale-day order is far below, a hostile one is not
    max_lines: int = DEFAULT_MAX_LINES
    max_units: int = DEFAULT_MAX_UNITS
    # the platform's own id for the store (Salla: the envelope's `merchant`); "" = not checked
    platform_store_id: str = ""
    # what the gateway asks the platform's API with (Zid: `<Authorization>:<X-Manager-Token>`,
    # to confirm each order); secret like `secrets`, and never shown
    api_credential: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if not self.account:
            object.__setattr__(self, "account", self.store_id)

    def internal_sku(self, platform_sku: str) -> str:
        return self.sku_map.get(platform_sku, platform_sku)

    def sells(self, platform_sku: str) -> bool:
        """Is this sku in the store's catalogue? A store without a sku map sells any sku."""
        if not self.sku_map:
            return True
        return platform_sku in self.sku_map or platform_sku in self.sku_map.values()


class StoreRegistry:
    """Reads stores from the database, cached briefly so a change needs no restart.

    Concurrent lookups of one store share a single query, so a surge does not turn every
    cache expiry into a burst of identical queries.
    """

    MAX_CACHED = 10_000  # unknown ids are cached too; bound what a spray of them can hold

    def __init__(self, pool: asyncpg.Pool, sealer: SecretSealer, ttl_s: float = 5.0):
        self.pool = pool
        self.sealer = sealer
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
        return _from_row(row, self.sealer) if row else None

    def forget(self, store_id: str) -> None:
        """Drop a cached store, so a change made here is seen at once."""
        self._cache.pop(store_id, None)

    async def all(self) -> list[Store]:
        """Every store whose secrets open; one that does not is logged and left out (it cannot
        take webhooks either), so it does not take the gateway down with it."""
        found = []
        for row in await self.pool.fetch("SELECT * FROM stores ORDER BY 1"):
            try:
                found.append(_from_row(row, self.sealer))
            except StoreMisconfigured as exc:
                log.error("store %s left out: %s", row["store_id"], exc.detail)
        return found


def _secret_purpose(store_id: str) -> str:
    return f"store-secret:{store_id}"


def _credential_purpose(store_id: str) -> str:
    return f"store-api-credential:{store_id}"


async def upsert_store(conn: DbConn | asyncpg.Pool, store: Store, sealer: SecretSealer) -> None:
    """Write the store, its secrets and API credential sealed for this store id."""
    await conn.execute(
        """
        INSERT INTO stores (store_id, platform, name, secrets, sku_map, locale, channels,
                            salla_strategy, templates, account, max_lines, max_units,
                            platform_store_id, api_credential, sealed)
        VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9::jsonb, $10, $11, $12, $13, $14, true)
        ON CONFLICT (store_id) DO UPDATE SET
            platform = excluded.platform, name = excluded.name, secrets = excluded.secrets,
            sku_map = excluded.sku_map, locale = excluded.locale, channels = excluded.channels,
            salla_strategy = excluded.salla_strategy, templates = excluded.templates,
            account = excluded.account, max_lines = excluded.max_lines,
            max_units = excluded.max_units, platform_store_id = excluded.platform_store_id,
            api_credential = excluded.api_credential, sealed = true, updated_at = now()
        """,
        store.store_id,
        store.platform,
        store.name,
        _sealed_secrets(sealer, store.store_id, store.secrets),
        json.dumps(store.sku_map),
        store.locale,
        list(store.channels),
        store.salla_strategy,
        json.dumps(store.templates),
        store.account,
        store.max_lines,
        store.max_units,
        store.platform_store_id,
        _sealed_credential(sealer, store.store_id, store.api_credential),
    )


def _sealed_secrets(sealer: SecretSealer, store_id: str, secrets: tuple[str, ...]) -> list[str]:
    return [sealer.seal(s, _secret_purpose(store_id)) for s in secrets]


def _sealed_credential(sealer: SecretSealer, store_id: str, credential: str) -> str:
    return sealer.seal(credential, _credential_purpose(store_id)) if credential else ""


async def seal_at_rest(pool: asyncpg.Pool, sealer: SecretSealer) -> int:
    """Seal every row still in plain text (written before secrets were sealed, or by an older
    gateway), and seal again under the current key what an older key sealed, so that key can
    be retired. One transaction, rows locked: gateways starting together do it once. Returns
    how many rows changed; a row that does not open is logged and left as it is."""
    current = sealer.active_key_id + ":"
    changed = 0
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            """
            SELECT store_id, secrets, api_credential, sealed FROM stores
            WHERE NOT sealed
               OR EXISTS (SELECT 1 FROM unnest(secrets) s WHERE left(s, length($1)) <> $1)
               OR (api_credential <> '' AND left(api_credential, length($1)) <> $1)
            FOR UPDATE
            """,
            current,
        )
        for row in rows:
            try:
                secrets, credential = _opened(row, sealer)
            except StoreMisconfigured as exc:
                log.error("store %s not sealed again: %s", row["store_id"], exc.detail)
                continue
            await conn.execute(
                "UPDATE stores SET secrets = $2, api_credential = $3, sealed = true"
                " WHERE store_id = $1",
                row["store_id"],
                _sealed_secrets(sealer, row["store_id"], secrets),
                _sealed_credential(sealer, row["store_id"], credential),
            )
            changed += 1
    if changed:
        log.info(
            "store secrets sealed at rest under key %s: %d stores", sealer.active_key_id, changed
        )
    return changed


def _opened(row: asyncpg.Record, sealer: SecretSealer) -> tuple[tuple[str, ...], str]:
    """A row's secrets and API credential in plain text. A row written before sealing is read
    as it is (a gateway seals it when it starts); StoreMisconfigured when sealed ones do not
    open: another key, another store's row, or altered."""
    store_id, credential = row["store_id"], row["api_credential"]
    if not row["sealed"]:
        return tuple(row["secrets"]), credential
    try:
        secrets = tuple(sealer.open(s, _secret_purpose(store_id)) for s in row["secrets"])
        opened = sealer.open(credential, _credential_purpose(store_id)) if credential else ""
    except CodeDecryptError as exc:
        raise StoreMisconfigured(
            f"the store's secrets do not open with the vault keys ({exc})"
        ) from None
    return secrets, opened


async def remove_store(conn: DbConn | asyncpg.Pool, store_id: str) -> bool:
    return await conn.execute("DELETE FROM stores WHERE store_id = $1", store_id) == "DELETE 1"


def _from_row(row: asyncpg.Record, sealer: SecretSealer) -> Store:
    secrets, credential = _opened(row, sealer)
    return Store(
        store_id=row["store_id"],
        platform=row["platform"],
        name=row["name"],
        secrets=secrets,
        sku_map=json.loads(row["sku_map"]),
        locale=row["locale"],
        channels=tuple(row["channels"]),
        salla_strategy=row["salla_strategy"],
        templates=json.loads(row["templates"]),
        account=row["account"],
        max_lines=row["max_lines"],
        max_units=row["max_units"],
        platform_store_id=row["platform_store_id"],
        api_credential=credential,
    )
