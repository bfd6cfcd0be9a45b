"""Amazon SES v2 SendEmail (simple content), REST-JSON errors."""

from __future__ import annotations

import html
import logging
import re
import uuid

from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

from deploy.sandbox import receipts
from deploy.sandbox.config import CONFIG
from deploy.sandbox.http import read_json
from deploy.sandbox.inbox import INBOX

logger = logging.getLogger(__name__)

PARTY = "email"

ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")
TAG = re.compile(r"<[^>]+>")


class Data(BaseModel):
    Data: str
    Charset: str | None = None


class Body(BaseModel):
    Text: Data | None = None
    Html: Data | None = None


class Simple(BaseModel):
    Subject: Data
    Body: Body


class Content(BaseModel):
    Simple: Simple


class Destination(BaseModel):
    ToAddresses: list[str] = Field(min_length=1, max_length=50)


class MessageTag(BaseModel):
    Name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,256}$")
    Value: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,256}$")


class SendEmailRequest(BaseModel):
    FromEmailAddress: str
    Destination: Destination
    Content: Content
    ConfigurationSetName: str | None = None
    EmailTags: list[MessageTag] = Field(default=[], max_length=50)


def ses_error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response(
        {"__type": kind, "message": message}, status=status, headers={"x-amzn-ErrorType": kind}
    )


def unavailable(random_error: bool) -> web.Response:
    return ses_error(503, "ServiceUnavailable", "Service unavailable")


def _signed_by(request: web.Request, access_key: str) -> bool:
    authorization = request.headers.get("Authorization", "")
    return authorization.startswith("AWS4-HMAC-SHA256 ") and (
        f"Credential={access_key}/" in authorization
    )


def _bare(address: str) -> str:
    """`Name <a@b.c>` -> `a@b.c`."""
    return address.rsplit("<", 1)[-1].rstrip(">").strip()


def _readable(body: Body) -> str | None:
    if body.Text is not None:
        return body.Text.Data
    if body.Html is not None:
        return html.unescape(TAG.sub("", body.Html.Data)).strip()
    return None


routes = web.RouteTableDef()


@routes.post("/v2/email/outbound-emails")
async def send_email(request: web.Request) -> web.Response:
    access_key = request.app[CONFIG].ses.access_key
    if access_key is not None and not _signed_by(request, access_key):
        return ses_error(
            403,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        )
    try:
        email = SendEmailRequest.model_validate(await read_json(request))
    except ValidationError as exc:
        fields = ", ".join(".".join(map(str, error["loc"])) for error in exc.errors())
        return ses_error(400, "BadRequestException", f"Invalid or missing fields: {fields}")
    except ValueError:
        return ses_error(400, "BadRequestException", "The request body is not valid JSON")
    text = _readable(email.Content.Simple.Body)
    if text is None:
        return ses_error(400, "BadRequestException", "Content.Simple.Body needs Text or Html")
    for address in [email.FromEmailAddress, *email.Destination.ToAddresses]:
        if not ADDRESS.match(_bare(address)):
            return ses_error(400, "BadRequestException", f"Illegal address: {address}")
    message_id = str(uuid.uuid4())
    full_text = email.Content.Simple.Subject.Data + "\n\n" + text
    inbox = request.app[INBOX]
    for address in email.Destination.ToAddresses:
        inbox.deliver("email", PARTY, _bare(address), full_text, message_id)
    ses = request.app[CONFIG].ses
    if ses.configuration_set is not None and email.ConfigurationSetName == ses.configuration_set:
        tags = {tag.Name: [tag.Value] for tag in email.EmailTags}
        receipts.ses_event(
            request,
            message_id,
            email.FromEmailAddress,
            [_bare(a) for a in email.Destination.ToAddresses],
            tags,
        )
    return web.json_response({"MessageId": message_id})
