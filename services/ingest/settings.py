from pydantic import SecretStr

from services.ingest.receipts.settings import ReceiptSettings
from shared.settings import ServiceSettings


class IngestSettings(ServiceSettings, ReceiptSettings):
    admin_port: int = 8080  # the gateway serves webhooks and its admin routes on one port
    max_body_bytes: int = 1024 * 1024
    # The platform retries a 503; it must get it well inside its own timeout (Shopify: 5 s).
    publish_timeout_s: float = 3.0
    store_cache_ttl_s: float = 5.0
    # A webhook body must arrive within this once its headers have (the header timeout is the
    # server's, shared/runtime.py): a sender trickling bytes holds nothing longer.
    body_read_timeout_s: float = 10.0
    # /admin/stores: `caller:role:sha256` entries, one per caller's token
    # (shared/admin_auth.py); empty means the store admin API refuses every call.
    ingest_admin_tokens: SecretStr = SecretStr("")
    # Store secrets and platform credentials are sealed at rest under the vault keys
    # (`kid:base64key,...`, the first seals, all open); the gateway needs nothing else of the
    # vault (not the fingerprint key). Without it the gateway does not start.
    vault_keys: SecretStr = SecretStr("")
    # Zid signs nothing: each paid or cancelled order is confirmed through its orders API
    # (the embedded stack points this at the sandbox). Zid counts a slow answer as a failed
    # delivery, so the call must end well inside Zid's own wait.
    zid_api_base_url: str = "https://api.zid.sa/v1"
    zid_api_timeout_s: float = 3.0
