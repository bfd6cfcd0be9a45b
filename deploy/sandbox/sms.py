"""SMS gateways: Unifonic's REST API and Twilio's Messages resource, both form-encoded."""

from __future__ import annotations

import base64
import hmac
import itertools
import logging
import re
import secrets
from datetime import UTC, date, datetime
from email.utils import format_datetime

from aiohttp import web

from deploy.sandbox import receipts
from deploy.sandbox.config import CONFIG
from deploy.sandbox.http import read_form
from deploy.sandbox.inbox import INBOX

logger = logging.getLogger(__name__)

UNIFONIC = "unifonic"
TWILIO = "twilio"

E164 = re.compile(r"^\+[1-9]\d{7,14}$")
GSM_7 = re.compile(r"^[\x20-\x7e\n\r£¥èéùìòÇØøÅåÆæßÉÄÖÑÜ§¿äöñüà]*$")


def sms_units(body: str) -> int:
    """How many SMS parts a body takes: GSM-7 160/153, otherwise UCS-2 70/67."""
    single, part = (160, 153) if GSM_7.match(body) else (70, 67)
    return 1 if len(body) <= single else -(-len(body) // part)


class SmsState:
    def __init__(self) -> None:
        self.unifonic_ids = itertools.count(secrets.randbelow(9_000_000) + 1_000_000)
        self.unifonic_correlations: dict[str, int] = {}
        self.twilio_callbacks: dict[str, str] = {}  # message sid -> StatusCallback url
        self.twilio_messages: list[dict[str, object]] = []  # what the Messages list returns


SMS = web.AppKey("sms", SmsState)


def _unifonic_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response(
        {"success": False, "message": message, "errorCode": code}, status=status
    )


def unifonic_unavailable(random_error: bool) -> web.Response:
    return _unifonic_error(503, "ER-10", "Service unavailable")


unifonic_routes = web.RouteTableDef()


@unifonic_routes.post("/rest/SMS/messages")
async def unifonic_send(request: web.Request) -> web.Response:
    config = request.app[CONFIG].unifonic
    form = await read_form(request)
    if not hmac.compare_digest(form.get("AppSid", "").encode(), config.app_sid.encode()):
        return _unifonic_error(401, "ER-03", "Invalid AppSid")
    recipient = form.get("Recipient", "")
    if not (recipient.isdigit() and 8 <= len(recipient) <= 15):
        return _unifonic_error(400, "ER-02", "Invalid recipient number")
    body = form.get("Body", "")
    if not body:
        return _unifonic_error(400, "ER-04", "Body is required")
    state = request.app[SMS]
    correlation_id = form.get("CorrelationID") or None
    if correlation_id is not None and correlation_id in state.unifonic_correlations:
        return _unifonic_error(400, "ER-09", "Duplicate CorrelationID")
    message_id = next(state.unifonic_ids)
    if correlation_id is not None:
        state.unifonic_correlations[correlation_id] = message_id
    request.app[INBOX].deliver("sms", UNIFONIC, "+" + recipient, body, str(message_id))
    if config.dlr_url:
        receipts.unifonic_dlr(request, config.dlr_url, str(message_id))
    units = sms_units(body)
    data = {
        "MessageID": message_id,
        "CorrelationID": correlation_id,
        "Status": "Sent",
        "NumberOfUnits": units,
        "Cost": round(0.05 * units, 2),
        "DateCreated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
    }
    return web.json_response({"success": True, "message": "", "errorCode": "ER-00", "data": data})


def _twilio_error(status: int, code: int, message: str) -> web.Response:
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return web.json_response(body, status=status)


def twilio_unavailable(random_error: bool) -> web.Response:
    return _twilio_error(503, 20503, "Service unavailable")


def _twilio_authenticated(request: web.Request, path_sid: str) -> bool:
    config = request.app[CONFIG].twilio
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    try:
        login, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        return False
    return (
        scheme.lower() == "basic"
        and path_sid == config.account_sid
        and hmac.compare_digest(login.encode(), config.account_sid.encode())
        and hmac.compare_digest(password.encode(), config.auth_token.encode())
    )


twilio_routes = web.RouteTableDef()


@twilio_routes.post("/2010-04-01/Accounts/{sid}/Messages.json")
async def twilio_send(request: web.Request) -> web.Response:
    sid = request.match_info["sid"]
    if not _twilio_authenticated(request, sid):
        return _twilio_error(401, 20003, "Authenticate")
    form = await read_form(request)
    to = form.get("To", "")
    if not E164.match(to):
        return _twilio_error(400, 21211, f"Invalid 'To' Phone Number: {to}")
    sender = form.get("From", "") or form.get("MessagingServiceSid", "")
    if not sender:
        return _twilio_error(400, 21603, "A 'From' phone number is required.")
    body = form.get("Body", "")
    if not body:
        return _twilio_error(400, 21602, "Message body is required.")
    message_sid = "SM" + secrets.token_hex(16)
    if callback := form.get("StatusCallback"):
        request.app[SMS].twilio_callbacks[message_sid] = callback
    request.app[INBOX].deliver("sms", TWILIO, to, body, message_sid)
    if callback := form.get("StatusCallback"):
        auth_token = request.app[CONFIG].twilio.auth_token
        receipts.twilio_status(request, callback, auth_token, message_sid, to)
    created = format_datetime(datetime.now(UTC), usegmt=True)
    reply = {
        "sid": message_sid,
        "account_sid": sid,
        "api_version": "2010-04-01",
        "status": "queued",
        "direction": "outbound-api",
        "to": to,
        "from": form.get("From") or None,
        "messaging_service_sid": form.get("MessagingServiceSid") or None,
        "body": body,
        "num_segments": str(sms_units(body)),
        "date_created": created,
        "date_updated": created,
        "date_sent": None,
        "error_code": None,
        "error_message": None,
        "uri": f"/2010-04-01/Accounts/{sid}/Messages/{message_sid}.json",
    }
    # the sandbox hands a message over at once: it is "sent" when created
    request.app[SMS].twilio_messages.append(
        {**reply, "status": "sent", "date_sent": created, "_sent_on": datetime.now(UTC).date()}
    )
    return web.json_response(reply, status=201)


@twilio_routes.get("/2010-04-01/Accounts/{sid}/Messages.json")
async def twilio_list(request: web.Request) -> web.Response:
    """Messages, newest first, filtered by `To`, `From` and `DateSent>=` / `DateSent<=` (GMT
    days): how a sender finds out what went out when it lost the answer."""
    sid = request.match_info["sid"]
    if not _twilio_authenticated(request, sid):
        return _twilio_error(401, 20003, "Authenticate")
    query = request.query
    try:
        after = _day(query.get("DateSent>"))
        before = _day(query.get("DateSent<"))
        size = min(max(int(query.get("PageSize", "50")), 1), 1000)
    except ValueError:
        return _twilio_error(400, 20001, "Invalid query parameter")
    found = [
        m
        for m in reversed(request.app[SMS].twilio_messages)
        if query.get("To", m["to"]) == m["to"]
        and query.get("From", m["from"]) == m["from"]
        and (after is None or m["_sent_on"] >= after)  # type: ignore[operator]
        and (before is None or m["_sent_on"] <= before)  # type: ignore[operator]
    ][:size]
    messages = [{k: v for k, v in m.items() if not k.startswith("_")} for m in found]
    return web.json_response(
        {
            "messages": messages,
            "page": 0,
            "page_size": size,
            "uri": request.path_qs,
            "next_page_uri": None,
        }
    )


def _day(text: str | None) -> date | None:
    return None if text is None else date.fromisoformat(text)
