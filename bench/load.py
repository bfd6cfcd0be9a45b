"""The load process: signed paid-order webhooks straight to the gateway, as the platforms send them.

Runs as its own process (`python -m bench.load ...`) so that building, signing and sending
webhooks never shares an event loop with whatever measures the pipeline. Every store of the
stack takes part, each in its platform's wire format (deploy/sandbox/platforms.py). A webhook
answered 503 or not answered at all is re-sent, as a platform would, until `--retry-for`
seconds after its first attempt. A Zid order is first taken by the sandbox's Zid store (no
webhook from it), since the gateway confirms every Zid order through Zid's API. The result is
one JSON file: every order, its buyer, how many units it holds and every HTTP status the gateway
gave it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from deploy.sandbox import platforms
from deploy.sandbox.config import StoreConfig
from shared.events import order_key

NO_ANSWER = 0  # the status recorded when the gateway did not answer (killed, restarting)


@dataclass
class SentOrder:
    key: str
    phone: str
    email: str
    units: int
    statuses: list[int] = field(default_factory=list)
    first_sent: float = 0.0  # unix time

    @property
    def acknowledged(self) -> bool:
        return bool(self.statuses) and 200 <= self.statuses[-1] < 300


def stores_of(home: Path) -> list[StoreConfig]:
    """The stores the stack registered, with their webhook secrets (from the sandbox config)."""
    config = json.loads((home / "sandbox.json").read_text())
    return [StoreConfig.model_validate(s) for s in config["stores"]]


def new_order(
    store: StoreConfig, skus: list[str], n: int, rng: random.Random, tag: str, phone_base: int
) -> tuple[SentOrder, platforms.Sale, platforms.Webhook]:
    """One paid order of 1–3 codes (1–2 lines), for a buyer of its own (phone and email)."""
    count = 1 if rng.random() < 0.75 else 2
    lines: list[dict[str, Any]] = [
        {"sku": sku, "quantity": rng.choice((1, 1, 2)), "title": sku, "price": "50.00"}
        for sku in rng.sample(skus, k=count)
    ]
    if sum(line["quantity"] for line in lines) > 3:
        lines[0]["quantity"] = 1
    phone = f"+9665{(phone_base + n) % 10**8:08d}"
    email = f"{tag}-{n}@example.com"
    order_id = platforms.numeric_order_id() if store.platform != "standard" else f"{tag}-{n}"
    sale = platforms.Sale(
        order_id=order_id,
        lines=lines,
        customer={"name": f"Buyer {n}", "phone": phone, "email": email, "locale": "ar"},
        total=str(50 * sum(line["quantity"] for line in lines)) + ".00",
    )
    order = SentOrder(
        key=order_key(store.platform, store.id, order_id),
        phone=phone,
        email=email,
        units=sum(line["quantity"] for line in lines),
    )
    return order, sale, platforms.paid(store, sale)


async def taken(
    session: aiohttp.ClientSession, sandbox: str, store: StoreConfig, sale: platforms.Sale
) -> bool:
    """The sandbox's store takes the order without sending its webhook (this process sends
    it), so that Zid's API, which the gateway asks, knows it."""
    order = {"order_id": sale.order_id, "lines": sale.lines, "customer": sale.customer}
    url = f"{sandbox}/stores/{store.id}/orders"
    try:
        async with session.post(url, json={**order, "send": False}) as reply:
            await reply.read()
            return reply.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def post(
    session: aiohttp.ClientSession, gateway: str, store: StoreConfig, webhook: platforms.Webhook
) -> int:
    url = f"{gateway}/webhooks/{store.platform}/{store.id}"
    if webhook.query:
        url += "?" + webhook.query
    headers = platforms.delivery_headers(store, webhook)  # signed again on every attempt
    try:
        async with session.post(url, data=webhook.body, headers=headers) as reply:
            await reply.read()
            return reply.status
    except (aiohttp.ClientError, TimeoutError):
        return NO_ANSWER


async def fire(
    gateway: str,
    stores: list[StoreConfig],
    skus: list[str],
    count: int,
    rate: float,
    *,
    retry_for_s: float = 180.0,
    seed: int = 1,
    tag: str = "LOAD",
    connections: int = 256,
    sandbox: str = "",
) -> list[SentOrder]:
    """Send `count` orders at `rate`/s (open loop: a slow gateway does not slow the clock)."""
    rng = random.Random(f"{tag}:{seed}")  # a run's buyers differ from other runs' by its tag
    phone_base = rng.randrange(10**8)  # consecutive numbers: unique within the run
    sent: list[SentOrder] = []
    limit = asyncio.Semaphore(connections)
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(
            order: SentOrder, store: StoreConfig, sale: platforms.Sale, webhook: platforms.Webhook
        ) -> None:
            give_up = time.monotonic() + retry_for_s
            untaken = store.platform == "zid" and bool(sandbox)
            while True:
                async with limit:
                    if untaken:
                        untaken = not await taken(session, sandbox, store, sale)
                    # not taken yet: the sandbox did not answer; try again, as for the gateway
                    status = NO_ANSWER if untaken else await post(session, gateway, store, webhook)
                order.statuses.append(status)
                if status not in (503, NO_ANSWER) or time.monotonic() > give_up:
                    return
                await asyncio.sleep(1.0)

        tasks = []
        start = time.perf_counter()
        for n in range(count):
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            store = stores[n % len(stores)]
            order, sale, webhook = new_order(store, skus, n, rng, tag, phone_base)
            order.first_sent = time.time()
            sent.append(order)
            tasks.append(asyncio.create_task(one(order, store, sale, webhook)))
        await asyncio.gather(*tasks)
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--home", type=Path, required=True, help="the stack's home folder")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True, help="orders per second")
    parser.add_argument("--retry-for", type=float, default=180.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tag", default="LOAD", help="order id prefix (Standard Webhooks stores)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    info = json.loads((args.home / "stack.json").read_text())
    started = time.time()
    sent = asyncio.run(
        fire(
            info["ingest"],
            stores_of(args.home),
            list(info["skus"]),
            args.count,
            args.rate,
            retry_for_s=args.retry_for,
            seed=args.seed,
            tag=args.tag,
            sandbox=info["sandbox"],
        )
    )
    report: dict[str, Any] = {
        "started": started,
        "finished": time.time(),
        "orders": [asdict(o) for o in sent],
    }
    args.out.write_text(json.dumps(report))


async def start(
    home: Path,
    count: int,
    rate: float,
    out: Path,
    *,
    tag: str,
    seed: int = 1,
    retry_for_s: float = 180,
) -> asyncio.subprocess.Process:
    """Start the load process; wait for it, then `read(out)`."""
    argv = ["--home", str(home), "--count", str(count), "--rate", str(rate), "--out", str(out)]
    argv += ["--tag", tag, "--seed", str(seed), "--retry-for", str(retry_for_s)]
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.load", *argv)


def read(path: Path) -> list[SentOrder]:
    return [SentOrder(**o) for o in json.loads(path.read_text())["orders"]]


if __name__ == "__main__":
    main()
