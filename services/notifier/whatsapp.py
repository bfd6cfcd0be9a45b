"""WhatsApp Business Cloud API: template messages (a code goes to a buyer who has not written)."""

from __future__ import annotations

from typing import Any

import aiohttp

from services.notifier.providers import (
    TRANSPORT_ERRORS,
    Failure,
    Outbound,
    ProviderError,
    transport_error,
)

BUSY_CODES = {4, 80007, 130429, 131056}
UNAVAILABLE_CODES = {1, 2, 131000, 131016, 133004}
# not on WhatsApp, re-engagement window, user blocked us / experiment, recipient invalid
RECIPIENT_CODES = {131026, 131047, 131049, 131050, 131030, 131021}
OPAQUE_MAX = 512  # biz_opaque_callback_data's limit: past it, the attempt key alone


def classify(status: int, code: Any) -> Failure:
    if code in BUSY_CODES or status == 429:
        return "busy"
    if code in RECIPIENT_CODES:
        return "recipient"
    if code in UNAVAILABLE_CODES or status >= 500:
        return "unavailable"
    return "rejected"


class WhatsAppCloud:
    channel = "whatsapp"
    name = "whatsapp"

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        api_version: str,
        token: str,
        phone_number_id: str,
    ):
        self.session = session
        self.url = f"{base_url.rstrip('/')}/v{api_version}/{phone_number_id}/messages"
        self.headers = {"Authorization": f"Bearer {token}"}

    async def send(self, message: Outbound) -> str:
        return await self.send_template(
            message.to, message.template, message.locale, message.params, message.reference
        )

    async def send_template(
        self, to: str, template: str, language: str, params: list[str], reference: str = ""
    ) -> str:
        """Send a template message; returns the `wamid` (accepted, not yet delivered).
        `reference` comes back in its status webhooks as `biz_opaque_callback_data`."""
        body: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "to": to.lstrip("+"),
            "type": "template",
            "template": {
                "name": template,
                "language": {"code": language},
                "components": [
                    {"type": "body", "parameters": [{"type": "text", "text": p} for p in params]}
                ],
            },
        }
        if reference:
            fits = len(reference) <= OPAQUE_MAX
            body["biz_opaque_callback_data"] = reference if fits else reference.split(".")[0]
        try:
            async with self.session.post(self.url, json=body, headers=self.headers) as resp:
                payload = await resp.json(content_type=None)
                status = resp.status
        except TRANSPORT_ERRORS as exc:
            raise transport_error(self.name, exc) from None
        if status == 200 and isinstance(payload, dict) and payload.get("messages"):
            return str(payload["messages"][0]["id"])
        error = payload.get("error", {}) if isinstance(payload, dict) else {}
        code = error.get("code")
        # the provider's message never includes the template parameters, so it is safe to keep
        raise ProviderError(
            self.name, str(code or status), str(error.get("message", "")), classify(status, code)
        )
