"""Numbers as the blacklist keys them: E.164, decided by :func:`receiver.numbers.e164`. Pure, no I/O.

:func:`receiver.numbers.e164` (``phonenumbers``) is the one definition of a number; it takes
about 35 µs a call, too slow for checking 500 numbers within a few milliseconds. Numbers that
are already in E.164 (what the send API takes, so what senders check) go through a shortcut
that asks ``phonenumbers``' own metadata the same two questions ``parse`` and
``is_possible_number`` would (would a national prefix be stripped? is the length possible?),
cached per country code; anything it is not sure about goes the long way. The tests hold the
shortcut equal to the long way on generated numbers of every country code.
"""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import unquote

import phonenumbers
from phonenumbers import PhoneMetadata

from ..logs import mask_number
from ..numbers import e164

_CANONICAL = re.compile(r"\+([1-9][0-9]{6,14})")


def to_e164(raw: object, default_region: str = "CN") -> str | None:
    """``+8615112345678``, ``8615112345678``, ``%2B8615112345678``, ``0086 151 1234 5678`` ->
    ``+8615112345678``; ``None`` for what is no possible number (masked ``+86151****6789``, a
    channel number, text). Digits without a country code are read in ``default_region``."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str) or not raw or len(raw) > 64:
        return None
    if "%" in raw:
        raw = unquote(raw)
    text = raw.strip()
    match = _CANONICAL.fullmatch(text)
    if match is not None:
        verdict = _shortcut(match.group(1))
        if verdict is not None:
            return text if verdict else None
    return e164(text, default_region)


def mask(raw: object) -> str | None:
    """For logs: enough to tell numbers apart, not to dial one."""
    return mask_number(str(raw)) if raw is not None else None


def _shortcut(digits: str) -> bool | None:
    """Whether ``+digits`` is a possible number, when ``parse`` would keep it as it is; else ``None``."""
    for size in (1, 2, 3):
        rules = _country(int(digits[:size]))
        if rules is None:
            continue
        national = digits[size:]
        prefix, lengths = rules
        if national.startswith("0") or (prefix is not None and prefix.match(national)):
            return None  # parse might strip a national prefix or keep leading zeros: let it decide
        return len(national) in lengths
    return None


@lru_cache(maxsize=None)
def _country(code: int) -> tuple[re.Pattern[str] | None, frozenset[int]] | None:
    """The national prefix ``parse`` strips and the possible national lengths, of a country code."""
    if code not in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
        return None
    region = phonenumbers.region_code_for_country_code(code)
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(code, region)
    if metadata is None:
        return None
    pattern = metadata.national_prefix_for_parsing
    prefix = re.compile(pattern) if pattern else None
    lengths = frozenset(
        n for n in range(2, 18) if phonenumbers.is_possible_number(phonenumbers.PhoneNumber(code, int("1" * n)))
    )
    return prefix, lengths
