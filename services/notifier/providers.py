"""The one interface every delivery provider sits behind, and what a provider can answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import aiohttp

# busy: throughput limit, try again later; unavailable: the provider is down or broken;
# recipient: this buyer cannot be reached this way (next channel, provider is healthy);
# rejected: the provider refuses us (bad credentials, template) — next channel.
Failure = Literal["busy", "unavailable", "recipient", "rejected"]


class ProviderError(Exception):
    """A provider refused or failed a send; `kind` says what the notifier should do next."""

    def __init__(self, provider: str, code: str, message: str, kind: Failure):
        super().__init__(f"{provider} {code}: {message}")
        self.provider = provider
        self.code = code
        self.kind = kind

    @property
    def retriable(self) -> bool:
        return self.kind in ("busy", "unavailable")


def transport_error(provider: str, exc: BaseException) -> ProviderError:
    """A timeout or connection failure: the provider may or may not have the message."""
    return ProviderError(provider, "transport", type(exc).__name__, "unavailable")


TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError, ValueError)


@dataclass(frozen=True)
class Outbound:
    """One message to one buyer. The text holds plain codes: it lives only for the call."""

    to: str  # E.164 phone or an email address
    locale: str
    key: str  # our idempotency key for this attempt
    # our attempt key and order key, for the provider to echo in its receipts
    # (shared.events.attempt_reference)
    reference: str = ""
    subject: str = field(default="", repr=False)
    text: str = field(default="", repr=False)
    html: str = field(default="", repr=False)
    template: str = ""  # WhatsApp template name
    params: list[str] = field(default_factory=list, repr=False)  # WhatsApp template values


class Provider(Protocol):
    channel: str  # whatsapp | sms | email
    name: str  # whatsapp | unifonic | twilio | email

    async def send(self, message: Outbound) -> str:
        """Hand the message over; returns the provider's message id (accepted, not delivered)."""
        ...
