"""Every error a service's HTTP server answers is JSON with an `error` key.

Unknown routes, wrong methods, oversized bodies and anything a handler did not foresee would
otherwise get aiohttp's plain-text pages (a client that parses our errors then fails on them,
and `/webhooks/salla/../../etc` told an attacker nothing useful but in the wrong shape).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable

from aiohttp import web

from shared.failures import Failure

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# headers of an HTTP error worth keeping on its JSON form (405 names the allowed methods)
_KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")


def error_code(reason: str) -> str:
    """`Method Not Allowed` -> `method_not_allowed`: a stable code from an HTTP reason."""
    return re.sub(r"[^a-z0-9]+", "_", reason.lower()).strip("_") or "error"


def json_error(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> web.Response:
    """The one error shape: `{"error": code, "detail": detail}`."""
    return web.json_response({"error": code, "detail": detail}, status=status, headers=headers)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own 4xx/5xx (404, 405, 413, 400 …) and unforeseen failures, in JSON."""
    try:
        return await handler(request)
    except Failure as exc:
        # a failure of ours no handler answered: its own status, code and reason
        if exc.status >= 500:
            # where it came from matters for a 5xx: the traceback goes to the log (our
            # failures' details name no secret), the caller gets the code and reason
            log.warning(
                "%s on %s %s: %s",
                exc.code,
                request.method,
                request.rel_url.path[:200],
                exc.detail,
                exc_info=True,
            )
        retry = {"Retry-After": "5"} if exc.retriable else None
        return json_error(exc.status, exc.code, exc.detail, retry)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.content_type == "application/json":
            raise  # already in our shape (a handler built it)
        kept = {h: exc.headers[h] for h in _KEPT_HEADERS if h in exc.headers}
        text = exc.text or ""
        detail = exc.reason if not text or text.startswith(f"{exc.status}:") else text
        return json_error(exc.status, error_code(exc.reason), detail, kept)
    except Exception:
        # the traceback goes to the log (it names no request data); the caller gets no detail
        log.exception("unhandled error on %s %s", request.method, request.rel_url.path[:200])
        return json_error(500, "internal_error", "the server failed to answer this request")
