from pydantic import SecretStr

from shared.settings import ServiceSettings


class IngestSettings(ServiceSettings):
    admin_port: int = 8080  # the gateway serves webhooks and its admin routes on one port
    max_body_bytes: int = 1024 * 1024
    # The platform retries a 503; it must get it well inside its own timeout (Shopify: 5 s).
    publish_timeout_s: float = 3.0
    store_cache_ttl_s: float = 5.0
    # Bearer token for /admin/stores; empty means the store admin API refuses every call.
    ingest_admin_token: SecretStr = SecretStr("")
