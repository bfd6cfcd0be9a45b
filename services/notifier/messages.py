"""What the buyer reads, in the buyer's language, from the store's templates or ours.

Codes are opened here, put into one `Outbound`, and live only as long as that message.
Store templates (`StoreConfig.templates`) are looked up by name: `sms.ar`, `email.en`, … then by
locale alone (`ar`, `en`); `subject.<locale>` is the email subject; `whatsapp` names an approved
WhatsApp template. Placeholders: {store}, {product}, {codes}, {instructions}.
"""

from __future__ import annotations

import html
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
    titles = {line.sku: line.title or line.sku for line in event.lines}
    products = list(dict.fromkeys(titles.get(c.sku, c.sku) for c in event.codes))
    codes = [cipher.open(SealedCode.from_text(c.sealed), c.sku) for c in event.codes]
    instructions = (store.instructions.get(locale) if store else None) or INSTRUCTIONS[locale]
    return Content(
        store=event.store_name or (store.name if store else "") or event.store_id,
        product=("، " if locale == "ar" else ", ").join(products),
        locale=locale,
        codes=codes,
        instructions=instructions,
    )


def template_params(event: CodeAllocated, cipher: CodeCipher) -> list[str]:
    """[store name, product, codes] for the WhatsApp template."""
    return whatsapp_params(content(event, cipher, None))


def whatsapp_params(c: Content) -> list[str]:
    return [c.store, c.product, c.codes_text()]


def _fill(template: str, c: Content) -> str:
    # plain replacement, not str.format: a store's template is data, never code
    for name, value in (
        ("{store}", c.store),
        ("{product}", c.product),
        ("{instructions}", c.instructions),
        ("{codes}", c.codes_text()),
    ):
        template = template.replace(name, value)
    return template.strip()


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
    return _fill(chosen.replace("{codes}", ""), c)  # a code never goes in a subject line


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
