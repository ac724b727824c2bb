"""Numbers as the blacklist keys them: E.164, decided by :func:`receiver.numbers.e164`. Pure, no I/O.

:func:`receiver.numbers.e164` (``phonenumbers``) is the one definition of a number; it takes
about 35 µs a call, too slow for checking 500 numbers within a few milliseconds. Numbers that
are already in E.164 (what the send API takes, so what senders check) go through a shortcut
that asks ``phonenumbers``' own metadata the same two questions ``parse`` and
``is_possible_number`` would (would a national prefix be stripped? is the length possible?),
cached per country code; anything it is not sure about goes the long way. Plain digits
(``8615112345678``, ``15112345678``) have a shortcut of the same kind, per default region: the
questions ``parse`` asks of a number without ``+`` (an international prefix? the region's own
country code in front, and a number too long without it? a national prefix?). A list of 500
numbers of either kind is first tried as a whole, with one match of one expression. The tests
hold every shortcut equal to the long way on generated numbers of every country code and of
many regions.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Literal, cast
from urllib.parse import unquote

import phonenumbers
from phonenumbers import PhoneMetadata

from ..logs import mask_number
from ..numbers import e164


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
    candidate = text
    if 3 <= len(text) <= 17 and text.isascii() and text.isdigit():
        national = _national(text, default_region)
        if national:
            return national
        if national is not False or text[0] == "0":
            return e164(text, default_region)
        candidate = "+" + text  # not a national number: e164 tries it with a "+" next
    verdict = _plus_verdict(candidate)
    if verdict is not None:
        return candidate if verdict else None
    return e164(text, default_region)


def many_to_e164(raws: Sequence[object], default_region: str = "CN") -> list[str | None]:
    """:func:`to_e164` for a list: what a check of 500 numbers calls. When every item is already
    a possible E.164 number (what senders send), one match over them all says so."""
    if raws and all(type(raw) is str for raw in raws):
        texts = cast("Sequence[str]", raws)
        joined = ",".join(texts)
        if joined.count(",") == len(texts) - 1:
            if _possible_e164_list().fullmatch(joined):
                return list(texts)
            plain = _plain_digits_list(default_region)
            if plain is not None and plain[1].fullmatch(joined):
                code = plain[0]  # each item matched with the code in front, or (not starting with it) without
                return ["+" + raw if raw.startswith(code) else f"+{code}{raw}" for raw in texts]
    fast = _possible_e164().fullmatch
    return [raw if type(raw) is str and fast(raw) else to_e164(raw, default_region) for raw in raws]


def prepare(default_region: str = "CN") -> None:
    """Build the shortcuts' tables now (about 0.2 s), not in the first check a sender makes."""
    _possible_e164_list()
    _plain_digits_list(default_region)


def mask(raw: object) -> str | None:
    """For logs: enough to tell numbers apart, not to dial one."""
    return mask_number(str(raw)) if raw is not None else None


def _plus_verdict(text: str) -> bool | None:
    """Whether ``+digits`` is a possible number ``parse`` keeps as it is; ``None`` when not sure
    (or ``text`` is not of that form)."""
    if _possible_e164().fullmatch(text):
        return True
    if 8 <= len(text) <= 16 and text[0] == "+" and text[1] != "0" and text.isascii() and text[1:].isdigit():
        return _shortcut(text[1:])
    return None


def _national(digits: str, region: str) -> str | Literal[False] | None:
    """What ``parse(digits, region)`` gives when it is a possible number (E.164), ``False`` when it is
    sure that is no possible number, ``None`` when not sure (the long way decides)."""
    rules = _region_rules(region)
    if rules is None:
        return None
    code, idd, prefix, lengths, too_long = rules
    if idd is not None and idd.match(digits):
        return None  # an international prefix: parse reads a country code after it
    national = digits
    if digits.startswith(code):
        # parse drops the region's own code only when the number is too long with it (or when
        # the national-number pattern says so, which this shortcut does not judge)
        if len(digits) not in too_long:
            return None
        national = digits[len(code):]
    if national[:1] == "0" or (prefix is not None and prefix.match(national)):
        return None  # a national prefix parse might strip, or leading zeros it keeps
    return f"+{code}{national}" if len(national) in lengths else False


@lru_cache(maxsize=64)
def _region_rules(
    region: str,
) -> tuple[str, re.Pattern[str] | None, re.Pattern[str] | None, frozenset[int], frozenset[int]] | None:
    """For a region that is its country code's main one: the code, its international prefix, its
    national prefix for parsing, the possible national lengths, and the lengths ``parse`` deems
    too long (so that it drops a leading country code)."""
    metadata = PhoneMetadata.metadata_for_region(region)
    if (
        metadata is None
        or metadata.country_code is None
        or phonenumbers.region_code_for_country_code(metadata.country_code) != region
    ):
        return None
    code = str(metadata.country_code)
    if code not in _countries():
        return None
    _, prefix, lengths = _countries()[code]
    general = metadata.general_desc
    if general is None or not general.possible_length:
        return None
    longest, local = max(general.possible_length), set(general.possible_length_local_only)
    too_long = frozenset(n for n in range(longest + 1, 40) if n not in local)
    idd = re.compile(metadata.international_prefix) if metadata.international_prefix else None
    return code, idd, prefix, lengths, too_long


@lru_cache(maxsize=64)
def _plain_digits_list(region: str) -> tuple[str, re.Pattern[str]] | None:
    """:func:`_national`'s yes as one expression over a comma-separated list: digits that are no
    international prefix, with the region's code in front (when too long without it dropped) or
    not starting with it, then no national prefix, then a possible length; 3 to 17 digits in all,
    what :func:`to_e164` gives to :func:`_national`. ``None`` when a pattern would not mean the
    same inside a look-ahead."""
    rules = _region_rules(region)
    if rules is None:
        return None
    code, idd, prefix, lengths, too_long = rules
    if any(p is not None and _CONTEXTUAL.search(p.pattern) for p in (idd, prefix)):
        return None
    refuse = "0" if prefix is None else f"0|(?:{prefix.pattern})"
    with_code = frozenset(n for n in lengths if n + len(code) in too_long and n + len(code) <= 17)
    alone = frozenset(n for n in lengths if 3 <= n <= 17)
    branches = [f"(?!{code})(?!{refuse})(?:{'|'.join(_ranges(alone))})"] if alone else []
    if with_code:
        branches.append(f"{code}(?!{refuse})(?:{'|'.join(_ranges(with_code))})")
    if not branches:
        return None
    one = ("" if idd is None else f"(?!{idd.pattern})") + f"(?:{'|'.join(branches)})"
    return code, re.compile(f"(?:{one},)*{one}")


def _shortcut(digits: str) -> bool | None:
    """Whether ``+digits`` is a possible number, when ``parse`` would keep it as it is; else ``None``."""
    countries = _countries()
    rules = countries.get(digits[:1]) or countries.get(digits[:2]) or countries.get(digits[:3])
    if rules is None:  # country codes are prefix-free: at most one of the three is one
        return None
    size, prefix, lengths = rules
    national = digits[size:]
    if national[:1] == "0" or (prefix is not None and prefix.match(national)):
        return None  # parse might strip a national prefix or keep leading zeros: let it decide
    return len(national) in lengths


@lru_cache(maxsize=1)
def _countries() -> dict[str, tuple[int, re.Pattern[str] | None, frozenset[int]]]:
    """Per country code: its length, the national prefix ``parse`` strips, the possible national lengths."""
    table = {}
    for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
        region = phonenumbers.region_code_for_country_code(code)
        metadata = PhoneMetadata.metadata_for_region_or_calling_code(code, region)
        if metadata is None:
            continue
        pattern = metadata.national_prefix_for_parsing
        lengths = frozenset(
            n for n in range(2, 18) if phonenumbers.is_possible_number(phonenumbers.PhoneNumber(code, int("1" * n)))
        )
        table[str(code)] = (len(str(code)), re.compile(pattern) if pattern else None, lengths)
    return table


# A national-prefix pattern means the same inside a look-ahead after the country code (or before
# the comma of a list) as it does matched alone at the start of the national number, unless it
# anchors (SM's, MG's and NF's end in "$": alone, the number's end; in a list, no match), looks
# behind it or numbers groups.
_CONTEXTUAL = re.compile(r"[\^$]|\\[AbBZ1-9]|\(\?P=|\(\?<|\(\?[aiLmsux]")


_Trie = dict[str, "_Trie | str"]  # a digit's subtree, or under "$" the national part's expression


@lru_cache(maxsize=1)
def _possible_e164() -> re.Pattern[str]:
    """One expression for "+CC NATIONAL that parse keeps as it is and finds possible": the shortcut's
    yes, for every country code at once (a trie of the codes, so a number tries a few branches)."""
    trie: _Trie = {}
    for code, (_, prefix, lengths) in _countries().items():
        if not lengths or (prefix is not None and _CONTEXTUAL.search(prefix.pattern)):
            continue  # left to _shortcut
        node = trie
        for digit in code:
            child = node.setdefault(digit, {})
            assert isinstance(child, dict)  # a code's node has no "$" before its last digit
            node = child
        refuse = "0" if prefix is None else f"0|(?:{prefix.pattern})"
        node["$"] = f"(?!{refuse})(?:{'|'.join(_ranges(lengths))})"
    return re.compile(r"\+" + _branches(trie))


@lru_cache(maxsize=1)
def _possible_e164_list() -> re.Pattern[str]:
    one = _possible_e164().pattern
    return re.compile(f"(?:{one},)*{one}")


def _branches(node: _Trie) -> str:
    end = node.get("$")
    if isinstance(end, str):  # country codes are prefix-free: a code's node has no children
        return end
    return "(?:" + "|".join(digit + _branches(sub) for digit, sub in sorted(node.items()) if isinstance(sub, dict)) + ")"


def _ranges(lengths: frozenset[int]) -> list[str]:
    """{5, 6, 7, 8, 11} -> ``[0-9]{5,8}``, ``[0-9]{11}``."""
    out: list[str] = []
    ordered = sorted(lengths)
    start = previous = ordered[0]
    for n in [*ordered[1:], -1]:
        if n != previous + 1:
            out.append(f"[0-9]{{{start}}}" if start == previous else f"[0-9]{{{start},{previous}}}")
            start = n
        previous = n
    return out
