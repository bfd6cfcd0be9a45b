"""Forged, malformed and oversized webhooks, posted straight to the gateway during a surge.

Each carries an order id starting with FORGED, so one that slipped through would show up on
`order.paid` and in the allocator's orders. None may be accepted; none may get a 5xx.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import random
import time
from collections.abc import Callable

import aiohttp

from bench.load import NO_ANSWER
from chaos.invariants import FORGED_PREFIX
from deploy.sandbox import platforms
from deploy.sandbox.config import StoreConfig

MIB = 1024 * 1024


def _order(n: int) -> dict[str, object]:
    return {
        "type": "order.paid",
        "timestamp": "2026-01-01T00:00:00Z",
        "data": {
            "order_id": f"{FORGED_PREFIX}-{n}",
            "paid_at": "2026-01-01T00:00:00Z",
            "currency": "SAR",
            "total": "50.00",
            "customer": {"name": "Mallory", "phone": "+966500000666", "locale": "en"},
            "lines": [{"sku": "PSN-50-SAR", "quantity": 1}],
        },
    }


def _signed(secret: str, body: bytes, msg_id: str, timestamp: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": platforms.sign_standard(secret, msg_id, ts, body),
    }


def kinds(store: StoreConfig) -> list[Callable[[int], tuple[str, bytes, dict[str, str]]]]:
    """Ways to get a webhook wrong: (path suffix, body, headers) for order n."""
    other = "whsec_" + base64.b64encode(os.urandom(24)).decode()

    def wrong_secret(n: int) -> tuple[str, bytes, dict[str, str]]:
        body = json.dumps(_order(n)).encode()
        return store.id, body, _signed(other, body, f"msg_forged_{n}")

    def tampered(n: int) -> tuple[str, bytes, dict[str, str]]:
        body = json.dumps(_order(n)).encode()
        headers = _signed(store.secret, body, f"msg_forged_{n}")
        return store.id, body.replace(b'"quantity": 1', b'"quantity": 99'), headers

    def no_signature(n: int) -> tuple[str, bytes, dict[str, str]]:
        return store.id, json.dumps(_order(n)).encode(), {"content-type": "application/json"}

    def replayed(n: int) -> tuple[str, bytes, dict[str, str]]:
        body = json.dumps(_order(n)).encode()
        return store.id, body, _signed(store.secret, body, f"msg_forged_{n}", 1_600_000_000)

    def broken_json(n: int) -> tuple[str, bytes, dict[str, str]]:
        # correctly signed, so it reaches the JSON parser
        body = json.dumps(_order(n)).encode()[:-7] + b"\x00{[\xff"
        return store.id, body, _signed(store.secret, body, f"msg_forged_{n}")

    def wrong_shape(n: int) -> tuple[str, bytes, dict[str, str]]:
        body = json.dumps({"type": "order.paid", "data": {"order_id": [n], "lines": "x"}}).encode()
        return store.id, body, _signed(store.secret, body, f"msg_forged_{n}")

    def unknown_store(n: int) -> tuple[str, bytes, dict[str, str]]:
        body = json.dumps(_order(n)).encode()
        return f"no-such-store-{n}", body, _signed(store.secret, body, f"msg_forged_{n}")

    return [
        wrong_secret,
        tampered,
        no_signature,
        replayed,
        broken_json,
        wrong_shape,
        unknown_store,
    ]


def oversized(store: StoreConfig, n: int) -> tuple[str, bytes, dict[str, str]]:
    """A signed body just over 1 MiB: refused for its size, whatever it says."""
    order = _order(n)
    order["padding"] = "x" * (MIB + 1024)
    body = json.dumps(order).encode()
    return store.id, body, _signed(store.secret, body, f"msg_forged_{n}")


async def send(
    gateway: str,
    store: StoreConfig,
    count: int,
    rate: float,
    *,
    oversized_share: float = 0.02,
    seed: int = 6,
) -> list[int]:
    """Send `count` bad webhooks at `rate`/s to a Standard Webhooks store; their statuses."""
    rng = random.Random(seed)
    makers = kinds(store)
    statuses: list[int] = []
    limit = asyncio.Semaphore(32)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def one(n: int) -> None:
            if rng.random() < oversized_share:
                path, body, headers = oversized(store, n)
            else:
                path, body, headers = rng.choice(makers)(n)
            async with limit:
                try:
                    url = f"{gateway}/webhooks/standard/{path}"
                    # a file-like body: aiohttp warns that big raw bytes block the loop
                    data = io.BytesIO(body) if len(body) > MIB else body
                    async with session.post(url, data=data, headers=headers) as reply:
                        await reply.read()
                        statuses.append(reply.status)
                except (aiohttp.ClientError, TimeoutError):
                    # the gateway may close the connection on a body it refuses unread
                    statuses.append(NO_ANSWER)

        tasks = []
        start = time.perf_counter()
        for n in range(count):
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(n)))
        await asyncio.gather(*tasks)
    return statuses
