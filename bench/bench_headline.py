"""The headline: paid in the store → code bought from a supplier → on the buyer's screen.

Each case runs on a fresh embedded stack (every process real, the sandbox's suppliers over
HTTP) and reports paid → delivered per order: until the last of its units was accepted by a
messaging provider (`message.sent`'s `paid_to_accepted_ms`, the latest part of the order).

- **on demand, fastest supplier**: skus that hold no stock at all. The restocker's policy buys
  exactly what is backordered, when it is backordered (reorder point 0, smallest order 1, no
  cover), so every order is bought from the first supplier (Reloadly) when it is paid.
- **on demand, first supplier down**: the same, with Reloadly down: bought from Bamboo, whose
  orders stay "Processing" for a second and are polled.
- **stock-out mid-surge**: a little stock per sku and the restocker's usual policy, then a
  surge: the first orders come from the vault, the rest wait for purchases.

The suppliers answer after `SUPPLIER_LATENCY_MS` (an assumption: the sandbox adds it; the real
APIs publish no latency figures we could cite). The one-purchase-in-flight-per-sku rule means
an order paid while its sku's purchase is under way waits for the next one: up to two
purchase times.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from rich.console import Console

from bench.common import BenchResult, percentile
from deploy import demo
from deploy.embedded.stack import Stack, StackOptions

SUPPLIER_LATENCY_MS = {"reloadly": 300, "bamboo": 300, "like4card": 300}
ON_DEMAND_POLICY = {"TASLEEM_TARGET_COVER_S": "0", "TASLEEM_SAFETY_FACTOR": "0"}


@dataclass(frozen=True)
class Case:
    name: str
    orders: int
    rate: float
    stock_per_sku: int
    reorder_point: int
    order_quantity: int
    restocker_env: dict[str, str] = field(default_factory=dict)
    down: tuple[str, ...] = ()
    target_p99_ms: float = 3000


CASES = (
    Case("on demand, fastest supplier", 120, 6, 0, 0, 1, ON_DEMAND_POLICY, (), 1000),
    Case("on demand, first supplier down", 60, 3, 0, 0, 1, ON_DEMAND_POLICY, ("reloadly",)),
    # the surge outruns the stock and the first purchases (sized for the rate seen so far)
    Case("stock-out mid-surge", 1500, 150, 20, 20, 20),
)


async def _set_suppliers(sandbox: str, down: tuple[str, ...]) -> None:
    async with aiohttp.ClientSession() as session:
        for party, latency_ms in SUPPLIER_LATENCY_MS.items():
            fault = {"down": party in down, "latency_ms": latency_ms}
            async with session.put(f"{sandbox}/faults/{party}", json=fault) as reply:
                reply.raise_for_status()


async def _codes_bought(restocker: str) -> float:
    """`tasleem_restocker_codes_bought_total` summed, from the restocker's own /metrics."""
    async with aiohttp.ClientSession() as session, session.get(f"{restocker}/metrics") as reply:
        text = await reply.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("tasleem_restocker_codes_bought_total{")
    )


async def _run_case(case: Case, console: Console) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="tasleem-headline-") as tmp:
        stack = Stack(
            StackOptions(
                home=Path(tmp),
                demo_stock_per_sku=case.stock_per_sku,
                reorder_point=case.reorder_point,
                order_quantity=case.order_quantity,
                restocker_env=case.restocker_env,
            )
        )
        try:
            info = await stack.start()
            await _set_suppliers(info["sandbox"], case.down)
            result = await demo.surge(info, case.orders, case.rate, timeout_s=180, seed=7)
            bought = await _codes_bought(info["restocker"])
        finally:
            stack.stop()
    delivered = result.delivered_orders
    latencies = [ms for key, ms in result.order_latency_ms.items() if key in delivered]
    figures = {
        "accepted": float(result.accepted),
        "delivered": float(len(delivered)),
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": max(latencies, default=float("nan")),
        "codes_bought": bought,
    }
    console.print(
        f"{case.name}: {len(delivered)}/{result.accepted} delivered "
        f"({bought:.0f} codes bought during the run), paid→delivered "
        f"p50 {figures['p50_ms']:.0f} ms, p99 {figures['p99_ms']:.0f} ms, "
        f"max {figures['max_ms']:.0f} ms"
    )
    return figures


async def run(console: Console) -> BenchResult:
    result = BenchResult("headline")
    for case in CASES:
        figures = await _run_case(case, console)
        result.details[case.name] = figures
        note = f"{case.orders} orders at {case.rate:g}/s, {case.stock_per_sku} codes per sku"
        result.add(f"{case.name}: p50", figures["p50_ms"], "ms", note=note)
        result.add(f"{case.name}: p99", figures["p99_ms"], "ms", f"<= {case.target_p99_ms:g}", note)
        result.add(
            f"{case.name}: delivered",
            figures["delivered"],
            "orders",
            f">= {figures['accepted']:g}",
            "every accepted order reaches its buyer",
        )
    return result
