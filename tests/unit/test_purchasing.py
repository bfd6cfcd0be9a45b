"""Purchases carried out against the sandbox's suppliers over real HTTP: routing, failover,
pending orders, timeouts after charging, spend caps and the stock.low alert.

The ledger is a dict here (the faust table is exercised by tests/e2e/test_restocker.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import REGISTRY

from deploy.sandbox.app import init_app
from services.restocker.handlers import stock_report
from services.restocker.policy import Policy, Purchase, SkuState, decide, reference_stem
from services.restocker.purchasing import Limits, Purchasing
from services.restocker.settings import RestockerSettings
from services.restocker.suppliers import Delivery, SupplierSettings, build
from shared.events import Stock
from tests.unit.test_suppliers import sandbox_config, supplier_settings

LIMITS = Limits(max_failures=2, retry_s=0.05, retry_max_s=0.2, blocked_retry_s=0.2, poll_s=0.05)


ACCOUNT = "st"


def S(sku: str, account: str = ACCOUNT) -> Stock:
    return Stock(account, sku)


class DictLedger:
    """Stocks by (account, sku); a bare sku here means the account `st`'s."""

    def __init__(self) -> None:
        self.rows: dict[Stock, dict[str, Any]] = {}

    def get(self, stock: Stock | str) -> SkuState:
        return SkuState.from_dict(self.rows.get(S(stock) if isinstance(stock, str) else stock))

    def put(self, stock: Stock | str, state: SkuState) -> None:
        self.rows[S(stock) if isinstance(stock, str) else stock] = state.to_dict()

    def stocks(self) -> list[Stock]:
        return list(self.rows)


class Shop:
    """The sandbox, the adapters, and a Purchasing that records what it publishes."""

    def __init__(self, base: str, session: aiohttp.ClientSession) -> None:
        self.base = base
        self.session = session
        self.ledger = DictLedger()
        self.published: list[tuple[str, str, str, list[str]]] = []
        self.accounts: list[str] = []  # whose vault each publication was for

    def purchasing(
        self,
        limits: Limits = LIMITS,
        tweak: Callable[[list[SupplierSettings]], None] = lambda s: None,
    ) -> Purchasing:
        settings = supplier_settings(self.base)
        tweak(settings)

        async def publish(
            stock: Stock, supplier: str, purchase: Purchase, delivery: Delivery
        ) -> None:
            self.published.append((stock.sku, supplier, purchase.reference, list(delivery.codes)))
            self.accounts.append(stock.account)

        return Purchasing(self.ledger, [build(s, self.session) for s in settings], publish, limits)

    def want(self, sku: str, quantity: int, received: int = 0, account: str = ACCOUNT) -> None:
        """A purchase decided by the policy, as the agent records it (with a bare-sku
        reference, which is what the references asserted below read)."""
        state = self.ledger.get(S(sku, account))
        state.purchase = Purchase(
            reference=f"{sku}-{received + quantity}",
            quantity=quantity,
            base_total=received,
            expected_total=received + quantity,
            decided_at=time.time(),
        )
        self.ledger.put(S(sku, account), state)

    async def fault(self, party: str, **switches: Any) -> None:
        async with self.session.put(f"{self.base}/faults/{party}", json=switches) as resp:
            assert resp.status == 200

    async def orders(self, party: str) -> list[dict[str, Any]]:
        async with self.session.get(f"{self.base}/{party}/_purchases") as resp:
            return (await resp.json())["orders"]


@pytest.fixture
async def shop() -> AsyncIterator[Shop]:
    config = sandbox_config(
        reloadly={"charge_timeout_s": 1.0},
        bamboo={"processing_s": 0.2, "charge_timeout_s": 1.0},
        like4card={"charge_timeout_s": 1.0},
    )
    server = TestServer(init_app(config))
    await server.start_server()
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.4))
    try:
        yield Shop(str(server.make_url("")).rstrip("/"), session)
    finally:
        await session.close()
        await server.close()


async def until(purchasing: Purchasing, done: Callable[[], bool], limit_s: float = 10) -> None:
    """Sweep as the restocker's timer does, until `done()`."""
    deadline = time.monotonic() + limit_s
    while not done():
        assert time.monotonic() < deadline, "the purchase did not get there in time"
        purchasing.sweep()
        await asyncio.sleep(0.02)


def published(shop: Shop, sku: str) -> bool:
    state = shop.ledger.get(sku)
    return state.purchase is not None and state.purchase.status == "published"


async def test_the_first_supplier_by_priority_is_used(shop):
    purchasing = shop.purchasing()
    shop.want("SKU-A", 5)
    purchasing.kick(S("SKU-A"))
    await until(purchasing, lambda: published(shop, "SKU-A"))
    [(sku, supplier, reference, codes)] = shop.published
    assert (sku, supplier, reference, len(codes)) == ("SKU-A", "reloadly", "SKU-A-5", 5)
    assert len(await shop.orders("reloadly")) == 1
    assert shop.ledger.get("SKU-A").purchases == 1
    await purchasing.close()


async def test_a_timeout_after_charging_ends_in_exactly_one_purchase(shop):
    purchasing = shop.purchasing()
    await shop.fault("reloadly", charge_then_timeout=True)
    shop.want("SKU-A", 4)
    purchasing.kick(S("SKU-A"))

    def in_doubt() -> bool:
        purchase = shop.ledger.get("SKU-A").purchase
        return purchase is not None and purchase.sent and purchase.failures >= 1

    await until(purchasing, in_doubt)
    await shop.fault("reloadly", charge_then_timeout=False)
    await until(purchasing, lambda: published(shop, "SKU-A"))

    orders = await shop.orders("reloadly")
    assert [o["customIdentifier"] for o in orders] == ["SKU-A-4"]
    assert shop.published[0][1] == "reloadly" and len(shop.published[0][3]) == 4
    assert await shop.orders("bamboo") == [] and await shop.orders("like4card") == []
    await purchasing.close()


async def test_out_of_stock_fails_over_to_the_asynchronous_supplier(shop):
    purchasing = shop.purchasing()
    await shop.fault("reloadly", out_of_stock=True)
    shop.want("SKU-B", 6)
    purchasing.kick(S("SKU-B"))
    await until(purchasing, lambda: published(shop, "SKU-B"))
    [(_, supplier, _, codes)] = shop.published
    assert supplier == "bamboo" and len(codes) == 6 and all(c.startswith("BMB-") for c in codes)
    assert await shop.orders("reloadly") == []
    assert len(await shop.orders("bamboo")) == 1
    assert shop.ledger.get("SKU-B").purchase.tried == ["reloadly"]
    await purchasing.close()


async def test_insufficient_balance_and_outage_fail_over_to_the_encrypted_supplier(shop):
    purchasing = shop.purchasing()
    await shop.fault("reloadly", down=True)  # fails over after `max_failures` 503s
    await shop.fault("bamboo", insufficient_balance=True)  # fails over at once
    shop.want("SKU-A", 3)
    purchasing.kick(S("SKU-A"))
    await until(purchasing, lambda: published(shop, "SKU-A"))
    [(_, supplier, _, codes)] = shop.published
    assert supplier == "like4card" and all(c.startswith("L4C-") for c in codes)
    assert len(await shop.orders("like4card")) == 1
    assert await shop.orders("bamboo") == [] and await shop.orders("reloadly") == []
    await purchasing.close()


async def test_buyers_waiting_fail_over_at_the_first_outage_and_the_down_supplier_rests(shop):
    # retries so slow that only failing over at once publishes within the test's limit
    slow = Limits(max_failures=3, retry_s=30, retry_max_s=30, blocked_retry_s=30, poll_s=0.05)
    purchasing = shop.purchasing(slow)
    await shop.fault("reloadly", down=True)
    shop.want("SKU-A", 2)
    waiting = shop.ledger.get("SKU-A")
    waiting.backordered = 2  # two buyers have paid and wait for these codes
    shop.ledger.put("SKU-A", waiting)
    purchasing.kick(S("SKU-A"))
    await until(purchasing, lambda: published(shop, "SKU-A"), limit_s=5)
    assert [supplier for _, supplier, _, _ in shop.published] == ["bamboo"]

    # stock bought ahead (no buyer waits) would retry the preferred supplier, but it rests:
    # the purchase goes straight to the next one, never paying the outage's retries again
    shop.want("SKU-B", 3)
    purchasing.kick(S("SKU-B"))
    await until(purchasing, lambda: published(shop, "SKU-B"), limit_s=5)
    ahead = shop.ledger.get("SKU-B").purchase
    assert ahead is not None and ahead.supplier == "bamboo"
    assert ahead.tried == [] and ahead.last_error == ""
    assert await shop.orders("reloadly") == []
    await purchasing.close()


async def test_a_failed_lookup_of_an_order_that_may_exist_never_moves_it_elsewhere(shop):
    """Buyers wait, and the supplier that may hold the order answers its lookup with a 503:
    that says nothing about the order, so it is never bought from the next supplier."""
    purchasing = shop.purchasing()
    shop.want("SKU-A", 2)
    state = shop.ledger.get("SKU-A")
    state.backordered = 2
    assert state.purchase is not None
    state.purchase.supplier, state.purchase.sent = "reloadly", True  # ordered, then a crash
    shop.ledger.put("SKU-A", state)
    await shop.fault("reloadly", down=True)
    purchasing.kick(S("SKU-A"))
    await until(purchasing, lambda: shop.ledger.get("SKU-A").purchase.failures >= 2)
    purchase = shop.ledger.get("SKU-A").purchase
    assert purchase.supplier == "reloadly" and purchase.sent and purchase.tried == []
    assert shop.published == [] and await shop.orders("bamboo") == []
    await purchasing.close()


async def test_buyers_waiting_on_the_only_supplier_retry_it_rather_than_block(shop):
    def only_reloadly(settings: list[SupplierSettings]) -> None:
        settings[1].products = {}  # bamboo sells nothing here
        settings[2].products = {}  # nor does like4card

    purchasing = shop.purchasing(tweak=only_reloadly)
    blocked = {"sku": "SKU-A", "reason": "no_supplier"}
    blocked_before = REGISTRY.get_sample_value("tasleem_restocker_restock_blocked_total", blocked)
    await shop.fault("reloadly", error_rate=1.0)
    shop.want("SKU-A", 2)
    waiting = shop.ledger.get("SKU-A")
    waiting.backordered = 2
    shop.ledger.put("SKU-A", waiting)
    purchasing.kick(S("SKU-A"))
    await until(purchasing, lambda: shop.ledger.get("SKU-A").purchase.failures >= 1)
    await shop.fault("reloadly", error_rate=0.0)
    await until(purchasing, lambda: published(shop, "SKU-A"))
    # a brief outage of the only supplier: retried, never blocked nor alerted as stock.low
    blocked_after = REGISTRY.get_sample_value("tasleem_restocker_restock_blocked_total", blocked)
    assert (blocked_after or 0) == (blocked_before or 0)
    assert [supplier for _, supplier, _, _ in shop.published] == ["reloadly"]
    await purchasing.close()


async def test_a_pending_order_does_not_hold_up_other_skus(shop):
    def split(settings: list[SupplierSettings]) -> None:
        settings[0].products = {"SKU-B": "102"}  # reloadly sells only SKU-B here
        settings[2].products = {}  # like4card sells nothing

    purchasing = shop.purchasing(tweak=split)
    await shop.fault("bamboo", pending=True)
    shop.want("SKU-A", 2)  # only bamboo sells it, and bamboo holds it pending
    shop.want("SKU-B", 2)
    purchasing.kick(S("SKU-A"))
    purchasing.kick(S("SKU-B"))
    await until(purchasing, lambda: published(shop, "SKU-B"))
    assert shop.ledger.get("SKU-A").purchase.status == "pending"
    await shop.fault("bamboo", pending=False)
    await until(purchasing, lambda: published(shop, "SKU-A"))
    assert len(await shop.orders("bamboo")) == 1  # polled, never ordered again
    await purchasing.close()


async def test_no_supplier_left_raises_stock_low_then_recovers(shop, caplog):
    purchasing = shop.purchasing()
    for party in ("reloadly", "bamboo", "like4card"):
        await shop.fault(party, out_of_stock=True)
    shop.want("SKU-B", 2)
    caplog.set_level(logging.ERROR, logger="services.restocker.purchasing")
    purchasing.kick(S("SKU-B"))
    await until(purchasing, lambda: bool(shop.ledger.get("SKU-B").alert))
    assert "no supplier can restock" in shop.ledger.get("SKU-B").alert
    low = {"account": ACCOUNT, "sku": "SKU-B"}
    assert REGISTRY.get_sample_value("tasleem_restocker_stock_low", low) == 1
    assert any("stock.low account=st sku=SKU-B" in r.getMessage() for r in caplog.records)
    assert shop.published == []

    for party in ("reloadly", "bamboo", "like4card"):
        await shop.fault(party, out_of_stock=False)
    await until(purchasing, lambda: published(shop, "SKU-B"))
    assert shop.ledger.get("SKU-B").alert == ""
    assert REGISTRY.get_sample_value("tasleem_restocker_stock_low", low) == 0
    await purchasing.close()


async def test_a_daily_spend_cap_per_store_shrinks_then_blocks_purchases(shop):
    limits = Limits(
        max_failures=2,
        retry_s=0.05,
        blocked_retry_s=5,
        poll_s=0.05,
        sku_stores={"SKU-A": "st", "SKU-B": "st"},
        daily_caps={"st": Decimal("100")},
    )
    purchasing = shop.purchasing(limits)
    shop.want("SKU-A", 50)  # 50 x 9.50 is over the cap: 10 fit (95.00)
    purchasing.kick(S("SKU-A"))
    await until(purchasing, lambda: published(shop, "SKU-A"))
    [order] = await shop.orders("reloadly")
    assert order["quantity"] == 10 and order["customIdentifier"] == "SKU-A-10"

    shop.want("SKU-B", 5)  # the store has 5.00 left: not one unit fits
    purchasing.kick(S("SKU-B"))
    await until(purchasing, lambda: bool(shop.ledger.get("SKU-B").alert))
    assert "spend cap" in shop.ledger.get("SKU-B").alert
    assert len(await shop.orders("reloadly")) == 1
    await purchasing.close()


async def test_an_order_that_cannot_be_confirmed_is_never_bought_elsewhere(shop):
    purchasing = shop.purchasing()
    await shop.fault("reloadly", charge_then_timeout=True)
    shop.want("SKU-A", 2)
    purchasing.kick(S("SKU-A"))

    def sent() -> bool:
        purchase = shop.ledger.get("SKU-A").purchase
        return purchase is not None and purchase.sent and purchase.failures >= 1

    await until(purchasing, sent)
    await shop.fault("reloadly", charge_then_timeout=False, down=True)  # and now it is down
    await until(purchasing, lambda: "cannot be confirmed" in shop.ledger.get("SKU-A").alert)
    await asyncio.sleep(0.5)
    purchasing.sweep()
    assert await shop.orders("bamboo") == [] and await shop.orders("like4card") == []
    await shop.fault("reloadly", down=False)
    await until(purchasing, lambda: published(shop, "SKU-A"))
    assert len(await shop.orders("reloadly")) == 1
    await purchasing.close()


def test_the_stock_report_shows_stock_low_and_cover_in_minutes():
    ledger = DictLedger()
    ledger.put("OK-SKU", SkuState(available=300, rate=2.0))
    ledger.put("LOW-SKU", SkuState(available=30, rate=1.0, alert="no supplier can restock it"))
    report = stock_report(ledger, RestockerSettings(reorder_point=20), {"OK-SKU": 10.0})
    rows = {row["sku"]: row for row in report["skus"]}
    assert report["stock_low"] == ["st/LOW-SKU"]
    assert rows["LOW-SKU"]["state"] == "stock.low" and rows["LOW-SKU"]["cover_minutes"] == 0.5
    assert rows["OK-SKU"]["state"] == "ok" and rows["OK-SKU"]["cover_minutes"] == 2.5
    assert rows["OK-SKU"]["reorder_point"] == 30  # 2/s x 10 s lead x 1.5 safety
    assert rows["OK-SKU"]["sales_per_minute"] == 120


async def test_a_published_purchase_not_in_the_vault_is_sent_again_never_bought_again(shop):
    limits = Limits(retry_s=0.05, poll_s=0.05, resume_after_s=0.2)
    purchasing = shop.purchasing(limits)
    shop.want("SKU-A", 3)
    purchasing.kick(S("SKU-A"))
    await until(purchasing, lambda: len(shop.published) == 2)  # no level showed it landed
    first, again = shop.published
    assert first[2] == again[2] and sorted(first[3]) == sorted(again[3])
    # after a second silence the purchase is closed rather than sent forever
    await until(purchasing, lambda: shop.ledger.get("SKU-A").purchase is None)
    assert len(shop.published) == 2
    assert len(await shop.orders("reloadly")) == 1
    await purchasing.close()


async def test_each_account_buys_its_own_stock_under_its_own_reference(shop):
    """Two accounts short of the same sku: two orders at the supplier (never one shared by
    reference), each account's codes published for that account."""
    purchasing = shop.purchasing()
    for account in ("shop-a", "shop-b"):
        state = SkuState()
        decide(state, reference_stem(S("SKU-A", account)), Policy(min_order=3), now=1.0)
        shop.ledger.put(S("SKU-A", account), state)
        purchasing.kick(S("SKU-A", account))
    await until(purchasing, lambda: len(shop.published) == 2)
    orders = await shop.orders("reloadly")
    assert len({o["customIdentifier"] for o in orders}) == 2
    assert sorted(shop.accounts) == ["shop-a", "shop-b"]
    (a_codes, b_codes) = (p[3] for p in shop.published)
    assert not set(a_codes) & set(b_codes)
    await purchasing.close()


async def test_skus_nothing_sells_share_one_series_and_one_log_line(shop, caplog):
    """One order of 2,000 random skus took the restocker from 42 to 10,042 series and wrote
    2,000 ERROR lines: such skus now add no series of their own, and one line per report."""
    purchasing = shop.purchasing()
    caplog.set_level(logging.ERROR, logger="services.restocker.purchasing")
    before = sum(len(m.samples) for m in REGISTRY.collect())
    for n in range(500):
        stock = S(f"RANDOM-{n}")
        assert not purchasing.known(stock.sku)
        state = SkuState(backordered=1)
        purchasing.unsellable(stock, state, Policy())
        assert state.alert
    purchasing.report_unknown()
    assert sum(len(m.samples) for m in REGISTRY.collect()) - before <= 1
    lines = [r for r in caplog.records if "no supplier sells" in r.getMessage()]
    assert len(lines) == 1 and "500" in lines[0].getMessage()
    low = {"account": "other", "sku": "other"}
    assert REGISTRY.get_sample_value("tasleem_restocker_stock_low", low) == 1
    assert purchasing.labels(S("SKU-A")) == (ACCOUNT, "SKU-A")  # a sku a supplier sells
    await purchasing.close()
