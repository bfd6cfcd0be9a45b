"""What the buyer reads: template parameters from an allocation, in the buyer's language."""

from __future__ import annotations

from shared.codecrypt import CodeCipher, SealedCode
from shared.events import CodeAllocated


def template_params(event: CodeAllocated, cipher: CodeCipher) -> list[str]:
    """[store name, product, codes]: codes are opened here and live only in this list."""
    titles = {line.sku: line.title or line.sku for line in event.lines}
    products = list(dict.fromkeys(titles.get(c.sku, c.sku) for c in event.codes))
    codes = [cipher.open(SealedCode.from_text(c.sealed), c.sku) for c in event.codes]
    separator = "، " if event.customer.locale == "ar" else ", "
    return [event.store_name or event.store_id, separator.join(products), " | ".join(codes)]
