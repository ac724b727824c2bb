"""Phone numbers in E.164, with ``phonenumbers``: the one place that decides what a number is."""

from __future__ import annotations

import re
from functools import lru_cache

import phonenumbers

_DIALABLE = re.compile(r"\+?[\d\s\-().]{3,32}")


@lru_cache(maxsize=65536)
def e164(number: str | None, default_region: str = "CN") -> str | None:
    """``+8615112345678``, ``8615112345678``, ``0086 151 1234 5678`` -> ``+8615112345678``.

    ``None`` when it is no possible number (masked demo numbers such as ``+86151****6789``,
    channel numbers, garbage). Digits without a country code are read in ``default_region``.
    """
    if not number:
        return None
    text = number.strip()
    if not _DIALABLE.fullmatch(text):
        return None
    candidates = [text]
    if text[0].isdigit() and not text.startswith("0"):
        candidates.append("+" + text)  # 8615112345678: a country code without its plus
    for candidate in candidates:
        try:
            parsed = phonenumbers.parse(candidate, default_region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_possible_number(parsed):
            return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return None
