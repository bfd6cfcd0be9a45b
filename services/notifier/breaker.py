"""A circuit breaker per provider: skip a provider that keeps failing, probe it after a rest.

Small on purpose (the PyPI breakers wrap a call in a context manager and raise when open;
the notifier needs a non-blocking "may I?" to pick the next channel without waiting, to count
only availability failures — a buyer not on WhatsApp says nothing about WhatsApp's health —
and to export its state as a metric).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import IntEnum

from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)

STATE = Gauge(
    "tasleem_notifier_provider_state",
    "Circuit breaker per provider: 0 closed, 1 half-open (probing), 2 open (skipped)",
    ["provider"],
)
CIRCUIT_OPEN = Gauge(
    "tasleem_provider_circuit_open",
    "1 while the provider's circuit is not closed (open, or half-open with one probe), else 0",
    ["provider"],
)
TRANSITIONS = Counter(
    "tasleem_notifier_breaker_transitions_total",
    "Circuit breaker state changes",
    ["provider", "to"],
)


class State(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    """Opens after `threshold` failures in a row; after `cooldown_s` lets one probe through."""

    def __init__(
        self,
        provider: str,
        threshold: int = 5,
        cooldown_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.provider = provider
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.failures = 0
        self.opened_at = 0.0
        self.state = State.CLOSED
        STATE.labels(provider).set(0)
        CIRCUIT_OPEN.labels(provider).set(0)

    def allow(self) -> bool:
        """May a call go to this provider now? Never waits."""
        if self.state is State.CLOSED:
            return True
        if self.state is State.OPEN and self.clock() - self.opened_at >= self.cooldown_s:
            self._move(State.HALF_OPEN)
            return True  # this caller is the probe
        return False

    def success(self) -> None:
        self.failures = 0
        if self.state is not State.CLOSED:
            self._move(State.CLOSED)

    def failure(self) -> None:
        self.failures += 1
        if self.state is State.HALF_OPEN or (
            self.state is State.CLOSED and self.failures >= self.threshold
        ):
            self.opened_at = self.clock()
            self._move(State.OPEN)

    def _move(self, state: State) -> None:
        log.warning("provider %s circuit %s -> %s", self.provider, self.state.name, state.name)
        self.state = state
        STATE.labels(self.provider).set(int(state))
        CIRCUIT_OPEN.labels(self.provider).set(0 if state is State.CLOSED else 1)
        TRANSITIONS.labels(self.provider, state.name.lower()).inc()
