from pydantic import SecretStr

from shared.settings import ServiceSettings, VaultKeySettings


class NotifierSettings(ServiceSettings, VaultKeySettings):
    admin_port: int = 9102
    consumer_group: str = "notifier"
    whatsapp_base_url: str = "https://graph.facebook.com"
    whatsapp_api_version: str = "21.0"
    whatsapp_token: SecretStr = SecretStr("")
    whatsapp_phone_number_id: str = ""
    whatsapp_template: str = "tasleem_code_delivery"
    # provider calls in flight at once, per notifier process
    max_concurrent_sends: int = 128
    # how long one message may keep retrying a provider before it is reported failed
    message_deadline_s: float = 30.0
    provider_timeout_s: float = 5.0
