"""What the buyer reads, in the buyer's language, from the store's templates or ours.

Codes are opened here, put into one `Outbound`, and live only as long as that message.
Store templates (`StoreConfig.templates`) are looked up by name: `sms.ar`, `email.en`, … then by
locale alone (`ar`, `en`); `subject.<locale>` is the email subject; `whatsapp` names an approved
WhatsApp template. Placeholders: {store}, {product}, {codes}, {instructions}.

A template is filled in one pass: what is put in is never read again as a template, so a
product titled `{codes}` shows those seven characters, never a code. Titles and store names are
the store's data: their bidi and control characters are removed first, so none can reorder or
hide the text around the code on the buyer's screen.
"""

from __future__ import annotations

import html
import string
import unicodedata
from dataclasses import dataclass, field

from services.notifier.providers import Outbound
from shared.codecrypt import CodeCipher, SealedCode
from shared.events import CodeAllocated, StoreConfig

# Arabic reads right to left; a code reads left to right inside it. Isolates keep each code
# in one piece on the buyer's screen, and the mark makes the message start right-aligned.
RLM, LRI, PDI = "\u200f", "\u2066", "\u2069"

TEXT = {
    "en": "{store}: your {product} code: {codes}\n{instructions}",
    "ar": "{store}: رمز {product} الخاص بك: {codes}\n{instructions}",
}
SUBJECT = {"en": "{store}: your {product} code", "ar": "{store}: رمز {product}"}
INSTRUCTIONS = {
    "en": "Redeem it in the store or app it is for. Never share it with anyone.",
    "ar": "استخدمه في المتجر أو التطبيق المخصص له، ولا تشاركه مع أي أحد.",
}
DEFAULT_WHATSAPP_TEMPLATE = "tasleem_code_delivery"
PLACEHOLDERS = ("store", "product", "codes", "instructions")
# explicit embeddings, overrides, isolates and marks (Unicode's Bidi_Control characters)
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


_PLACEHOLDER = (
    r"(?P<escaped>(?!x)x)|\{(?P<named>" + "|".join(PLACEHOLDERS) + r")\}"
    r"|(?P<braced>(?!x)x)|(?P<invalid>(?!x)x)"
)


class _Template(string.Template):
    """`{name}` placeholders, substituted once by `string.Template` (no `$`, no format spec,
    no attribute lookup: a store's template is data, never code); anything else is text."""

    delimiter = "{"
    # a string here, which string.Template compiles; its four groups must exist, three of them
    # never match: no escapes, no `{` left as an error, only the four names
    pattern = _PLACEHOLDER  # type: ignore[assignment]


def plain(text: str, *, newlines: bool = False) -> str:
    """`text` without bidi controls, control characters (Cc), line or paragraph separators;
    with `newlines`, line breaks stay (a store's instructions may have several lines)."""
    kept = (
        ch
        for ch in text
        if ch not in BIDI_CONTROLS
        and ((newlines and ch == "\n") or unicodedata.category(ch) not in ("Cc", "Zl", "Zp"))
    )
    return "".join(kept).strip()


@dataclass(frozen=True)
class Content:
    store: str
    product: str
    locale: str
    codes: list[str] = field(repr=False)
    instructions: str = ""

    def codes_text(self) -> str:
        if self.locale == "ar":
            return " | ".join(f"{LRI}{code}{PDI}" for code in self.codes)
        return " | ".join(self.codes)


def content(event: CodeAllocated, cipher: CodeCipher, store: StoreConfig | None) -> Content:
    """Open the part's codes (CodeDecryptError when they do not open for their sku)."""
    locale = event.customer.locale
    titles = {line.sku: plain(line.title or "") or line.sku for line in event.lines}
    products = list(dict.fromkeys(titles.get(c.sku, c.sku) for c in event.codes))
    codes = [cipher.open(SealedCode.from_text(c.sealed), c.sku) for c in event.codes]
    instructions = plain(
        (store.instructions.get(locale) if store else None) or INSTRUCTIONS[locale], newlines=True
    )
    return Content(
        store=plain(event.store_name or (store.name if store else "")) or event.store_id,
        product=("، " if locale == "ar" else ", ").join(products),
        locale=locale,
        codes=codes,
        instructions=instructions,
    )


def sample(
    store: StoreConfig | None, locale: str, store_name: str, product: str, codes: list[str]
) -> Content:
    """A message's content from sample values, cleaned as `content` cleans an order's, with the
    store's instructions: what an operator previews before the store's buyers see it."""
    return Content(
        store=plain(store_name or (store.name if store else "")) or "Store",
        product=plain(product) or "Product",
        locale=locale,
        codes=codes,
        instructions=plain(
            (store.instructions.get(locale) if store else None) or INSTRUCTIONS[locale],
            newlines=True,
        ),
    )


def template_params(event: CodeAllocated, cipher: CodeCipher) -> list[str]:
    """[store name, product, codes] for the WhatsApp template."""
    return whatsapp_params(content(event, cipher, None))


def whatsapp_params(c: Content) -> list[str]:
    return [c.store, c.product, c.codes_text()]


def _fill(template: str, c: Content, *, codes: bool = True) -> str:
    values = {
        "store": c.store,
        "product": c.product,
        "instructions": c.instructions,
        "codes": c.codes_text() if codes else "",
    }
    return _Template(template).substitute(values).strip()


def _template(store: StoreConfig | None, channel: str, locale: str, default: str) -> str:
    templates = store.templates if store else {}
    found = templates.get(f"{channel}.{locale}") or templates.get(locale) or default
    # a template that forgets the codes would deliver nothing: fall back to ours
    return found if "{codes}" in found else default


def text(c: Content, channel: str, store: StoreConfig | None = None) -> str:
    body = _fill(_template(store, channel, c.locale, TEXT[c.locale]), c)
    return RLM + body if c.locale == "ar" else body


def subject(c: Content, store: StoreConfig | None = None) -> str:
    templates = store.templates if store else {}
    chosen = templates.get(f"subject.{c.locale}") or SUBJECT[c.locale]
    return _fill(chosen, c, codes=False)  # a code never goes in a subject line


def html_body(c: Content, store: StoreConfig | None = None) -> str:
    lines = _fill(_template(store, "email", c.locale, TEXT[c.locale]), c).split("\n")
    direction = "rtl" if c.locale == "ar" else "ltr"
    paragraphs = "".join(f"<p>{html.escape(line)}</p>" for line in lines if line)
    return f'<div dir="{direction}" lang="{c.locale}">{paragraphs}</div>'


def outbound(
    c: Content, channel: str, to: str, key: str, store: StoreConfig | None, whatsapp_template: str
) -> Outbound:
    """The message for one channel."""
    if channel == "whatsapp":
        name = (store.templates.get("whatsapp") if store else None) or whatsapp_template
        return Outbound(to, c.locale, key, template=name, params=whatsapp_params(c))
    if channel == "email":
        return Outbound(
            to,
            c.locale,
            key,
            subject=subject(c, store),
            text=text(c, channel, store),
            html=html_body(c, store),
        )
    return Outbound(to, c.locale, key, text=text(c, channel, store))
