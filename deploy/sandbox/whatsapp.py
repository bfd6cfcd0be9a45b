"""WhatsApp Business Cloud API: template sends, Graph-style errors."""

from __future__ import annotations

import base64
import hmac
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

from deploy.sandbox import receipts
from deploy.sandbox.config import CONFIG
from deploy.sandbox.http import now_iso, read_json
from deploy.sandbox.inbox import INBOX

logger = logging.getLogger(__name__)

PARTY = "whatsapp"

# name -> language -> body text with {{1}}.. placeholders
TEMPLATES: dict[str, dict[str, str]] = {
    "tasleem_code_delivery": {
        "en": (
            "{{1}}: your {{2}} code is {{3}}. Redeem it in the store app. Thank you for your order!"
        ),
        "ar": "{{1}}: رمز {{2}} الخاص بك هو {{3}}. استخدمه في تطبيق المتجر. شكراً لطلبك!",
    },
}


def _placeholders(body: str) -> int:
    count = 0
    while f"{{{{{count + 1}}}}}" in body:
        count += 1
    return count


def render(body: str, values: list[str]) -> str:
    for number, value in enumerate(values, start=1):
        body = body.replace(f"{{{{{number}}}}}", value)
    return body


class Parameter(BaseModel):
    type: str
    text: str | None = None


class Component(BaseModel):
    type: str
    parameters: list[Parameter] = []


class Language(BaseModel):
    code: str


class Template(BaseModel):
    name: str
    language: Language
    components: list[Component] = []


class SendRequest(BaseModel):
    messaging_product: Literal["whatsapp"]
    to: str
    type: str = "text"  # the Cloud API's own default
    template: Template | None = None
    # echoed in status webhooks; the Cloud API refuses more than 512 characters
    biz_opaque_callback_data: str | None = Field(default=None, max_length=512)


@dataclass
class SentMessage:
    """Kept so that status webhooks (sent, delivered, read) could follow."""

    wamid: str
    phone_number_id: str
    wa_id: str
    template: str
    language: str
    at: str
    status: str = "sent"


class WhatsAppState:
    def __init__(self, not_on_whatsapp: list[str]) -> None:
        self.sent: dict[str, SentMessage] = {}
        self.recent: deque[float] = deque()  # acceptance times within the last second
        self.throttled = 0  # sends refused with 130429
        self.not_on_whatsapp = frozenset(_digits(phone) for phone in not_on_whatsapp)


WHATSAPP = web.AppKey("whatsapp", WhatsAppState)


def graph_error(status: int, code: int, message: str, kind: str = "OAuthException") -> web.Response:
    error = {"message": message, "type": kind, "code": code, "fbtrace_id": secrets.token_urlsafe(9)}
    return web.json_response({"error": error}, status=status)


def unavailable(random_error: bool) -> web.Response:
    if random_error:
        return graph_error(500, 2, "Service temporarily unavailable")
    return graph_error(503, 131016, "Service temporarily unavailable")


def _invalid(detail: str) -> web.Response:
    return graph_error(400, 100, f"(#100) Invalid parameter: {detail}")


def _digits(phone: str) -> str:
    return phone.strip().removeprefix("+")


def _template_text(template: Template) -> str | web.Response:
    """The rendered body, or the Graph error the Cloud API would answer."""
    languages = TEMPLATES.get(template.name)
    if languages is None:
        return graph_error(400, 132000, f"(#132000) Template {template.name!r} does not exist")
    body = languages.get(template.language.code)
    if body is None:
        return graph_error(400, 132001, "(#132001) Template name does not exist in the translation")
    values = [
        parameter.text
        for component in template.components
        if component.type == "body"
        for parameter in component.parameters
        if parameter.type == "text" and parameter.text is not None
    ]
    given = sum(len(component.parameters) for component in template.components)
    if given != _placeholders(body) or len(values) != given:
        return graph_error(
            400,
            132000,
            "(#132000) Number of parameters does not match the expected number of params",
        )
    return render(body, values)


def _over_throughput(state: WhatsAppState, per_second: int) -> bool:
    now = time.monotonic()
    while state.recent and now - state.recent[0] >= 1.0:
        state.recent.popleft()
    if len(state.recent) >= per_second:
        return True
    state.recent.append(now)
    return False


routes = web.RouteTableDef()


@routes.post(r"/v{version:\d+}.0/{phone_number_id}/messages")
async def send_message(request: web.Request) -> web.Response:
    config = request.app[CONFIG].whatsapp
    token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(token.encode(), config.token.encode()):
        return graph_error(401, 190, "Invalid OAuth access token.")
    phone_number_id = request.match_info["phone_number_id"]
    if phone_number_id != config.phone_number_id:
        return graph_error(
            400,
            100,
            f"Unsupported post request. Object with ID '{phone_number_id}' does not exist",
            kind="GraphMethodException",
        )
    try:
        send = SendRequest.model_validate(await read_json(request))
    except ValidationError as exc:
        fields = ", ".join(".".join(map(str, error["loc"])) for error in exc.errors())
        return _invalid(fields)
    except ValueError:
        return _invalid("the body is not JSON")
    wa_id = _digits(send.to)
    if not (wa_id.isdigit() and 8 <= len(wa_id) <= 15):
        return _invalid("to is not a phone number")
    if send.type == "text":
        return graph_error(400, 131047, "Re-engagement message")
    if send.type != "template" or send.template is None:
        return _invalid(f"unsupported message type {send.type!r}")
    text = _template_text(send.template)
    if isinstance(text, web.Response):
        return text
    state = request.app[WHATSAPP]
    if wa_id in state.not_on_whatsapp:
        return graph_error(400, 131026, "Message undeliverable")

    if config.throughput_per_s is not None and _over_throughput(state, config.throughput_per_s):
        state.throttled += 1
        return graph_error(400, 130429, "(#130429) Rate limit hit")
    wamid = "wamid." + base64.b64encode(secrets.token_bytes(27)).decode()
    state.sent[wamid] = SentMessage(
        wamid, phone_number_id, wa_id, send.template.name, send.template.language.code, now_iso()
    )
    request.app[INBOX].deliver("whatsapp", PARTY, "+" + wa_id, text, wamid)
    verified = config.verify_token is None or request.app[receipts.SUBSCRIPTIONS].whatsapp_verified
    if config.status_webhook_url and verified:
        receipts.whatsapp_status(
            request,
            config.status_webhook_url,
            config.app_secret,
            phone_number_id,
            wamid,
            wa_id,
            send.biz_opaque_callback_data,
        )
    return web.json_response(
        {
            "messaging_product": "whatsapp",
            "contacts": [{"input": send.to, "wa_id": wa_id}],
            "messages": [{"id": wamid}],
        }
    )
