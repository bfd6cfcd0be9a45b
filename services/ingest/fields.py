"""What may enter the pipeline: every field the allocator stores or the notifier renders is
checked or normalised here, before the gateway acknowledges the order.

A field we can clean (a name, a product title) is cleaned, so a stray control character does
not cost a paid order; a field that identifies something (order id, sku, store id) is refused
when it is odd, since changing it would change what it names. PostgreSQL refuses U+0000 in
jsonb: a NUL acknowledged here used to be dead-lettered by the allocator, a paid order lost.
"""

from __future__ import annotations

import re
import unicodedata

from email_validator import EmailNotValidError, validate_email

# Store ids go into URLs, order keys (`platform:store:order`), metric-free logs and file names:
# no `:` (two stores could build one order key), no `/` or `..`, no case games.
STORE_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
STORE_ID_RULE = "lowercase letters, digits and '-', starting with a letter or digit, at most 63"
# Platform skus, product and variant ids, internal skus: word characters in any script and a
# little punctuation, never a control or bidi character.
SKU = re.compile(r"[^\W_][\w.:/+#@-]*(?: [\w.:/+#@-]+)*")
MAX_SKU = 128
MAX_ORDER_ID = 128
MAX_NAME = 200
MAX_TITLE = 200
AMOUNT = re.compile(r"-?\d{1,15}(?:\.\d{1,6})?")
CURRENCY = re.compile(r"[A-Za-z]{3}")
# Right-to-left embeddings, overrides and isolates: they reorder what a buyer reads
# ("gnp.exe" shown as "exe.png"); Arabic text needs none of them to display correctly.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def valid_store_id(store_id: str) -> bool:
    return STORE_ID.fullmatch(store_id) is not None


def clean_text(text: str, limit: int) -> str:
    """A name or title fit to store and show: controls and bidi overrides removed, white
    space collapsed, at most `limit` characters."""
    kept = "".join(
        " " if ch in "\t\n\r" else ch
        for ch in text
        if ch in "\t\n\r" or (unicodedata.category(ch) != "Cc" and ch not in BIDI_CONTROLS)
    )
    return " ".join(kept.split())[:limit]


def has_hidden(text: str) -> bool:
    """Does `text` hold a control character or a bidi override?"""
    return any(unicodedata.category(ch) == "Cc" or ch in BIDI_CONTROLS for ch in text)


def order_id_problem(order_id: str) -> str | None:
    """Why this order id cannot be carried, or None."""
    if not order_id:
        return "the order has no id"
    if len(order_id) > MAX_ORDER_ID or has_hidden(order_id) or order_id != order_id.strip():
        return f"the order id must be 1-{MAX_ORDER_ID} visible characters"
    return None


def valid_sku(sku: str) -> bool:
    return len(sku) <= MAX_SKU and SKU.fullmatch(sku) is not None


def usable_email(email: str | None) -> str | None:
    """The address if a provider could send to it (syntax only, no DNS), else None."""
    if not email:
        return None
    try:
        return validate_email(email.strip(), check_deliverability=False).normalized
    except EmailNotValidError:
        return None


def amount_or_none(total: str | None) -> str | None:
    """A decimal amount as sent, or None when it is not one (`inf`, `1e999999`, text)."""
    if total is None:
        return None
    text = total.strip()
    return text if AMOUNT.fullmatch(text) else None


def valid_currency(currency: str) -> bool:
    return CURRENCY.fullmatch(currency) is not None
