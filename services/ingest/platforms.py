"""One adapter per store platform behind one interface: verify the sender, then normalise."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from services.ingest import salla, shopify, standard, woocommerce, zid
from services.ingest.stores import Store
from shared.events import OrderCancelled, OrderPaid

Verify = Callable[[Store, Mapping[str, str], bytes], None]
Normalise = Callable[[Store, Mapping[str, str], Any], OrderPaid | OrderCancelled | None]


def _never_a_ping(content_type: str, raw: bytes) -> bool:
    return False


@dataclass(frozen=True)
class Adapter:
    """`verify` raises InvalidSignature; `normalise` returns the event, None (acknowledge only)
    or raises InvalidOrder; `is_ping` spots an unsigned set-up ping that must get 200."""

    platform: str
    verify: Verify
    normalise: Normalise
    is_ping: Callable[[str, bytes], bool] = _never_a_ping
    accepted_status: int = 202


def _verify_standard(store: Store, headers: Mapping[str, str], raw: bytes) -> None:
    standard.verify(store.secrets, headers, raw)


def _normalise_standard(
    store: Store, headers: Mapping[str, str], payload: Any
) -> OrderPaid | OrderCancelled | None:
    return standard.normalise(store, payload)


ADAPTERS: dict[str, Adapter] = {
    "standard": Adapter("standard", _verify_standard, _normalise_standard),
    # Salla counts only 200 and 201 as delivered: a 202 would make it retry.
    "salla": Adapter("salla", salla.verify, salla.normalise, accepted_status=200),
    "zid": Adapter("zid", zid.verify, zid.normalise),
    "shopify": Adapter("shopify", shopify.verify, shopify.normalise),
    "woocommerce": Adapter(
        "woocommerce", woocommerce.verify, woocommerce.normalise, woocommerce.is_ping
    ),
}
PLATFORMS = tuple(ADAPTERS)
