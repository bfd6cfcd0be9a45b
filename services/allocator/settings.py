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
    # bearer token for /admin/ (stock imports, levels, orders); unset = admin API refused
    allocator_admin_token: SecretStr = SecretStr("")
    # stock files are posted whole to the admin API
    max_import_bytes: int = 64 * 1024 * 1024
