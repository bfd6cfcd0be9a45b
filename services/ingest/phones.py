"""Buyer phone numbers to E.164, as the delivery providers want them."""

from __future__ import annotations

import re
import unicodedata

_DIGITS = re.compile(r"\d+")
DEFAULT_COUNTRY_CODE = "966"  # Saudi Arabia: where a bare national number most often comes from


def to_e164(raw: str, default_country_code: str = DEFAULT_COUNTRY_CODE) -> str | None:
    """`+9665XXXXXXXX` from the usual spellings (`05…`, `9665…`, `00966…`); None if hopeless."""
    text = raw.strip()
    # `\d` also matches Arabic-Indic and other digits: providers want ASCII ones
    digits = "".join(str(unicodedata.decimal(d)) for d in "".join(_DIGITS.findall(text)))
    if not digits:
        return None
    if text.startswith("+"):
        number = digits
    elif digits.startswith("00"):
        number = digits[2:]
    elif digits.startswith("0"):
        number = default_country_code + digits[1:]
    elif len(digits) <= 9:
        number = default_country_code + digits
    else:
        number = digits
    if not 8 <= len(number) <= 15:
        return None
    return "+" + number
