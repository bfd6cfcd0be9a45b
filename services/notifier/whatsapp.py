"""WhatsApp Business Cloud API: template messages (a code goes to a buyer who has not written)."""

from __future__ import annotations

import aiohttp

from services.notifier.providers import ProviderError

# Error codes worth retrying: throughput limits and service unavailability.
RETRIABLE_CODES = {2, 4, 80007, 130429, 131016, 131056, 133004}


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

    async def send_template(self, to: str, template: str, language: str, params: list[str]) -> str:
        """Send a template message; returns the `wamid` (accepted, not yet delivered)."""
        body = {
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
        try:
            async with self.session.post(self.url, json=body, headers=self.headers) as resp:
                payload = await resp.json(content_type=None)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ProviderError(
                self.name, "transport", type(exc).__name__, retriable=True
            ) from None
        if status == 200 and isinstance(payload, dict) and payload.get("messages"):
            return str(payload["messages"][0]["id"])
        error = payload.get("error", {}) if isinstance(payload, dict) else {}
        code = error.get("code")
        retriable = status >= 500 or status == 429 or code in RETRIABLE_CODES
        # the provider's message never includes the template parameters, so it is safe to keep
        raise ProviderError(
            self.name, str(code or status), str(error.get("message", "")), retriable
        )
