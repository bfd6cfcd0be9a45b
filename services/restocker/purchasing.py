"""Carrying out purchases: route to a supplier, order once, poll, fail over, publish the codes.

Each sku's purchase runs in its own asyncio task, so a slow or "pending" supplier holds up
only that sku, never the agent reading `inventory.level` nor the other skus. Every step is
written to the table before the supplier is called (`sent` = "an order may exist there"),
and a purchase with `sent` set is always looked up by its reference before it is placed
again. A sweep restarts purchases that wait for a retry, and those found in the table after
a restart.

Failing over: a supplier that surely holds no order (it answered no, or 503) may be left for
the next one. Stock bought ahead tries the preferred supplier `max_failures` times first; a
purchase that buyers wait for (backordered units) moves on at the first such failure, and a
supplier that is down or throttling then rests for `rest_s`, skipped by every purchase that
has another supplier, so each does not pay its own retries (bench `headline`: with the first
supplier down, paid -> delivered p50 went from 29 s to under 3 s).
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
    Policy,
    Purchase,
    PurchaseStatus,
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
from shared.events import Stock

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
    "1 while no supplier can restock the account's sku (alert on this)",
    ["account", "sku"],
)
RESTOCK_BLOCKED = Counter(
    "tasleem_restocker_restock_blocked_total",
    "Times a sku could not be restocked, by reason",
    ["sku", "reason"],
)

Publish = Callable[[Stock, str, Purchase, Delivery], Awaitable[None]]
OTHER = "other"  # the metric label of every sku no supplier sells and no policy names


class Ledger(Protocol):
    """Where the state of each stock (an account's sku) lives (the faust table)."""

    def get(self, stock: Stock) -> SkuState: ...

    def put(self, stock: Stock, state: SkuState) -> None: ...

    def stocks(self) -> Iterable[Stock]: ...


@dataclass(frozen=True)
class Limits:
    max_failures: int = 3  # failed calls in a row before the next supplier is tried
    rest_s: float = 30.0  # a supplier found down or throttling is skipped this long
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
        known_skus: Iterable[str] = (),
    ) -> None:
        self.ledger = ledger
        self.suppliers = {s.name: s for s in suppliers}
        self.publish = publish
        self.limits = limits
        self.clock = clock
        # waits until what was written to the ledger is safe (the changelog is on the broker)
        self.durable = durable
        self.tasks: dict[Stock, asyncio.Task[None]] = {}
        self.known_skus = set(known_skus)  # skus a policy names, besides those suppliers sell
        self._unknown_short: set[Stock] = set()  # short stocks of skus nothing can buy
        self._unknown_new: list[Stock] = []  # ... found since the last report
        self._resting: dict[str, float] = {}  # supplier -> until when purchases skip it

    def kick(self, stock: Stock) -> None:
        """Start (or resume) the sku's purchase if it has one that is due."""
        running = self.tasks.get(stock)
        if running is not None and not running.done():
            return
        purchase = self.ledger.get(stock).purchase
        if purchase is None or not self._due(purchase, self.clock()):
            return
        self.tasks[stock] = asyncio.create_task(self._run(stock), name=f"purchase {stock}")

    def sweep(self) -> None:
        for stock in list(self.ledger.stocks()):
            self.kick(stock)

    async def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        for task in self.tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _due(self, purchase: Purchase, now: float) -> bool:
        if purchase.status == PurchaseStatus.PUBLISHED:
            return now - purchase.published_at >= self.limits.resume_after_s
        return now >= purchase.next_try_at

    async def _run(self, stock: Stock) -> None:
        try:
            await self._advance(stock)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("purchase of %s stopped on an unexpected error; it is retried", stock)
            state = self.ledger.get(stock)
            if state.purchase is not None:
                state.purchase.next_try_at = self.clock() + self.limits.retry_max_s
                self.ledger.put(stock, state)

    async def _advance(self, stock: Stock) -> None:
        while True:
            state = self.ledger.get(stock)
            purchase = state.purchase
            if purchase is None:
                return
            if purchase.status == PurchaseStatus.PUBLISHED:
                if purchase.republished:
                    # bought and published twice, yet the vault counts fewer codes (some were
                    # duplicates of codes it holds): the purchase is done, as far as it can be
                    log.warning(
                        "purchase %s landed short in the vault; closing it", purchase.reference
                    )
                    self._close(stock, purchase)
                    return
                purchase.republished = True
            if purchase.supplier is None and not await self._choose(stock, purchase):
                return
            assert purchase.supplier is not None
            supplier = self.suppliers.get(purchase.supplier)
            if supplier is None:  # configuration changed since: the order cannot be followed
                if purchase.sent:  # it may have been charged there: a human decides
                    self._alert(
                        stock,
                        f"order {purchase.reference} is with {purchase.supplier}, "
                        "which is no longer configured",
                        "unconfirmed",
                    )
                    purchase.next_try_at = self.clock() + self.limits.blocked_retry_s
                    self._save(stock, purchase)
                    return
                purchase.tried.append(purchase.supplier)
                purchase.supplier = None
                self._save(stock, purchase)
                continue
            try:
                outcome = None
                if purchase.sent:
                    try:
                        outcome = await supplier.find(stock.sku, purchase.reference)
                    except SupplierError as exc:
                        # an order may exist there: a failed lookup settles nothing, whatever
                        # the supplier answered (a refused login, a 503)
                        exc.settled = False
                        raise
                if outcome is None and purchase.published_at:
                    # its codes went out already; never order it again on a supplier's word
                    log.error(
                        "purchase %s was published but %s no longer finds it; closing it",
                        purchase.reference,
                        supplier.name,
                    )
                    self._close(stock, purchase)
                    return
                if outcome is None:
                    purchase.sent = True
                    purchase.status = PurchaseStatus.ORDERING
                    if not self._save(stock, purchase):  # recorded before the call
                        return
                    if self.durable is not None:
                        await self.durable()
                    outcome = await supplier.place(stock.sku, purchase.quantity, purchase.reference)
            except SupplierError as exc:
                if not self._failed(stock, supplier, purchase, exc):
                    return
                continue
            if isinstance(outcome, Pending):
                purchase.status = PurchaseStatus.PENDING
                purchase.failures = 0
                if not self._save(stock, purchase):
                    return
                await asyncio.sleep(self.limits.poll_s)
                continue
            await self._deliver(stock, supplier, purchase, outcome)
            return

    async def _choose(self, stock: Stock, purchase: Purchase) -> bool:
        """Pick the supplier for the purchase and reserve its cost; False when none can."""
        now = self.clock()
        offers = []
        for supplier in self.suppliers.values():
            if not supplier.sells(stock.sku) or supplier.name in purchase.tried:
                continue
            try:
                price: Decimal | None = await supplier.unit_price(stock.sku)
            except SupplierError as exc:
                SUPPLIER_ERRORS.labels(supplier.name, exc.reason).inc()
                if exc.reason in FAIL_OVER_AT_ONCE:
                    continue
                price = None
            offers.append(Offer(supplier.name, supplier.priority, price))
        awake = [o for o in offers if self._resting.get(o.supplier, 0.0) <= now]
        ranked = rank(awake or offers)  # a resting supplier only when no other sells it
        if not ranked:
            detail = purchase.last_error or "no supplier sells it"
            self._block(stock, purchase, f"no supplier can restock it ({detail})", "no_supplier")
            return False
        best = ranked[0]
        day = today(now)
        state = self.ledger.get(stock)
        if best.unit_price is not None:
            cap, store = self._cap(stock)
            spent = self._spent_by_store(store, day) if store is not None else state.spent(day)
            fits = affordable(best.unit_price, spent, cap, purchase.quantity)
            if fits < purchase.quantity:
                if fits < 1:
                    self._block(
                        stock, purchase, f"daily spend cap of store {store} reached", "spend_cap"
                    )
                    return False
                resize(purchase, fits)
        cost = (best.unit_price or Decimal(0)) * purchase.quantity
        purchase.supplier = best.supplier
        purchase.unit_price = str(best.unit_price) if best.unit_price is not None else None
        purchase.reserved = str(cost)
        purchase.reserved_day = day
        purchase.status = PurchaseStatus.ORDERING
        state.spend = {day: str(state.spent(day) + cost)}  # only today's figure matters
        if state.alert:
            log.info("stock.low cleared for %s: buying from %s", stock, best.supplier)
            STOCK_LOW.labels(*self.labels(stock)).set(0)
        state.alert = ""
        state.purchase = purchase
        self.ledger.put(stock, state)
        return True

    def _failed(
        self, stock: Stock, supplier: Supplier, purchase: Purchase, exc: SupplierError
    ) -> bool:
        """Record a failed call; True when the purchase should go on at once (failover)."""
        SUPPLIER_ERRORS.labels(supplier.name, exc.reason).inc()
        purchase.last_error = str(exc)
        if exc.settled:
            purchase.sent = False
        purchase.failures += 1
        # buyers wait for these codes: move on at once, if another supplier can take it (with
        # none left, the same supplier's retry beats blocking for `blocked_retry_s`)
        hurry = self.ledger.get(stock).backordered > 0 and self._another_sells(
            stock, supplier, purchase
        )
        if not purchase.sent and (
            exc.reason in FAIL_OVER_AT_ONCE
            or hurry
            or purchase.failures >= self.limits.max_failures
        ):
            if exc.reason in (Reason.UNAVAILABLE, Reason.RATE_LIMITED):
                self._resting[supplier.name] = self.clock() + self.limits.rest_s
            log.warning(
                "purchase %s: %s failed (%s); trying the next supplier",
                purchase.reference,
                supplier.name,
                exc.reason,
            )
            FAILOVERS.labels(supplier.name).inc()
            self._release(stock, purchase)
            purchase.tried.append(supplier.name)
            purchase.supplier = None
            purchase.failures = 0
            purchase.status = PurchaseStatus.ROUTING
            return self._save(stock, purchase)
        pause = min(self.limits.retry_s * 2 ** (purchase.failures - 1), self.limits.retry_max_s)
        purchase.next_try_at = self.clock() + pause
        purchase.status = PurchaseStatus.RETRYING
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
                stock,
                f"order {purchase.reference} at {supplier.name} cannot be confirmed ({exc.reason})",
                "unconfirmed",
            )
        self._save(stock, purchase)
        return False

    def _another_sells(self, stock: Stock, supplier: Supplier, purchase: Purchase) -> bool:
        return any(
            other.sells(stock.sku) and other.name not in (supplier.name, *purchase.tried)
            for other in self.suppliers.values()
        )

    async def _deliver(
        self, stock: Stock, supplier: Supplier, purchase: Purchase, delivery: Delivery
    ) -> None:
        if not delivery.codes:
            self._failed(
                stock,
                supplier,
                purchase,
                SupplierError(
                    f"{supplier.name}: order has no codes", Reason.UNKNOWN_OUTCOME, False
                ),
            )
            return
        first_time = not purchase.published_at
        await self.publish(stock, supplier.name, purchase, delivery)
        if first_time:
            PURCHASES.labels(supplier.name).inc()
            CODES_BOUGHT.labels(self.labels(stock)[1], supplier.name).inc(len(delivery.codes))
        log.info(
            "bought %d codes of %s from %s (ref %s)",
            len(delivery.codes),
            stock,
            supplier.name,
            purchase.reference,
        )
        state = self.ledger.get(stock)
        if first_time:
            state.purchases += 1
            state.bought += len(delivery.codes)
        if state.purchase is not None and state.purchase.decided_at == purchase.decided_at:
            purchase.status = PurchaseStatus.PUBLISHED
            purchase.published_at = self.clock()
            purchase.expected_total = purchase.base_total + len(delivery.codes)
            purchase.failures = 0
            state.purchase = purchase
            if state.received_total >= purchase.expected_total:
                state.purchase = None  # the vault already has them
        self.ledger.put(stock, state)
        if self.durable is not None:
            await self.durable()  # else a restart finds it unpublished and publishes again

    def _block(self, stock: Stock, purchase: Purchase, reason: str, kind: str) -> None:
        """Nothing can be bought now: alert, and ask every supplier again later."""
        purchase.tried = []
        purchase.supplier = None
        purchase.status = PurchaseStatus.BLOCKED
        purchase.next_try_at = self.clock() + self.limits.blocked_retry_s
        self._alert(stock, reason, kind)
        self._save(stock, purchase)

    def _alert(self, stock: Stock, reason: str, kind: str) -> None:
        state = self.ledger.get(stock)
        state.alert = reason
        self.ledger.put(stock, state)
        RESTOCK_BLOCKED.labels(self.labels(stock)[1], kind).inc()
        if not self.known(stock.sku):
            # a sku no supplier sells and no policy names (an order can carry any text):
            # one series and one log line for all of them, however many there are
            if stock not in self._unknown_short:
                self._unknown_short.add(stock)
                self._unknown_new.append(stock)
            return
        cover = state.available / state.rate / 60 if state.rate > 1e-9 else None
        log.error(
            "stock.low account=%s sku=%s reason=%s: %s; available=%d backordered=%d "
            "cover_minutes=%s",
            stock.account,
            stock.sku,
            kind,
            reason,
            state.available,
            state.backordered,
            "inf" if cover is None else f"{cover:.1f}",
        )
        STOCK_LOW.labels(*self.labels(stock)).set(1)

    def unsellable(self, stock: Stock, state: SkuState, policy: Policy) -> None:
        """A stock of a sku nothing can buy: `stock.low` while it is short, counted and logged
        with all the others (`report_unknown`), never on a series or a line of its own."""
        short = state.available - state.backordered < policy.reorder_point(state.rate)
        state.alert = "no supplier sells it" if short else ""
        if not short:
            self._unknown_short.discard(stock)
        elif stock not in self._unknown_short:
            self._unknown_short.add(stock)
            self._unknown_new.append(stock)

    def known(self, sku: str) -> bool:
        """A sku some supplier sells or a policy names: it gets its own metric series."""
        return sku in self.known_skus or any(s.sells(sku) for s in self.suppliers.values())

    def labels(self, stock: Stock) -> tuple[str, str]:
        """(account, sku) metric labels: the stock's own when its sku is known, else OTHER."""
        return (stock.account, stock.sku) if self.known(stock.sku) else (OTHER, OTHER)

    def report_unknown(self) -> None:
        """The `other` stock.low series, and one log line for the stocks of unknown skus
        found short since the last call."""
        STOCK_LOW.labels(OTHER, OTHER).set(1 if self._unknown_short else 0)
        if not self._unknown_new:
            return
        log.error(
            "stock.low: %d more stocks of skus no supplier sells are short, %d in all (e.g. %s)",
            len(self._unknown_new),
            len(self._unknown_short),
            ", ".join(f"{s.account}/{s.sku[:40]!r}" for s in self._unknown_new[:5]),
        )
        self._unknown_new.clear()

    def _release(self, stock: Stock, purchase: Purchase) -> None:
        """A refused order costs nothing: give its reservation back."""
        state = self.ledger.get(stock)
        reserved = Decimal(purchase.reserved)
        if reserved and purchase.reserved_day in state.spend:
            left = max(Decimal(0), state.spent(purchase.reserved_day) - reserved)
            state.spend[purchase.reserved_day] = str(left)
            self.ledger.put(stock, state)
        purchase.reserved = "0"

    def _save(self, stock: Stock, purchase: Purchase) -> bool:
        """Write the purchase back; False when it is no longer the sku's (it landed)."""
        state = self.ledger.get(stock)
        if state.purchase is None or state.purchase.decided_at != purchase.decided_at:
            return False
        state.purchase = purchase
        self.ledger.put(stock, state)
        return True

    def _close(self, stock: Stock, purchase: Purchase) -> None:
        state = self.ledger.get(stock)
        if state.purchase is not None and state.purchase.decided_at == purchase.decided_at:
            state.purchase = None
            self.ledger.put(stock, state)

    def _cap(self, stock: Stock) -> tuple[Decimal | None, str | None]:
        """The day's spend cap of the store paying for this stock: the stock's account, or
        the store `sku_stores` names for the sku (a setting from before accounts)."""
        store = (self.limits.sku_stores or {}).get(stock.sku, stock.account)
        caps = self.limits.daily_caps or {}
        if store in caps:
            return caps[store], store
        return self.limits.default_daily_cap, store

    def _spent_by_store(self, store: str, day: str) -> Decimal:
        stores = self.limits.sku_stores or {}
        return sum(
            (
                self.ledger.get(stock).spent(day)
                for stock in self.ledger.stocks()
                if stores.get(stock.sku, stock.account) == store
            ),
            Decimal(0),
        )
