"""Bearer tokens for a service's admin routes: one per caller, scoped to a service and a role.

A service is given `caller:role:sha256` entries (`TASLEEM_<SERVICE>_ADMIN_TOKENS`, comma
separated): the digest of each token, never the token, so neither the settings nor a Secret
holds what a caller presents. `read` opens GETs; `operate` opens everything (imports, store
changes, resends). A token is made for one service: the same caller has another on another
service. No entries means no admin API at all: refusing is safer than an open door.

An address that keeps presenting bad credentials gets 429 with Retry-After for a while. A valid
token is never refused: the tokens are 256-bit random, so the throttle is there to make a
scanner loud and cheap to answer, not to stop guessing, and refusing good credentials from a
shared address (a port-forward, a NAT) would lock operators out during an incident.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Literal, get_args

from aiohttp import web
from cachetools import TTLCache
from prometheus_client import Counter

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Role = Literal["read", "operate"]
ROLES: tuple[Role, ...] = get_args(Role)
# what a method needs: reads look, everything else changes something
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CALLER_NAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")
ENTRY = re.compile(r"^(?P<caller>[^:]+):(?P<role>[a-z]+):(?P<digest>[0-9a-f]{64})$")
REFUSED = Counter(
    "tasleem_admin_refused_total",
    "Admin requests refused, by reason (missing, invalid, forbidden, throttled)",
    ["service", "reason"],
)
REFUSAL_REASONS = ("missing", "invalid", "forbidden", "throttled")
_CALLER_KEY = web.RequestKey("tasleem.admin_caller", str)


def bearer_token(authorization: str) -> str:
    """The credentials of an `Authorization: Bearer <token>` header, "" for another scheme.
    Auth schemes are case-insensitive (RFC 7235 §2.1): `bearer x` is `Bearer x`."""
    scheme, _, credentials = authorization.strip().partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else ""


def new_token() -> str:
    return secrets.token_urlsafe(32)


def digest(token: str) -> str:
    """SHA-256 is enough for a 256-bit random token: there is nothing to stretch."""
    return hashlib.sha256(token.encode()).hexdigest()


def entry(caller: str, role: Role, token: str) -> str:
    """The line a service is configured with for this caller's token."""
    if not CALLER_NAME.match(caller):
        raise ValueError(f"caller names are lower-case letters, digits and ._@-: {caller!r}")
    return f"{caller}:{role}:{digest(token)}"


@dataclass(frozen=True)
class Credential:
    caller: str
    role: Role
    digest: bytes

    def allows(self, method: str) -> bool:
        return self.role == "operate" or method.upper() in READ_METHODS


def parse(config: str) -> list[Credential]:
    """`caller:role:sha256hex` entries, separated by commas or whitespace. A malformed entry
    is an error (the service does not start), never a silently dropped caller."""
    found = []
    for item in re.split(r"[,\s]+", config.strip()):
        if not item:
            continue
        match = ENTRY.match(item)
        if not match or not CALLER_NAME.match(match["caller"]) or match["role"] not in ROLES:
            # the digest is not secret but keep the message short and free of it
            raise ValueError(
                f"admin token entry {item.split(':', 1)[0]!r}:… is not caller:role:sha256"
            )
        role: Role = "operate" if match["role"] == "operate" else "read"
        found.append(Credential(match["caller"], role, bytes.fromhex(match["digest"])))
    return found


class Credentials:
    def __init__(self, credentials: Iterable[Credential]):
        self.credentials = list(credentials)

    def __bool__(self) -> bool:
        return bool(self.credentials)

    def identify(self, token: str) -> Credential | None:
        """The credential whose digest is the token's; every entry is compared, in constant
        time, so the answer's timing says nothing about which one nearly matched."""
        offered = hashlib.sha256(token.encode()).digest()
        found = None
        for credential in self.credentials:
            if hmac.compare_digest(offered, credential.digest):
                found = credential
        return found


class FailedAttempts:
    """Bad credentials per client address in a sliding window. The table is bounded (the
    oldest addresses are forgotten first), so a flood of addresses costs memory, not
    correctness: an address is never refused for lack of room."""

    def __init__(
        self,
        limit: int = 10,
        window_s: float = 60.0,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self._seen: TTLCache[str, deque[float]] = TTLCache(max_addresses, window_s, timer=clock)

    def retry_after(self, address: str) -> float:
        """Seconds until `address` may try again; 0 when it may now."""
        times = self._seen.get(address)
        if times is None or len(times) < self.limit:
            return 0.0
        return max(0.0, times[0] + self.window_s - self.clock())

    def failed(self, address: str) -> bool:
        """Record a failure; True when it is the one that crosses the limit."""
        times = self._seen.get(address) or deque(maxlen=self.limit)
        now = self.clock()
        while times and times[0] + self.window_s <= now:
            times.popleft()
        times.append(now)
        self._seen[address] = times  # re-inserting renews the entry's time to live
        return len(times) == self.limit


def caller_of(request: web.Request) -> str:
    """The name of the caller whose token opened this admin request."""
    return request.get(_CALLER_KEY, "")


def _refuse(status: int, error: str, detail: str, **headers: str) -> web.Response:
    return web.json_response({"error": error, "detail": detail}, status=status, headers=headers)


def admin_guard(
    service: str,
    config: str,
    *,
    prefixes: tuple[str, ...] = ("/admin/",),
    attempts: FailedAttempts | None = None,
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """A middleware that lets requests under `prefixes` through only with a token of this
    service whose role allows the method."""
    credentials = Credentials(parse(config))
    attempts = attempts or FailedAttempts()
    for reason in REFUSAL_REASONS:
        REFUSED.labels(service, reason)

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(prefixes):
            return await handler(request)
        if not credentials:
            return _refuse(403, "admin_disabled", "no admin token is configured")
        offered = bearer_token(request.headers.get("Authorization", ""))
        found = credentials.identify(offered) if offered else None
        if found is None:
            address = request.remote or ""
            wait = attempts.retry_after(address)
            if wait > 0:
                REFUSED.labels(service, "throttled").inc()
                return _refuse(
                    429,
                    "too_many_attempts",
                    "too many bad credentials from this address",
                    **{"Retry-After": str(math.ceil(wait))},
                )
            if attempts.failed(address):
                log.warning("admin credentials refused %d times from %s", attempts.limit, address)
            REFUSED.labels(service, "invalid" if offered else "missing").inc()
            return _refuse(
                401,
                "unauthorized",
                "a valid bearer token is required",
                **{"WWW-Authenticate": "Bearer"},
            )
        if not found.allows(request.method):
            REFUSED.labels(service, "forbidden").inc()
            return _refuse(
                403, "forbidden", f"{found.caller}'s token is {found.role}-only on {service}"
            )
        request[_CALLER_KEY] = found.caller
        return await handler(request)

    return guard
