"""The restocker's own costs: how fast the policy folds levels, and how long a purchase takes
from decision to published codes at each sandbox supplier (in-process, real HTTP)."""

from __future__ import annotations

import asyncio
import base64
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from rich.console import Console

from bench.common import BenchResult, percentile
from deploy.sandbox.app import init_app
from deploy.sandbox.config import SandboxConfig
from services.restocker.policy import Policy, Purchase, SkuState, decide, observe
from services.restocker.purchasing import Limits, Purchasing
from services.restocker.suppliers import Delivery, SupplierSettings, build
from shared.events import InventoryLevel, Stock

SECRET = "whsec_" + base64.b64encode(b"bench-secret-0123456789abcdefgh").decode()
PURCHASES = 40


def policy_rate(levels: int = 50_000) -> float:
    policy = Policy()
    state = SkuState()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    events = [
        InventoryLevel(
            event_id=str(i),
            sku="S",
            available=10_000,
            backordered=0,
            sold_since_last=2,
            received_total=10_000,
            at=start + timedelta(milliseconds=i),
        )
        for i in range(levels)
    ]
    began = time.perf_counter()
    for event in events:
        observe(state, event, policy)
        decide(state, "S", policy, 0.0)
        state.to_dict()  # what the table write costs in serialising
    return levels / (time.perf_counter() - began)


class Ledger:
    def __init__(self) -> None:
        self.rows: dict[Stock, SkuState] = {}

    def get(self, stock: Stock) -> SkuState:
        return self.rows.get(stock, SkuState()).model_copy(deep=True)

    def put(self, stock: Stock, state: SkuState) -> None:
        self.rows[stock] = state

    def stocks(self) -> list[Stock]:
        return list(self.rows)


async def purchase_latencies(base: str, only: str) -> list[float]:
    skus = [f"B-{i}" for i in range(PURCHASES)]
    accounts: list[dict[str, Any]] = [
        dict(
            name="reloadly",
            kind="reloadly",
            base_url=f"{base}/reloadly",
            products={sku: "101" for sku in skus},
            credentials={
                "client_id": "sandbox-reloadly-client",
                "client_secret": "sandbox-reloadly-secret",
            },
        ),
        dict(
            name="bamboo",
            kind="bamboo",
            base_url=f"{base}/bamboo/api/integration",
            products={sku: "201" for sku in skus},
            credentials={
                "client_id": "sandbox-bamboo-client",
                "client_secret": "sandbox-bamboo-secret",
                "account_id": "4242",
            },
        ),
        dict(
            name="like4card",
            kind="like4card",
            base_url=f"{base}/like4card/online",
            products={sku: "301" for sku in skus},
            credentials={
                "email": "sandbox@like4card.test",
                "password": "sandbox-like4card-password",
                "phone": "966500000001",
                "device_id": "sandbox-device",
                "security_code": "sandbox-security-code",
                "hash_key": "sandbox-hash-key",
                "secret_key": "sandbox-secret-key",
                "secret_iv": "sandbox-secret-iv",
            },
        ),
    ]
    settings = [SupplierSettings.model_validate(account) for account in accounts]
    done: dict[str, float] = {}
    began: dict[str, float] = {}
    all_done = asyncio.Event()

    async def publish(stock: Stock, supplier: str, purchase: Purchase, delivery: Delivery) -> None:
        done[stock.sku] = time.perf_counter()
        if len(done) == len(skus):
            all_done.set()

    async with aiohttp.ClientSession() as session:
        ledger = Ledger()
        suppliers = [build(s, session) for s in settings if s.name == only]
        purchasing = Purchasing(ledger, suppliers, publish, Limits(poll_s=0.05))
        for sku in skus:
            state = SkuState()
            state.purchase = Purchase(
                reference=f"{only}-{sku}-{time.time_ns()}",
                quantity=10,
                base_total=0,
                expected_total=10,
                decided_at=time.time(),
            )
            ledger.put(Stock("bench", sku), state)
            began[sku] = time.perf_counter()
            purchasing.kick(Stock("bench", sku))
        await asyncio.wait_for(all_done.wait(), 60)
        await purchasing.close()
    return [(done[sku] - began[sku]) * 1000 for sku in skus]


async def run(console: Console) -> BenchResult:
    result = BenchResult("restock")
    rate = policy_rate()
    result.add("policy: levels folded", rate, "levels/s", ">= 20000", "observe + decide + to_dict")
    config = SandboxConfig.model_validate(
        {
            "gateway": "http://127.0.0.1:9",
            "stores": [{"id": "s", "name": "S", "secret": SECRET}],
            "suppliers": {"bamboo": {"processing_s": 0.2}},
        }
    )
    server = TestServer(init_app(config))
    await server.start_server()
    try:
        base = str(server.make_url("")).rstrip("/")
        for name in ("reloadly", "bamboo", "like4card"):
            latencies = await purchase_latencies(base, name)
            console.print(f"{name}: {PURCHASES} concurrent purchases of 10 codes")
            result.add(
                f"{name}: decision to codes p50",
                percentile(latencies, 0.5),
                "ms",
                note=f"{PURCHASES} skus at once" + (", 200 ms pending" if name == "bamboo" else ""),
            )
            result.add(f"{name}: decision to codes p99", percentile(latencies, 0.99), "ms")
    finally:
        await server.close()
    return result
