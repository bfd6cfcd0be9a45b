from pydantic import SecretStr

from shared.settings import ServiceSettings, VaultKeySettings


class AllocatorSettings(ServiceSettings, VaultKeySettings):
    admin_port: int = 9101
    consumer_group: str = "allocator"
    # One transaction per batch: larger batches amortise its round trips (bench_allocator,
    # before the batch-shaped writes: 4.8k allocations/s at 500, 7.1k at 2,000); at low
    # rates a batch is whatever has arrived.
    kafka_max_batch: int = 2000
    outbox_sweep_interval_s: float = 0.5
    # rows younger than this belong to a live writer that relays them itself
    outbox_orphan_age_s: float = 2.0
    # inventory.level is published at most this often per sku, and for every sku this often
    level_interval_s: float = 0.5
    level_refresh_s: float = 30.0
    # /admin/ (stock imports, levels, orders): `caller:role:sha256` entries, one per caller's
    # token (shared/admin_auth.py; `tasleem admin token` makes one); none = admin API refused
    allocator_admin_tokens: SecretStr = SecretStr("")
    # stock files are streamed to the admin API, up to this size
    max_import_bytes: int = 64 * 1024 * 1024
    # the allocator's own hard limit on one order (the gateway caps orders per store, lower):
    # an order over it is dead-lettered for a human, not allocated
    max_units_per_order: int = 1000
    # units allocated per transaction: a batch of large orders is split, so no transaction
    # (and no other store's order behind it) waits on more than this
    max_units_per_transaction: int = 20_000
