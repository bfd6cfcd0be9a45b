"""One adapter per store platform behind one interface: verify the sender, then normalise."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from services.ingest import salla, shopify, standard, woocommerce, zid
from services.ingest.stores import Store
from shared.events import OrderCancelled, OrderPaid

Verify = Callable[[Store, Mapping[str, str], bytes], None]
Normalise = Callable[[Store, Mapping[str, str], Any], OrderPaid | OrderCancelled | None]


@dataclass(frozen=True)
class PlatformApis:
    """The platforms' own APIs, for adapters whose webhooks prove nothing about the order."""

    zid: zid.OrdersApi


Confirm = Callable[
    [PlatformApis, Store, OrderPaid | OrderCancelled], Awaitable[OrderPaid | OrderCancelled | None]
]


def _never_a_ping(content_type: str, raw: bytes) -> bool:
    return False


@dataclass(frozen=True)
class Adapter:
    """`verify` raises InvalidSignature; `normalise` returns the event, None (acknowledge only)
    or raises InvalidOrder; `is_ping` spots an unsigned set-up ping that must get 200;
    `confirm`, when set, asks the platform's API and returns the event its answer makes."""

    platform: str
    verify: Verify
    normalise: Normalise
    is_ping: Callable[[str, bytes], bool] = _never_a_ping
    accepted_status: int = 202
    confirm: Confirm | None = None


def _verify_standard(store: Store, headers: Mapping[str, str], raw: bytes) -> None:
    standard.verify(store.secrets, headers, raw)


def _normalise_standard(
    store: Store, headers: Mapping[str, str], payload: Any
) -> OrderPaid | OrderCancelled | None:
    return standard.normalise(store, payload)


async def _confirm_zid(
    apis: PlatformApis, store: Store, claimed: OrderPaid | OrderCancelled
) -> OrderPaid | OrderCancelled | None:
    return await zid.confirm(apis.zid, store, claimed)


ADAPTERS: dict[str, Adapter] = {
    "standard": Adapter("standard", _verify_standard, _normalise_standard),
    # Salla counts only 200 and 201 as delivered: a 202 would make it retry.
    "salla": Adapter("salla", salla.verify, salla.normalise, accepted_status=200),
    # basic auth only: every paid or cancelled order is confirmed through Zid's orders API
    "zid": Adapter("zid", zid.verify, zid.normalise, confirm=_confirm_zid),
    "shopify": Adapter("shopify", shopify.verify, shopify.normalise),
    "woocommerce": Adapter(
        "woocommerce", woocommerce.verify, woocommerce.normalise, woocommerce.is_ping
    ),
}
PLATFORMS = tuple(ADAPTERS)
