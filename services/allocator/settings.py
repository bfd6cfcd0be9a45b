from shared.settings import ServiceSettings, VaultKeySettings


class AllocatorSettings(ServiceSettings, VaultKeySettings):
    admin_port: int = 9101
    consumer_group: str = "allocator"
    outbox_sweep_interval_s: float = 0.5
    # rows younger than this belong to a live writer that relays them itself
    outbox_orphan_age_s: float = 2.0
