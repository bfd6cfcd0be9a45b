"""What a delivery provider can answer, in the terms the notifier decides on."""

from __future__ import annotations


class ProviderError(Exception):
    """A provider refused or failed a send; `retriable` says whether trying again can help."""

    def __init__(self, provider: str, code: str, message: str, retriable: bool):
        super().__init__(f"{provider} {code}: {message}")
        self.provider = provider
        self.code = code
        self.retriable = retriable
