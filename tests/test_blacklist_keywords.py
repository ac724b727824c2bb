"""Unsubscribe keywords (receiver/blacklist/keywords.py): every variant, and what only looks like one."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from receiver.blacklist.keywords import Keywords, is_blacklist_code, normalise

DEFAULT = Keywords.of(["T", "TD", "R", "退订"])
WITH_RESUBSCRIBE = Keywords.of(["T", "TD", "R", "退订"], ["START", "订阅"])


def full_width(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


UNSUBSCRIBES = [
    # the keywords as Huawei's templates ask for them
    "T", "TD", "R", "退订",
    # case
    "t", "td", "Td", "tD", "r",
    # full-width (NFKC), alone and mixed
    "Ｔ", "ｔ", "ＴＤ", "ｔｄ", "Ｔd", "Ｒ", "ｒ",
    # surrounding whitespace: spaces, tabs, newlines, the ideographic space, zero-width ones
    " T", "T ", "  TD  ", "\tR\n", "\r\nT\r\n", "\u3000退订\u3000", "\u00a0T\u00a0", "\u200bT\u200b", "\ufeffTD",
    # trailing punctuation, ASCII and CJK, repeated, mixed with spaces
    "T.", "T!", "T!!!", "T?", "T,", "T;", "TD.", "R!", "退订。", "退订！", "退订!", "退订～", "退订~", "T~",
    "T…", "T...", "T-", "T .", "T 。", "TD ！！", "Ｔ．", "Ｒ！", "T)", "T」", "T\"", "T'",
]  # fmt: skip

NOT_UNSUBSCRIBES = [
    # words that start with a keyword
    "T-shirt", "Thanks", "Tomorrow",
    # the keyword and more: letters, digits, words, a second keyword
    "TT", "TDD", "RT", "TR", "Tx", "T1", "1T", "T D", "T.D", "R T", "TD TD", "T T",
    "T please", "STOP T", "T-mobile", "TD银行", "Thank you", "tea", "Ted", "Rob", "Rd",
    # Chinese: more than the keyword, or part of it
    "退订，谢谢", "不退订", "退", "订", "退 订", "请退订", "退订了吗", "退订123",
    # punctuation in front counts (only trailing punctuation is forgiven)
    ".T", "-T", "「退订」", "“T”", "(T)",
    # look-alike letters of other scripts are not NFKC-equivalent
    "Т", "Τ", "ТД", "Ꭲ",
    # nothing
    "", " ", "\u3000", ".", "。", "!!!",
    # other replies people send
    "STOP", "N", "0", "00000", "********", "好的", "收到",
]  # fmt: skip


@pytest.mark.parametrize("body", UNSUBSCRIBES)
def test_unsubscribes(body: str) -> None:
    assert DEFAULT.intent(body) == "optout"


@pytest.mark.parametrize("body", NOT_UNSUBSCRIBES)
def test_does_not_unsubscribe(body: str) -> None:
    assert DEFAULT.intent(body) is None


@pytest.mark.parametrize(
    ("body", "intent"),
    [("START", "resubscribe"), ("start", "resubscribe"), ("Ｓｔａｒｔ!", "resubscribe"), (" 订阅。", "resubscribe"),
     ("START NOW", None), ("T", "optout"), ("restart", None)],
)  # fmt: skip
def test_resubscribe_keywords(body: str, intent: str | None) -> None:
    assert WITH_RESUBSCRIBE.intent(body) == intent


def test_no_resubscribe_keyword_by_default() -> None:
    assert DEFAULT.resubscribe == frozenset()
    assert DEFAULT.intent("START") is None


def test_configured_keywords_are_normalised_like_replies() -> None:
    keywords = Keywords.of([" ＳＴＯＰ ", "Unsubscribe."])
    assert keywords.optout == {"stop", "unsubscribe"}
    assert keywords.intent("stop!") == "optout"
    assert keywords.intent("UNSUBSCRIBE") == "optout"
    assert keywords.intent("T") is None


@pytest.mark.parametrize(
    ("optout", "resubscribe"), [(["T", " "], []), (["..."], []), (["T"], ["t."]), (["T"], [""])]
)
def test_bad_keyword_settings_are_refused(optout: list[str], resubscribe: list[str]) -> None:
    with pytest.raises(ValueError):
        Keywords.of(optout, resubscribe)


@pytest.mark.parametrize(
    ("status", "expected"),
    [("SC:0016", True), ("SC:0003", True), ("SC:0005", True), ("BLACK", True), ("TDBLACK", True),
     ("TSBLACK", True), ("MBBLACK", True), ("mbblack", True), (" SC:0016 ", True), ("sc:0016", True),
     ("SC:0004", False), ("SC:0006", False), ("SC:00160", False), ("BLACKLIST", False), ("DELIVRD", False),
     ("KEYWORD", False), ("E200027", False), ("", False), (None, False)],
)  # fmt: skip
def test_platform_blacklist_codes(status: str | None, expected: bool) -> None:
    assert is_blacklist_code(status) is expected


# --- properties -------------------------------------------------------------------------------

KEYWORD = st.sampled_from(["T", "TD", "R", "退订"])
BLANK = st.text(st.sampled_from(" \t\r\n\u3000\u00a0\u200b\ufeff\u2003"), max_size=4)
TRAILING = st.text(st.sampled_from(".,!?;:…。！？，、～~-)」』\"'"), max_size=5)


def mixed_case(draw: st.DrawFn, text: str) -> str:
    return "".join(c.upper() if draw(st.booleans()) else c.lower() for c in text)


@st.composite
def decorated(draw: st.DrawFn) -> str:
    """A keyword as a person might really type it: any case, half or full width, blanks, trailing punctuation."""
    word = mixed_case(draw, draw(KEYWORD))
    if draw(st.booleans()):
        word = full_width(word)
    tail = draw(TRAILING)
    if draw(st.booleans()):
        tail = full_width(tail)
    return draw(BLANK) + word + draw(BLANK) + tail + draw(BLANK)


@given(decorated())
def test_any_decoration_of_a_keyword_unsubscribes(body: str) -> None:
    assert DEFAULT.intent(body) == "optout"


ALNUM = st.characters(categories=["Lu", "Ll", "Lo", "Nd"])


@given(decorated(), ALNUM, st.integers(min_value=0, max_value=40))
def test_a_keyword_with_any_other_letter_or_digit_is_no_keyword(body: str, extra: str, where: int) -> None:
    """Look-alikes: the keyword with one more letter or digit anywhere (T-shirt, Thanks, TDX, 1T)."""
    where %= len(body) + 1
    reply = body[:where] + extra + body[where:]
    assume(normalise(reply) not in DEFAULT.optout)  # "T" + "D" is "TD", another keyword
    assert DEFAULT.intent(reply) is None


@given(KEYWORD, st.text(min_size=1, max_size=20))
def test_a_keyword_followed_by_words_is_no_keyword(keyword: str, rest: str) -> None:
    reply = keyword + " " + rest
    assume(normalise(reply) not in DEFAULT.optout)
    assume(any(c.isalnum() for c in normalise(rest)))
    assert DEFAULT.intent(reply) is None


@given(st.text(max_size=40))
def test_normalise_is_idempotent_and_never_fails(text: str) -> None:
    once = normalise(text)
    assert normalise(once) == once
    assert DEFAULT.intent(text) in {None, "optout"}


@given(st.text(alphabet=st.characters(categories=["Lu", "Ll"]), min_size=2, max_size=6))
def test_latin_words_unsubscribe_only_when_they_are_td(word: str) -> None:
    assert (DEFAULT.intent(word) == "optout") == (normalise(word) == "td")
