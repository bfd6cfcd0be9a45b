"""Amazon SES v2 SendEmail (simple content), REST-JSON errors."""

from __future__ import annotations

import hmac
import html
import logging
import re
import uuid
from datetime import UTC, datetime

from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from pydantic import BaseModel, Field, ValidationError

from deploy.sandbox import receipts
from deploy.sandbox.config import CONFIG, SesConfig
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


SIGV4 = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<day>\d{8})/(?P<region>[^/]+)/ses/aws4_request,"
    r" SignedHeaders=(?P<headers>[a-z0-9;-]+), Signature=(?P<signature>[0-9a-f]{64})"
)
MAX_SKEW_S = 300  # AWS refuses a request signed more than 5 minutes away from its clock


def signature_problem(request: web.Request, body: bytes, ses: SesConfig) -> str | None:
    """Why AWS would refuse this request's SigV4 signature, or None: the signature is computed
    again with botocore over exactly the headers the request names as signed."""
    found = SIGV4.fullmatch(request.headers.get("Authorization", ""))
    if found is None:
        return "no AWS4-HMAC-SHA256 Authorization header"
    if found["key"] != ses.access_key or found["region"] != ses.region:
        return "unknown access key or region"
    amz_date = request.headers.get("X-Amz-Date", "")
    try:
        signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return "no valid X-Amz-Date"
    if abs((datetime.now(UTC) - signed_at).total_seconds()) > MAX_SKEW_S or not amz_date.startswith(
        found["day"]
    ):
        return "signed too long ago"
    names = found["headers"].split(";")
    signed = AWSRequest(
        method=request.method,
        url=str(request.url),
        data=body,
        headers={name: request.headers.get(name, "") for name in names},
    )
    signed.context["timestamp"] = amz_date
    auth = SigV4Auth(Credentials(ses.access_key, ses.secret_key), "ses", ses.region)
    canonical = auth.canonical_request(signed)
    expected = auth.signature(auth.string_to_sign(signed, canonical), signed)
    if auth.signed_headers(auth.headers_to_sign(signed)) != found["headers"]:
        return "SignedHeaders does not match the headers signed"
    if not hmac.compare_digest(expected, found["signature"]):
        return "the signature does not match"
    return None


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
    ses = request.app[CONFIG].ses
    if ses.access_key is not None and signature_problem(request, await request.read(), ses):
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
