"""Numbers as the blacklist keys them (receiver/blacklist/numbers.py): E.164, and its shortcut held to the long way."""

from __future__ import annotations

from typing import Literal

import phonenumbers
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from receiver.blacklist import numbers as numbers_module
from receiver.blacklist.numbers import many_to_e164, mask, to_e164
from receiver.numbers import e164

FORMS = [
    ("+8615112345678", "+8615112345678"),
    ("8615112345678", "+8615112345678"),
    ("%2B8615112345678", "+8615112345678"),
    ("%2b8615112345678", "+8615112345678"),
    ("15112345678", "+8615112345678"),
    ("008615112345678", "+8615112345678"),
    ("+86 151 1234 5678", "+8615112345678"),
    ("+86-151-1234-5678", "+8615112345678"),
    (" +8613112345678 ", "+8613112345678"),
    (8615112345678, "+8615112345678"),
    ("+16502530000", "+16502530000"),
    ("+447911123456", "+447911123456"),
]

NOT_NUMBERS = ["+86151****6789", "+86155****5172", "1069****019", "csms100000001", "T", "", "+", "++86151",
               "+86 151 1234 5678 ext", "x" * 100, None, 3.5, ["+8615112345678"], True]  # fmt: skip


@pytest.mark.parametrize(("raw", "expected"), FORMS)
def test_common_forms_become_e164(raw: object, expected: str) -> None:
    assert to_e164(raw) == expected


@pytest.mark.parametrize("raw", NOT_NUMBERS)
def test_what_is_no_number(raw: object) -> None:
    assert to_e164(raw) is None


def test_region_for_numbers_without_country_code() -> None:
    assert to_e164("07911 123456", "GB") == "+447911123456"
    assert to_e164("6502530000", "US") == "+16502530000"


def test_masked_for_logs() -> None:
    assert mask("+8615112345678") == "+86151****5678"
    assert mask(None) is None


CODES = sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)


def mobile_example(region: str) -> tuple[str, str]:
    """The region's example mobile number: (national number, country code)."""
    number = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
    assert number is not None, region
    return str(number.national_number), str(number.country_code)


@st.composite
def e164_like(draw: st.DrawFn) -> str:
    code = str(draw(st.sampled_from(CODES)))
    national = draw(st.text(alphabet="0123456789", min_size=0, max_size=15 - len(code)))
    return f"+{code}{national}"


@given(e164_like())
def test_the_shortcut_agrees_with_phonenumbers(raw: str) -> None:
    assert to_e164(raw) == e164(raw)


@given(st.from_regex(r"\+86(1[3-9][0-9]{9}|[0-9]{1,12})", fullmatch=True))
def test_the_shortcut_agrees_on_chinese_numbers(raw: str) -> None:
    assert to_e164(raw) == e164(raw)


@given(st.text(alphabet="+0123456789 -()*", max_size=20))
def test_any_dialable_text_agrees_with_phonenumbers(raw: str) -> None:
    assert to_e164(raw) == e164(raw)


ITEM = st.one_of(e164_like(), st.text(alphabet="+0123456789, %2Bb*", max_size=18), st.integers(), st.none())


@given(st.lists(ITEM, max_size=20))
def test_a_list_is_read_as_each_number_alone(raws: list[object]) -> None:
    assert many_to_e164(raws) == [to_e164(raw) for raw in raws]


def test_a_list_of_e164_numbers_is_taken_as_it_is() -> None:
    numbers = [f"+86139{i:08d}" for i in range(500)]
    assert many_to_e164(numbers) == numbers
    # an item that hides two numbers behind a comma is not two numbers
    assert many_to_e164(["+8613900000001,+8613900000002", "+8613900000003"]) == [None, "+8613900000003"]


REGIONS = ["CN", "US", "GB", "DE", "FR", "IN", "BR", "RU", "JP", "IT", "AR", "MX", "HK", "SG", "AU", "ZA", "NG", "ID",
           "CL", "CU", "TJ", "BY"]  # the last four have international prefixes that start with 1 or 8


@st.composite
def plain_digits(draw: st.DrawFn, region: str | None = None) -> tuple[str, str]:
    """Digits without ``+`` as senders write them, read in some region: the region's own code in
    front or not, its prefixes (``0``, ``00``, CN's ``1790 00`` carrier forms) or none."""
    region = region or draw(st.sampled_from(REGIONS))
    code = str(phonenumbers.country_code_for_region(region))
    start = draw(st.sampled_from(["", "", code, code, "0", "00", "1", "8", "11200", "17900", "0086", "810", "119", "1100", "1690"]))
    rest = draw(st.text(alphabet="0123456789", min_size=0, max_size=17))
    return (start + rest)[:17] or "1", region


@settings(max_examples=1000)
@given(plain_digits())
def test_the_plain_digits_shortcut_agrees_with_phonenumbers(case: tuple[str, str]) -> None:
    digits, region = case
    assert to_e164(digits, region) == e164(digits, region)


@st.composite
def plain_digit_lists(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A region and a list of its numbers: mostly well-formed ones (so that the one-match way is
    tried), with some of any shape among them (so that it must say no to each of those)."""
    region = draw(st.sampled_from(REGIONS))
    national, code = mobile_example(region)
    good = st.sampled_from([national, code + national])
    other = plain_digits(region).map(lambda case: case[0])
    return region, draw(st.lists(st.one_of(good, good, other), min_size=1, max_size=8))


@settings(max_examples=1000)
@given(plain_digit_lists())
@example(("CN", ["8613912345678", "8601012345678"]))  # the code, then a national prefix parse strips
@example(("TJ", ["917123456", "810123456"]))  # an international prefix (TJ has no national one to hide it)
def test_a_list_of_plain_digits_is_read_as_each_number_alone(case: tuple[str, list[str]]) -> None:
    region, raws = case
    assert many_to_e164(raws, region) == [to_e164(raw, region) for raw in raws]


@pytest.mark.parametrize("region", REGIONS)
def test_a_list_of_national_numbers_takes_one_match(region: str) -> None:
    """500 numbers of the region, half with its code in front: read as each alone, by one match over the list."""
    national, code = mobile_example(region)
    raws = [national if i % 2 else code + national for i in range(500)]
    expected = [to_e164(raw, region) for raw in raws]
    original = numbers_module._national
    sure = all(isinstance(original(raw, region), str) for raw in raws)  # each alone takes the shortcut
    calls: list[str] = []

    def counting(digits: str, region: str) -> str | Literal[False] | None:
        calls.append(digits)
        return original(digits, region)

    numbers_module._national = counting
    try:
        assert many_to_e164(raws, region) == expected
    finally:
        numbers_module._national = original
    if sure:  # CN, US, GB, FR, BR, MX, ZA, TJ and BY (the others' lengths leave doubt)
        assert calls == []  # no number went the one-by-one way
    else:
        assert region not in {"CN", "US", "GB"}  # the one-match case is not vacuous


def region_samples(region: str) -> list[str]:
    """Digits as senders write a region's numbers: every type's example number alone, with the
    country code, with a 0 in front, and its endings (short forms some regions expand)."""
    code = str(phonenumbers.country_code_for_region(region))
    samples: list[str] = []
    for kind in (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE,
                 phonenumbers.PhoneNumberType.TOLL_FREE, phonenumbers.PhoneNumberType.VOIP):  # fmt: skip
        example = phonenumbers.example_number_for_type(region, kind)
        if example is not None:
            national = phonenumbers.national_significant_number(example)
            samples += [national, code + national, "0" + national, *(national[-k:] for k in range(4, len(national)))]
    return list(dict.fromkeys(samples))


def test_lists_agree_with_each_number_alone_in_every_region() -> None:
    """Both list shortcuts (E.164, plain digits) in every region, each sample beside others, in
    both orders: a pattern that means something else inside a list (SM's, MG's and NF's national
    prefixes end in "$") must not take the one-match way."""
    wrong = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        samples = region_samples(region)
        for items in (samples, ["+" + s for s in samples]):
            for a in items:
                for b in items[:3]:
                    for pair in ([a, b], [b, a]):
                        if many_to_e164(pair, region) != [to_e164(x, region) for x in pair]:
                            wrong.append((region, pair))
    assert wrong == []


@given(st.from_regex(r"(86)?1[3-9][0-9]{9}", fullmatch=True))
def test_chinese_mobile_numbers_without_plus(digits: str) -> None:
    assert to_e164(digits) == e164(digits) == "+86" + digits.removeprefix("86")
