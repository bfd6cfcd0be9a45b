"""What a delivery needs besides the event, in three parts given at construction:

- `DeliveryPolicy`: how hard and how long a part is tried (fixed for the process);
- `Channels`: who can carry a message (providers by channel, each one's circuit and rate) and
  what it is made of (the code cipher, the stores' templates);
- `InFlight`: what this replica is doing now (parts in flight, revocations heard, reports
  still to publish, attempts waiting for a receipt, the journal).

The statuses a part and an attempt go through are the values stored in `deliveries.status` and
`attempts.status`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
from aiolimiter import AsyncLimiter

from services.notifier import messages
from services.notifier.breaker import CircuitBreaker
from services.notifier.journal import Journal
from services.notifier.policy import StoreDirectory
from services.notifier.providers import Provider
from services.notifier.recovery import ReceiptWaiter
from shared.codecrypt import CodeCipher
from shared.events import CodeAllocated, Event

log = logging.getLogger(__name__)


class PartStatus(enum.StrEnum):
    """A part's delivery (`deliveries.status`)."""

    PENDING = "pending"  # claimed, nothing sent yet
    SENDING = "sending"  # an attempt has begun
    ACCEPTED = "accepted"  # a provider took the message
    DELIVERED = "delivered"  # its receipt says the buyer has it
    FAILED = "failed"  # every route was tried
    REVOKED = "revoked"  # withdrawn (`code.revoked`) before it was sent


FINISHED = frozenset(
    {PartStatus.ACCEPTED, PartStatus.DELIVERED, PartStatus.FAILED, PartStatus.REVOKED}
)


class AttemptStatus(enum.StrEnum):
    """One provider call (`attempts.status`)."""

    SENDING = "sending"
    ACCEPTED = "accepted"
    DELIVERED = "delivered"
    FAILED = "failed"  # the provider refused it
    UNDELIVERED = "undelivered"  # accepted, then reported failed
    UNKNOWN = "unknown"  # interrupted, and no receipt came: sent again


class Purpose(enum.StrEnum):
    """Why an attempt was made (`attempts.purpose`)."""

    DELIVERY = "delivery"
    RESEND = "resend"  # an operator's (resend.py)


@dataclass(frozen=True)
class DeliveryPolicy:
    """How hard and how long each part is tried."""

    deadline_s: float
    attempts_per_provider: int = 4
    backoff_s: float = 0.05
    # None: a batch waits for all its messages (tests, tools); else how long it may wait
    hold_s: float | None = None
    max_inflight: int = 5000
    # a redelivered part still 'sending' is resumed only once untouched this long (0: at once,
    # right for a single process; with replicas, longer than a message can take)
    resume_after_s: float = 0.0
    # how long the resume of an interrupted attempt waits for its receipt (recovery.py)
    receipt_wait_s: float = 0.0


@dataclass(slots=True)
class Channels:
    """Providers by channel, in default order, with each one's circuit and rate limit, and what
    a message is made of."""

    providers: dict[str, list[Provider]]
    cipher: CodeCipher
    # at most this many provider calls at once (the HTTP connector has as many connections)
    concurrency: asyncio.Semaphore
    stores: StoreDirectory = field(default_factory=StoreDirectory)
    whatsapp_template: str = messages.DEFAULT_WHATSAPP_TEMPLATE
    breakers: dict[str, CircuitBreaker] = field(default_factory=dict)
    limiters: dict[str, AsyncLimiter] = field(default_factory=dict)

    def breaker(self, provider: str) -> CircuitBreaker:
        if provider not in self.breakers:
            self.breakers[provider] = CircuitBreaker(provider)
        return self.breakers[provider]

    def provider(self, name: str) -> Provider | None:
        return next((p for ps in self.providers.values() for p in ps if p.name == name), None)


Reports = Callable[[list[Event]], Awaitable[None]]


class InFlight:
    """This replica's parts in flight and what it heard about them: revocations, receipts."""

    __slots__ = ("_background", "journal", "on_late", "revoked", "tasks", "waiter")

    def __init__(
        self, journal: Journal, on_late: Reports | None = None, waiter: ReceiptWaiter | None = None
    ):
        self.journal = journal
        # publishes the reports of parts that outlived their batch's hold
        self.on_late = on_late
        self.waiter = waiter or ReceiptWaiter()
        self.tasks: dict[str, asyncio.Task[Event | None]] = {}
        self.revoked: set[tuple[str, int]] = set()
        self._background: set[asyncio.Task[None]] = set()

    def is_revoked(self, event: CodeAllocated) -> bool:
        return (event.order_key, event.part) in self.revoked or (
            event.order_key,
            0,
        ) in self.revoked

    def start(
        self, coro: Awaitable[Event | None], allocation_event_id: str
    ) -> asyncio.Task[Event | None]:
        task: asyncio.Task[Event | None] = asyncio.ensure_future(coro)
        self.tasks[allocation_event_id] = task
        task.add_done_callback(lambda _: self.tasks.pop(allocation_event_id, None))
        return task

    def late_reports(self) -> list[asyncio.Task[None]]:
        """The late reports being published now (drained before the producer closes)."""
        return list(self._background)

    def publish_later(self, task: asyncio.Task[Event | None]) -> None:
        """Publish a message's report when it finishes, after its batch was committed."""

        def done(t: asyncio.Task[Event | None]) -> None:
            if t.cancelled():
                return
            if t.exception() is not None:
                # the part stays 'sending' in the journal: the resume sweep picks it up
                log.error("a delivery failed outside its batch: %r", t.exception())
                return
            report = t.result()
            if report is not None and self.on_late is not None:
                publishing = asyncio.ensure_future(self.on_late([report]))
                self._background.add(publishing)
                publishing.add_done_callback(self._background.discard)

        task.add_done_callback(done)


@dataclass(slots=True)
class Delivery:
    """A delivery's policy, channels and in-flight state."""

    policy: DeliveryPolicy
    channels: Channels
    inflight: InFlight

    @classmethod
    def over(
        cls,
        pool: asyncpg.Pool,
        channels: Channels,
        policy: DeliveryPolicy,
        on_late: Reports | None = None,
    ) -> Delivery:
        """A delivery journalled in `pool`, with nothing in flight yet."""
        return cls(policy, channels, InFlight(Journal(pool), on_late))
