"""Unsubscribe and re-subscribe keywords: is this reply, as a whole, one of them? Pure, no I/O.

A reply counts only when the whole message is the keyword (``T-shirt``, ``Thanks`` and
``Tomorrow`` unsubscribe no one). Before comparing, both sides are normalised the same way:

1. Unicode NFKC, so full-width ``Ｔ``/``ＴＤ`` become ``T``/``TD`` and the ideographic space a space;
2. surrounding whitespace and invisible format characters (zero-width space, BOM, ...) go;
3. trailing punctuation goes (any Unicode punctuation, and ``~``): ``T.``, ``退订。``, ``TD!!``;
4. case is folded: ``t``, ``td``, ``Td``.

Nothing else is forgiven: inner spaces (``T D``), leading punctuation, other letters, and
look-alike letters of other scripts (Cyrillic ``Т``, Greek ``Τ``) do not match.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

# The platform's own unsubscribe/blacklist outcomes in status reports (docs/protocol.md, Status codes).
BLACKLIST_CODES = frozenset({"SC:0016", "SC:0003", "SC:0005", "BLACK", "TDBLACK", "TSBLACK", "MBBLACK"})

Intent = Literal["optout", "resubscribe"]

_EXTRA_TRAILING = frozenset("~")


def _is_blank(char: str) -> bool:
    return char.isspace() or unicodedata.category(char) in {"Cf", "Cc", "Zs", "Zl", "Zp"}


def _is_trailing_junk(char: str) -> bool:
    return _is_blank(char) or unicodedata.category(char).startswith("P") or char in _EXTRA_TRAILING


def normalise(text: str) -> str:
    """The form replies and keywords are compared in."""
    folded = unicodedata.normalize("NFKC", text)
    start, end = 0, len(folded)
    while start < end and _is_blank(folded[start]):
        start += 1
    while end > start and _is_trailing_junk(folded[end - 1]):
        end -= 1
    # casefold() may produce text NFKC would change again (rare ligatures): normalise once more.
    return unicodedata.normalize("NFKC", folded[start:end].casefold())


def is_blacklist_code(status: str | None) -> bool:
    """``SC:0016``, ``MBBLACK``, ... in any case, surrounding blanks ignored."""
    return status is not None and status.strip().upper() in BLACKLIST_CODES


@dataclass(frozen=True)
class Keywords:
    """The configured keywords, normalised once."""

    optout: frozenset[str]
    resubscribe: frozenset[str]

    @classmethod
    def of(cls, optout: Iterable[str], resubscribe: Iterable[str] = ()) -> Keywords:
        out = _normalised_set(optout, "unsubscribe")
        back = _normalised_set(resubscribe, "re-subscribe")
        both = out & back
        if both:
            raise ValueError(f"keywords both unsubscribe and re-subscribe: {sorted(both)}")
        return cls(out, back)

    def intent(self, body: str | None) -> Intent | None:
        """``optout`` or ``resubscribe`` when the whole reply is one of the keywords, else ``None``."""
        if not body:
            return None
        text = normalise(body)
        if text in self.optout:
            return "optout"
        if text in self.resubscribe:
            return "resubscribe"
        return None


def _normalised_set(words: Iterable[str], what: str) -> frozenset[str]:
    result = set()
    for word in words:
        text = normalise(word)
        if not text:
            raise ValueError(f"an empty {what} keyword (after normalisation): {word!r}")
        result.add(text)
    return frozenset(result)
