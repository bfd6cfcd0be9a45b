from pydantic import Field, SecretStr

from shared.settings import ServiceSettings, VaultKeySettings


class RestockerSettings(ServiceSettings, VaultKeySettings):
    admin_port: int = 9103
    app_id: str = "restocker"
    # inventory.level's partition count: faust's changelog topics must match it exactly
    topic_partitions: int = 4
    supplier_base_url: str = "http://127.0.0.1:8090/reloadly"
    supplier_client_id: str = ""
    supplier_client_secret: SecretStr = SecretStr("")
    # our sku -> the supplier's product id
    supplier_products: dict[str, int] = Field(default_factory=dict)
    supplier_timeout_s: float = 10.0
    # buy when available minus backordered falls below this many units
    reorder_point: int = 20
    order_quantity: int = 100
    # a purchase that has not landed after this long is looked up and finished again
    resume_after_s: float = 20.0
