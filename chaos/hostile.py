"""The hostile mix: correctly signed webhooks that an attacker (or an odd platform) sends, mixed
into a surge. Each attack says what must become of it; `check` holds the stack to that.

- Unpaid orders (Salla without `is_pending_payment`, WooCommerce cash on delivery still
  `processing`) are acknowledged and never get a code.
- A paid body re-sent under a cancel topic does not cancel: the genuine paid webhook that
  follows is delivered.
- Odd but payable input (NUL in the buyer's name, a bidi override in a title) is delivered.
- Orders over the caps, impossible store ids and one flipped signature character are refused
  with a JSON 4xx. Nothing gets a 5xx.
- No code crosses accounts (read from the vault), and random skus do not grow the restocker's
  metric labels; the allocator's memory stays bounded throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import psutil

from bench.load import stores_of
from chaos import invariants
from deploy.sandbox import platforms
from deploy.sandbox.config import StoreConfig
from shared.events import order_key

ALLOCATOR_RSS_LIMIT = 400 * 1024 * 1024  # bytes: well above a busy allocator's ~150 MiB
TAG = "HOSTILE"


@dataclass
class Attack:
    kind: str
    store: StoreConfig
    path: str  # under /webhooks/
    body: bytes
    headers: dict[str, str]
    allowed: frozenset[int]  # the statuses that are right for it
    order_key: str | None = None
    gets_codes: bool = False  # a payable order: its buyer must receive its codes
    phone: str | None = None
    units: int = 0


@dataclass
class Memory:
    allocator_peak_rss: int = 0


def _sale(n: int, skus: list[str], quantity: int = 1, name: str = "Buyer") -> platforms.Sale:
    return platforms.Sale(
        order_id=platforms.numeric_order_id(),
        lines=[{"sku": s, "quantity": quantity, "title": s, "price": "50.00"} for s in skus],
        customer={
            "name": name,
            "phone": f"+96654{n:07d}",
            "email": f"{TAG.lower()}-{n}@example.com",
            "locale": "en",
        },
        total=f"{50 * quantity * len(skus)}.00",
    )


def _resigned(store: StoreConfig, webhook: platforms.Webhook, body: bytes) -> dict[str, str]:
    """Headers that sign `body` as the platform would (a store's own secret: a real attack
    needs a leaked secret or a platform that signs what the merchant's site sent)."""
    edited = platforms.Webhook(webhook.msg_id, body, webhook.headers, webhook.query)
    return platforms.delivery_headers(store, edited)


def _edit_json(body: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    value = json.loads(body)
    edit(value)
    return json.dumps(value, ensure_ascii=False).encode()


def attacks(stores: list[StoreConfig], skus: list[str]) -> list[Attack]:
    by_platform = {s.platform: s for s in stores}
    found: list[Attack] = []
    n = secrets.randbelow(10**6)

    def add(store: StoreConfig, sale: platforms.Sale | None, kind: str, **kw: Any) -> None:
        found.append(Attack(kind=kind, store=store, **kw))

    if salla := by_platform.get("salla"):
        sale = _sale(n + 1, skus[:1])
        hook = platforms.paid(salla, sale)
        body = _edit_json(hook.body, lambda v: v["data"].pop("is_pending_payment", None))
        add(
            salla,
            sale,
            "salla_pending_payment_missing",
            path=f"salla/{salla.id}",
            body=body,
            headers=_resigned(salla, hook, body),
            allowed=frozenset({200}),
            order_key=order_key("salla", salla.id, sale.order_id),
        )
    if woo := by_platform.get("woocommerce"):
        sale = _sale(n + 2, skus[:1])
        hook = platforms.paid(woo, sale)

        def cash_on_delivery(value: dict[str, Any]) -> None:
            value.update(payment_method="cod", payment_method_title="Cash on delivery")

        body = _edit_json(hook.body, cash_on_delivery)
        add(
            woo,
            sale,
            "woocommerce_cod_processing",
            path=f"woocommerce/{woo.id}",
            body=body,
            headers=_resigned(woo, hook, body),
            allowed=frozenset({200}),
            order_key=order_key("woocommerce", woo.id, sale.order_id),
        )
    if shopify := by_platform.get("shopify"):
        sale = _sale(n + 3, skus[:1])
        hook = platforms.paid(shopify, sale)
        flipped = {
            **platforms.delivery_headers(shopify, hook),
            "X-Shopify-Topic": "orders/cancelled",
        }
        key = order_key("shopify", shopify.id, sale.order_id)
        add(
            shopify,
            sale,
            "shopify_paid_body_under_cancel_topic",
            path=f"shopify/{shopify.id}",
            body=hook.body,
            headers=flipped,
            allowed=frozenset({200, 202}),
            order_key=key,
        )
        add(  # the genuine paid webhook, after the flipped one: still delivered
            shopify,
            sale,
            "shopify_genuine_paid_after_the_flip",
            path=f"shopify/{shopify.id}",
            body=hook.body,
            headers=platforms.delivery_headers(shopify, hook),
            allowed=frozenset({200, 201, 202}),
            order_key=key,
            gets_codes=True,
            phone=sale.customer["phone"],
            units=1,
        )
    if standard := by_platform.get("standard"):
        for i, (kind, name, title) in enumerate(
            [
                ("nul_in_the_buyers_name", "Mal\x00lory", None),
                ("bidi_override_in_a_title", "Buyer", "PSN \u202egnp.exe"),
            ]
        ):
            sale = _sale(n + 10 + i, skus[:1], name=name)
            if title:
                sale.lines[0]["title"] = title
            hook = platforms.paid(standard, sale)
            add(
                standard,
                sale,
                kind,
                path=f"standard/{standard.id}",
                body=hook.body,
                headers=platforms.delivery_headers(standard, hook),
                allowed=frozenset({200, 201, 202}),
                order_key=order_key("standard", standard.id, sale.order_id),
                gets_codes=True,
                phone=sale.customer["phone"],
                units=1,
            )
        huge = _sale(n + 20, [skus[0]] * 1, quantity=100_000)
        hook = platforms.paid(standard, huge)
        add(
            standard,
            huge,
            "one_order_of_100000_units",
            path=f"standard/{standard.id}",
            body=hook.body,
            headers=platforms.delivery_headers(standard, hook),
            allowed=frozenset({413, 422}),
            order_key=order_key("standard", standard.id, huge.order_id),
        )
        many = _sale(n + 21, [f"RND-{secrets.token_hex(4).upper()}" for _ in range(40)])
        hook = platforms.paid(standard, many)
        add(
            standard,
            many,
            "forty_random_skus",
            path=f"standard/{standard.id}",
            body=hook.body,
            headers=platforms.delivery_headers(standard, hook),
            allowed=frozenset({200, 201, 202, 422}),  # refused, or backordered at most
        )
        sale = _sale(n + 22, skus[:1])
        hook = platforms.paid(standard, sale)
        signed = platforms.delivery_headers(standard, hook)
        signature = signed["webhook-signature"]
        middle = len(signature) // 2
        bad = (
            signature[:middle]
            + ("A" if signature[middle] != "A" else "B")
            + signature[middle + 1 :]
        )
        add(
            standard,
            sale,
            "one_signature_character_flipped",
            path=f"standard/{standard.id}",
            body=hook.body,
            headers={**signed, "webhook-signature": bad},
            allowed=frozenset({401}),
            order_key=order_key("standard", standard.id, sale.order_id),
        )
        for kind, store_id in [
            ("store_id_with_a_colon", f"{standard.id}:a"),
            ("store_id_climbing_out", "..%2F..%2Fetc"),
            ("store_id_with_a_nul", "demo%00store"),
            ("store_id_with_a_bidi_override", "%E2%80%AEerots"),
        ]:
            add(
                standard,
                None,
                kind,
                path=f"standard/{store_id}",
                body=hook.body,
                headers=signed,
                allowed=frozenset({400, 401, 404}),
            )
    return found


async def _send(session: aiohttp.ClientSession, gateway: str, attack: Attack) -> int:
    async with session.post(
        f"{gateway}/webhooks/{attack.path}", data=attack.body, headers=attack.headers
    ) as reply:
        body = await reply.read()
        if reply.status >= 400:
            try:
                if "error" not in json.loads(body):
                    return -reply.status  # an error answer without a JSON reason
            except ValueError:
                return -reply.status
        return reply.status


async def watch_rss(pid_of: Callable[[], int | None], stop: asyncio.Event, memory: Memory) -> None:
    """The allocator's peak resident memory, sampled twice a second until `stop`."""
    while not stop.is_set():
        pid = pid_of()
        if pid:
            with contextlib.suppress(psutil.Error):
                memory.allocator_peak_rss = max(
                    memory.allocator_peak_rss, psutil.Process(pid).memory_info().rss
                )
        await asyncio.sleep(0.5)


async def send_all(
    gateway: str, home: Any, skus: list[str], rounds: int, pause_s: float
) -> list[tuple[Attack, int]]:
    """Every attack, `rounds` times over (fresh orders each round), `pause_s` apart; each with
    the status it got (negative: an error answer without a JSON reason)."""
    answered: list[tuple[Attack, int]] = []
    stores = stores_of(home)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        for _ in range(rounds):
            for attack in attacks(stores, skus):
                answered.append((attack, await _send(session, gateway, attack)))
            await asyncio.sleep(pause_s)
    return answered


async def cross_account_units(database: str) -> int:
    conn = await asyncpg.connect(database)
    try:
        return int(
            await conn.fetchval(
                """
                SELECT count(*) FROM allocator.units u
                JOIN allocator.codes c ON c.code_id = u.code_id
                WHERE c.account <> u.account
                """
            )
        )
    finally:
        await conn.close()


async def restocker_skus(restocker: str) -> set[str]:
    """The sku label values the restocker exports."""
    async with aiohttp.ClientSession() as session, session.get(f"{restocker}/metrics") as reply:
        text = await reply.text()
    return {part.split('"')[1] for part in text.split('sku="')[1:]} if 'sku="' in text else set()


async def check(
    info: dict[str, Any], answered: list[tuple[Attack, int]], limit_s: float
) -> list[str]:
    problems = []
    wrong = Counter(f"{a.kind}: {status}" for a, status in answered if status not in a.allowed)
    if wrong:
        problems.append(f"attacks answered wrongly (negative: not JSON): {dict(wrong)}")
    sent = [a for a, _ in answered]
    allocated = {
        json.loads(v)["order_key"]
        for v in await invariants.read_topic(info["kafka"], "code.allocated")
    }
    payable = {a.order_key for a in sent if a.gets_codes}
    unpaid = {a.order_key for a in sent if a.order_key and not a.gets_codes} - payable
    got_codes = sorted(unpaid & allocated)
    if got_codes:
        problems.append(f"codes allocated for unpaid or refused orders: {got_codes[:5]}")
    deadline = time.monotonic() + limit_s
    owed = [a for a in sent if a.gets_codes]
    while True:
        received = await invariants.inbox(info["sandbox"])
        missing = [a.kind for a in owed if len(received.get(a.phone or "", [])) < a.units]
        if not missing or time.monotonic() > deadline:
            break
        await asyncio.sleep(1)
    if missing:
        problems.append(f"acknowledged payable orders not delivered: {dict(Counter(missing))}")
    crossed = await cross_account_units(info["database"])
    if crossed:
        problems.append(f"{crossed} units hold a code of another account")
    labelled = {s for s in await restocker_skus(info["restocker"]) if s.startswith("RND-")}
    if labelled:
        problems.append(f"the restocker labels {len(labelled)} random skus")
    return problems
