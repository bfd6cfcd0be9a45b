from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ReceiptSettings(BaseSettings):
    """What the gateway needs to verify each provider's receipts; an empty secret refuses
    that provider's receipts (403)."""

    model_config = SettingsConfigDict(env_prefix="TASLEEM_", extra="ignore")

    # how providers reach the gateway: Twilio signs the callback URL as it was given to it
    gateway_public_url: str = ""
    whatsapp_app_secret: SecretStr = SecretStr("")  # signs status webhooks
    whatsapp_verify_token: SecretStr = SecretStr("")  # Meta's subscription check
    twilio_auth_token: SecretStr = SecretStr("")  # signs status callbacks
    unifonic_receipt_token: SecretStr = SecretStr("")  # in the DLR URL: Unifonic does not sign
    # the SNS topics SES's configuration set publishes to; none: SES events are refused
    ses_topic_arns: list[str] = []
    # where SNS signing certificates and subscription confirmations may come from (the origin
    # of SigningCertURL and SubscribeURL); the embedded stack points it at the sandbox
    sns_origin_pattern: str = r"https://sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?"
