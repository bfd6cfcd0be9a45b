"""Carrying out purchases: route to a supplier, order once, poll, fail over, publish the codes.

Each sku's purchase runs in its own asyncio task, so a slow or "pending" supplier holds up
only that sku, never the agent reading `inventory.level` nor the other skus. Every step is
written to the table before the supplier is called (`sent` = "an order may exist there"),
and a purchase with `sent` set is always looked up by its reference before it is placed
again. A sweep restarts purchases that wait for a retry, and those found in the table after
a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Protocol

from prometheus_client import Counter, Gauge

from services.restocker.policy import (
    Offer,
    Purchase,
    SkuState,
    affordable,
    rank,
    resize,
)
from services.restocker.suppliers import (
    FAIL_OVER_AT_ONCE,
    Delivery,
    Pending,
    Reason,
    Supplier,
    SupplierError,
)

log = logging.getLogger(__name__)

PURCHASES = Counter(
    "tasleem_restocker_purchases_total", "Purchases completed, by supplier", ["supplier"]
)
CODES_BOUGHT = Counter("tasleem_restocker_codes_bought_total", "Codes bought", ["sku", "supplier"])
SUPPLIER_ERRORS = Counter(
    "tasleem_restocker_supplier_errors_total", "Failed supplier calls", ["supplier", "reason"]
)
FAILOVERS = Counter(
    "tasleem_restocker_failovers_total", "Purchases moved to the next supplier", ["supplier"]
)
STOCK_LOW = Gauge(
    "tasleem_restocker_stock_low",
    "1 while no supplier can restock the sku (alert on this)",
    ["sku"],
)
RESTOCK_BLOCKED = Counter(
    "tasleem_restocker_restock_blocked_total",
    "Times a sku could not be restocked, by reason",
    ["sku", "reason"],
)

Publish = Callable[[str, str, Purchase, Delivery], Awaitable[None]]


class Ledger(Protocol):
    """Where sku states live (the faust table)."""

    def get(self, sku: str) -> SkuState: ...

    def put(self, sku: str, state: SkuState) -> None: ...

    def skus(self) -> Iterable[str]: ...


@dataclass(frozen=True)
class Limits:
    max_failures: int = 3  # failed calls in a row before the next supplier is tried
    retry_s: float = 2.0  # first pause after a failure; doubles, up to `retry_max_s`
    retry_max_s: float = 30.0
    blocked_retry_s: float = 30.0  # when no supplier can sell: ask them all again after this
    poll_s: float = 1.0  # how often a pending order is looked at
    resume_after_s: float = 20.0  # a published purchase not in the vault by then is re-sent
    sku_stores: dict[str, str] | None = None
    daily_caps: dict[str, Decimal] | None = None  # store id -> spend cap per UTC day
    default_daily_cap: Decimal | None = None


def today(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")


class Purchasing:
    def __init__(
        self,
        ledger: Ledger,
        suppliers: list[Supplier],
        publish: Publish,
        limits: Limits,
        clock: Callable[[], float] = time.time,
        durable: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.ledger = ledger
        self.suppliers = {s.name: s for s in suppliers}
        self.publish = publish
        self.limits = limits
        self.clock = clock
        # waits until what was written to the ledger is safe (the changelog is on the broker)
        self.durable = durable
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def kick(self, sku: str) -> None:
        """Start (or resume) the sku's purchase if it has one that is due."""
        running = self.tasks.get(sku)
        if running is not None and not running.done():
            return
        purchase = self.ledger.get(sku).purchase
        if purchase is None or not self._due(purchase, self.clock()):
            return
        self.tasks[sku] = asyncio.create_task(self._run(sku), name=f"purchase {sku}")

    def sweep(self) -> None:
        for sku in list(self.ledger.skus()):
            self.kick(sku)

    async def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        for task in self.tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _due(self, purchase: Purchase, now: float) -> bool:
        if purchase.status == "published":
            return now - purchase.published_at >= self.limits.resume_after_s
        return now >= purchase.next_try_at

    async def _run(self, sku: str) -> None:
        try:
            await self._advance(sku)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("purchase of %s stopped on an unexpected error; it is retried", sku)
            state = self.ledger.get(sku)
            if state.purchase is not None:
                state.purchase.next_try_at = self.clock() + self.limits.retry_max_s
                self.ledger.put(sku, state)

    async def _advance(self, sku: str) -> None:
        while True:
            state = self.ledger.get(sku)
            purchase = state.purchase
            if purchase is None:
                return
            if purchase.status == "published":
                if purchase.republished:
                    # bought and published twice, yet the vault counts fewer codes (some were
                    # duplicates of codes it holds): the purchase is done, as far as it can be
                    log.warning(
                        "purchase %s landed short in the vault; closing it", purchase.reference
                    )
                    self._close(sku, purchase)
                    return
                purchase.republished = True
            if purchase.supplier is None and not await self._choose(sku, purchase):
                return
            assert purchase.supplier is not None
            supplier = self.suppliers.get(purchase.supplier)
            if supplier is None:  # configuration changed since: the order cannot be followed
                if purchase.sent:  # it may have been charged there: a human decides
                    self._alert(
                        sku,
                        f"order {purchase.reference} is with {purchase.supplier}, "
                        "which is no longer configured",
                        "unconfirmed",
                    )
                    purchase.next_try_at = self.clock() + self.limits.blocked_retry_s
                    self._save(sku, purchase)
                    return
                purchase.tried.append(purchase.supplier)
                purchase.supplier = None
                self._save(sku, purchase)
                continue
            try:
                outcome = None
                if purchase.sent:
                    outcome = await supplier.find(sku, purchase.reference)
                if outcome is None and purchase.published_at:
                    # its codes went out already; never order it again on a supplier's word
                    log.error(
                        "purchase %s was published but %s no longer finds it; closing it",
                        purchase.reference,
                        supplier.name,
                    )
                    self._close(sku, purchase)
                    return
                if outcome is None:
                    purchase.sent = True
                    purchase.status = "ordering"
                    if not self._save(sku, purchase):  # recorded before the call
                        return
                    if self.durable is not None:
                        await self.durable()
                    outcome = await supplier.place(sku, purchase.quantity, purchase.reference)
            except SupplierError as exc:
                if not self._failed(sku, supplier, purchase, exc):
                    return
                continue
            if isinstance(outcome, Pending):
                purchase.status = "pending"
                purchase.failures = 0
                if not self._save(sku, purchase):
                    return
                await asyncio.sleep(self.limits.poll_s)
                continue
            await self._deliver(sku, supplier, purchase, outcome)
            return

    async def _choose(self, sku: str, purchase: Purchase) -> bool:
        """Pick the supplier for the purchase and reserve its cost; False when none can."""
        now = self.clock()
        offers = []
        for supplier in self.suppliers.values():
            if not supplier.sells(sku) or supplier.name in purchase.tried:
                continue
            try:
                price: Decimal | None = await supplier.unit_price(sku)
            except SupplierError as exc:
                SUPPLIER_ERRORS.labels(supplier.name, exc.reason).inc()
                if exc.reason in FAIL_OVER_AT_ONCE:
                    continue
                price = None
            offers.append(Offer(supplier.name, supplier.priority, price))
        ranked = rank(offers)
        if not ranked:
            detail = purchase.last_error or "no supplier sells it"
            self._block(sku, purchase, f"no supplier can restock it ({detail})", "no_supplier")
            return False
        best = ranked[0]
        day = today(now)
        state = self.ledger.get(sku)
        if best.unit_price is not None:
            cap, store = self._cap(sku)
            spent = self._spent_by_store(store, day) if store is not None else state.spent(day)
            fits = affordable(best.unit_price, spent, cap, purchase.quantity)
            if fits < purchase.quantity:
                if fits < 1:
                    self._block(
                        sku, purchase, f"daily spend cap of store {store} reached", "spend_cap"
                    )
                    return False
                resize(purchase, sku, fits)
        cost = (best.unit_price or Decimal(0)) * purchase.quantity
        purchase.supplier = best.supplier
        purchase.unit_price = str(best.unit_price) if best.unit_price is not None else None
        purchase.reserved = str(cost)
        purchase.reserved_day = day
        purchase.status = "ordering"
        state.spend = {day: str(state.spent(day) + cost)}  # only today's figure matters
        if state.alert:
            log.info("stock.low cleared for %s: buying from %s", sku, best.supplier)
            STOCK_LOW.labels(sku).set(0)
        state.alert = ""
        state.purchase = purchase
        self.ledger.put(sku, state)
        return True

    def _failed(self, sku: str, supplier: Supplier, purchase: Purchase, exc: SupplierError) -> bool:
        """Record a failed call; True when the purchase should go on at once (failover)."""
        SUPPLIER_ERRORS.labels(supplier.name, exc.reason).inc()
        purchase.last_error = str(exc)
        if exc.settled:
            purchase.sent = False
        purchase.failures += 1
        if not purchase.sent and (
            exc.reason in FAIL_OVER_AT_ONCE or purchase.failures >= self.limits.max_failures
        ):
            log.warning(
                "purchase %s: %s failed (%s); trying the next supplier",
                purchase.reference,
                supplier.name,
                exc.reason,
            )
            FAILOVERS.labels(supplier.name).inc()
            self._release(sku, purchase)
            purchase.tried.append(supplier.name)
            purchase.supplier = None
            purchase.failures = 0
            purchase.status = "routing"
            return self._save(sku, purchase)
        pause = min(self.limits.retry_s * 2 ** (purchase.failures - 1), self.limits.retry_max_s)
        purchase.next_try_at = self.clock() + pause
        purchase.status = "retrying"
        log.warning(
            "purchase %s at %s failed (%s), try %d; again in %.1fs",
            purchase.reference,
            supplier.name,
            exc,
            purchase.failures,
            pause,
        )
        if purchase.sent and purchase.failures >= self.limits.max_failures:
            # it may have been charged: never buy it elsewhere before the supplier answers
            self._alert(
                sku,
                f"order {purchase.reference} at {supplier.name} cannot be confirmed ({exc.reason})",
                "unconfirmed",
            )
        self._save(sku, purchase)
        return False

    async def _deliver(
        self, sku: str, supplier: Supplier, purchase: Purchase, delivery: Delivery
    ) -> None:
        if not delivery.codes:
            self._failed(
                sku,
                supplier,
                purchase,
                SupplierError(
                    f"{supplier.name}: order has no codes", Reason.UNKNOWN_OUTCOME, False
                ),
            )
            return
        first_time = not purchase.published_at
        await self.publish(sku, supplier.name, purchase, delivery)
        if first_time:
            PURCHASES.labels(supplier.name).inc()
            CODES_BOUGHT.labels(sku, supplier.name).inc(len(delivery.codes))
        log.info(
            "bought %d codes of %s from %s (ref %s)",
            len(delivery.codes),
            sku,
            supplier.name,
            purchase.reference,
        )
        state = self.ledger.get(sku)
        if first_time:
            state.purchases += 1
            state.bought += len(delivery.codes)
        if state.purchase is not None and state.purchase.decided_at == purchase.decided_at:
            purchase.status = "published"
            purchase.published_at = self.clock()
            purchase.expected_total = purchase.base_total + len(delivery.codes)
            purchase.failures = 0
            state.purchase = purchase
            if state.received_total >= purchase.expected_total:
                state.purchase = None  # the vault already has them
        self.ledger.put(sku, state)
        if self.durable is not None:
            await self.durable()  # else a restart finds it unpublished and publishes again

    def _block(self, sku: str, purchase: Purchase, reason: str, kind: str) -> None:
        """Nothing can be bought now: alert, and ask every supplier again later."""
        purchase.tried = []
        purchase.supplier = None
        purchase.status = "blocked"
        purchase.next_try_at = self.clock() + self.limits.blocked_retry_s
        self._alert(sku, reason, kind)
        self._save(sku, purchase)

    def _alert(self, sku: str, reason: str, kind: str) -> None:
        state = self.ledger.get(sku)
        cover = state.available / state.rate / 60 if state.rate > 1e-9 else None
        log.error(
            "stock.low sku=%s reason=%s: %s; available=%d backordered=%d cover_minutes=%s",
            sku,
            kind,
            reason,
            state.available,
            state.backordered,
            "inf" if cover is None else f"{cover:.1f}",
        )
        STOCK_LOW.labels(sku).set(1)
        RESTOCK_BLOCKED.labels(sku, kind).inc()
        state.alert = reason
        self.ledger.put(sku, state)

    def _release(self, sku: str, purchase: Purchase) -> None:
        """A refused order costs nothing: give its reservation back."""
        state = self.ledger.get(sku)
        reserved = Decimal(purchase.reserved)
        if reserved and purchase.reserved_day in state.spend:
            left = max(Decimal(0), state.spent(purchase.reserved_day) - reserved)
            state.spend[purchase.reserved_day] = str(left)
            self.ledger.put(sku, state)
        purchase.reserved = "0"

    def _save(self, sku: str, purchase: Purchase) -> bool:
        """Write the purchase back; False when it is no longer the sku's (it landed)."""
        state = self.ledger.get(sku)
        if state.purchase is None or state.purchase.decided_at != purchase.decided_at:
            return False
        state.purchase = purchase
        self.ledger.put(sku, state)
        return True

    def _close(self, sku: str, purchase: Purchase) -> None:
        state = self.ledger.get(sku)
        if state.purchase is not None and state.purchase.decided_at == purchase.decided_at:
            state.purchase = None
            self.ledger.put(sku, state)

    def _cap(self, sku: str) -> tuple[Decimal | None, str | None]:
        store = (self.limits.sku_stores or {}).get(sku)
        caps = self.limits.daily_caps or {}
        if store is not None and store in caps:
            return caps[store], store
        return self.limits.default_daily_cap, store

    def _spent_by_store(self, store: str, day: str) -> Decimal:
        stores = self.limits.sku_stores or {}
        return sum(
            (
                self.ledger.get(sku).spent(day)
                for sku in self.ledger.skus()
                if stores.get(sku) == store
            ),
            Decimal(0),
        )
