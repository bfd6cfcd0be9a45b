"""One failure vocabulary for every service: what went wrong, and what the caller should do.

Each service keeps its own precise failures (the gateway's refusals, a provider's answer, a
supplier's), but every one derives from `Failure`, so the parts that meet them all treat them
alike:

- the consumer loop (`shared.kafka`) retries a `Fate.RETRY` failure with backoff, and
  dead-letters any other with `code: detail` as the reason;
- the HTTP servers (`shared.http_errors`) answer a `Failure` no handler caught with its
  `status` and `{"error": code, "detail": detail}`;
- senders and buyers fail over to the next provider or supplier on `Fate.FAIL_OVER`.

`detail` is shown to callers and written to logs and dead-letter headers: it must never hold a
secret or a plain-text code.
"""

from __future__ import annotations

from enum import StrEnum


class Fate(StrEnum):
    """What the caller should do about a failure."""

    # a dependency is down or busy: the same call may succeed later
    RETRY = "retry"
    # the input is wrong: the same call will never succeed (dead-letter it, answer 4xx)
    REFUSE = "refuse"
    # this party said no for good; another one may say yes (the next provider or supplier)
    FAIL_OVER = "fail_over"


class Failure(Exception):
    """Root of every failure a service raises on purpose: a stable snake_case `code`, a
    `detail` a person can act on, the HTTP `status` it ends a request with, and its `fate`."""

    code: str = "failure"
    status: int = 500
    fate: Fate = Fate.REFUSE

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    @property
    def retriable(self) -> bool:
        return self.fate is Fate.RETRY

    def summary(self) -> str:
        """The one-line reason for a dead-letter entry or a log line."""
        return f"{self.code}: {self.detail}"


class Refused(Failure):
    """The input is wrong; retrying the same cannot help."""

    code = "refused"
    status = 422
    fate = Fate.REFUSE


class Unavailable(Failure):
    """A dependency is down or busy; the same call may succeed later."""

    code = "unavailable"
    status = 503
    fate = Fate.RETRY
