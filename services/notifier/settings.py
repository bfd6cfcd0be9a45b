from pydantic import SecretStr

from shared.settings import ServiceSettings, VaultKeySettings


class NotifierSettings(ServiceSettings, VaultKeySettings):
    admin_port: int = 9102
    consumer_group: str = "notifier"
    # /admin/ (deliveries, operator resend): `caller:role:sha256` entries, one per caller's
    # token (shared/admin_auth.py); empty: no admin API
    notifier_admin_tokens: SecretStr = SecretStr("")
    # operator resends allowed per order and per caller in any hour; more get 429 (resend.py)
    resend_per_order_per_hour: int = 3
    resend_per_caller_per_hour: int = 30
    # how providers reach the gateway, which takes their receipts: Twilio's StatusCallback
    gateway_public_url: str = "http://127.0.0.1:8080"

    whatsapp_base_url: str = "https://graph.facebook.com"
    whatsapp_api_version: str = "21.0"
    whatsapp_token: SecretStr = SecretStr("")  # empty: WhatsApp is not used
    whatsapp_phone_number_id: str = ""
    whatsapp_template: str = "tasleem_code_delivery"
    whatsapp_rate_per_s: float = 80.0  # the Cloud API's default per business number

    unifonic_base_url: str = "https://el.cloud.unifonic.com"
    unifonic_app_sid: SecretStr = SecretStr("")  # empty: Unifonic is not used
    unifonic_sender: str = "Tasleem"
    unifonic_rate_per_s: float = 50.0

    twilio_base_url: str = "https://api.twilio.com"
    twilio_account_sid: str = ""  # empty: Twilio is not used
    twilio_auth_token: SecretStr = SecretStr("")
    twilio_from: str = ""
    twilio_rate_per_s: float = 100.0

    ses_base_url: str = "https://email.me-south-1.amazonaws.com"
    ses_region: str = "me-south-1"
    ses_access_key: str = ""  # empty: email is not used
    ses_secret_key: SecretStr = SecretStr("")
    ses_sender: str = "codes@tasleem.example"
    ses_rate_per_s: float = 14.0  # SES's default sending rate
    # the configuration set whose event destination (SNS) sends SES's receipts; empty: none
    ses_configuration_set: str = ""

    # failures in a row that open a provider's circuit, and how long it then rests
    breaker_threshold: int = 5
    breaker_cooldown_s: float = 10.0
    attempts_per_provider: int = 4
    # provider calls in flight at once, per notifier process
    max_concurrent_sends: int = 128
    # how long one message may keep retrying before it is reported failed
    message_deadline_s: float = 30.0
    provider_timeout_s: float = 5.0
    # how long a consumed batch waits for its messages before committing; slower ones finish
    # on their own (they are durable in the deliveries table) and report when done
    batch_hold_s: float = 0.2
    # consumed batches handled at once: the next batch's messages go out while the one before
    # waits for its sends and reports (up to `batch_hold_s`), instead of queueing behind it;
    # offsets are still committed in batch order (shared.kafka.ConsumerLoop)
    batches_in_flight: int = 4
    # a part unfinished and untouched this long is resumed (after a crash, or by another
    # replica): longer than one attempt can take (provider timeout plus the longest backoff)
    resume_after_s: float = 20.0
    # An attempt a crash (or a failed journal write) left 'sending' may have reached the buyer:
    # its resume waits this long for a receipt carrying its key before sending again (the
    # window README.md describes). Twilio is also looked up by recipient and day. Shorter than
    # resume_after_s: the part is touched when the wait starts, so no other replica takes it
    # over while this one waits.
    receipt_wait_s: float = 15.0
