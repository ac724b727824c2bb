"""The protocol parsers as pure functions: bytes in, typed events (or a ProtocolError) out.

Sample bodies are copied verbatim from the protocol reference (/work/shared/huawei-sms-callbacks.md,
sections 1.4, 3, 8.1 and 8.2). No database, no I/O.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from receiver.protocol import (
    Batch,
    ProtocolError,
    StatusReport,
    Uplink,
    parse_status_report_batch,
    parse_status_report_form,
    parse_uplink_form,
)

# Every code a parser may raise; anything else is a new, untested behaviour.
ERROR_CODES = {
    "duplicate_field",
    "field_too_long",
    "invalid_batch",
    "invalid_character",
    "invalid_encoding",
    "invalid_field",
    "invalid_item",
    "invalid_json",
    "missing_field",
    "too_deep",
    "too_many_fields",
}

MSG_ID_14 = "b9d9b4fe-ad0e-4a2a-a2c7-445505b674ac_6"
MSG_ID_81 = "2ea20735-f856-4376-afbf-570bd70a46ee_11840135"
UPLINK_ID = "9692b5be-c427-4525-8e73-cf4a6ac5b3f7"
NO_DB = settings(database=None, deadline=None)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


def refused(parse: Any, body: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse(body)
    return info.value


def field_of(error: ProtocolError) -> object:
    """The field an error names."""
    assert isinstance(error.detail, dict), error.detail
    return error.detail["field"]


def report_body(**fields: str | None) -> bytes:
    values = {"smsMsgId": MSG_ID_14, "status": "DELIVRD"} | fields
    return urlencode({k: v for k, v in values.items() if v is not None}).encode()


def uplink_body(**fields: str | None) -> bytes:
    values = {"from": "+8615123456789", "to": "10691002019", "body": "R", "smsMsgId": UPLINK_ID} | fields
    return urlencode({k: v for k, v in values.items() if v is not None}).encode()


def batch_body(*items: object) -> bytes:
    return json.dumps({"statusReportList": list(items)}).encode()


# --- official samples, verbatim -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            b"sequence=1&total=1&orgCode=000&updateTime=2018-04-13T06%3A31%3A46Z&source=2"
            b"&smsMsgId=b9d9b4fe-ad0e-4a2a-a2c7-445505b674ac_6&status=DELIVRD",
            StatusReport(
                sms_msg_id=MSG_ID_14,
                status="DELIVRD",
                total=1,
                sequence=1,
                source="2",
                update_time=utc(2018, 4, 13, 6, 31, 46),
                org_code="000",
            ),
            id="1.4-sms_05_0003-aksk-example",
        ),
        pytest.param(
            b"sequence=1&total=1&orgCode=000&updateTime=2018-04-13T06%3A31%3A46Z&source=2"
            b"&smsMsgId=b9d9b4fe-ad0e-4a2a-a2c7-445505b674ac_6&status=DELIVRD",
            StatusReport(
                sms_msg_id=MSG_ID_14,
                status="DELIVRD",
                total=1,
                sequence=1,
                source="2",
                update_time=utc(2018, 4, 13, 6, 31, 46),
                org_code="000",
            ),
            id="1.4-sms_05_0051-example",
        ),
        pytest.param(
            b"sequence=1&total=1&updateTime=2018-10-31T08%3A43%3A41Z&source=2"
            b"&smsMsgId=2ea20735-f856-4376-afbf-570bd70a46ee_11840135&status=DELIVRD",
            StatusReport(
                sms_msg_id=MSG_ID_81,
                status="DELIVRD",
                total=1,
                sequence=1,
                source="2",
                update_time=utc(2018, 10, 31, 8, 43, 41),
            ),
            id="8.1-success_body",
        ),
        pytest.param(
            b"sequence=1&total=1&updateTime=2018-10-31T08%3A43%3A41Z&source=2"
            b"&smsMsgId=2ea20735-f856-4376-afbf-570bd70a46ee_11840135&status=E200027",
            StatusReport(
                sms_msg_id=MSG_ID_81,
                status="E200027",
                total=1,
                sequence=1,
                source="2",
                update_time=utc(2018, 10, 31, 8, 43, 41),
            ),
            id="8.1-failed_body",
        ),
        pytest.param(
            b"orgCode=E200027&sequence=1&total=1&updateTime=2018-10-31T08%3A43%3A41Z&source=2"
            b"&smsMsgId=2ea20735-f856-4376-afbf-570bd70a46ee_11840135&status=RTE_ERR",
            StatusReport(
                sms_msg_id=MSG_ID_81,
                status="RTE_ERR",
                total=1,
                sequence=1,
                source="2",
                update_time=utc(2018, 10, 31, 8, 43, 41),
                org_code="E200027",
            ),
            id="8.1-older-status_report_failure",
        ),
    ],
)
def test_official_status_report_samples(body: bytes, expected: StatusReport) -> None:
    report = parse_status_report_form(body)
    assert report == expected
    assert report.extra == {}
    assert report.status_desc is None and report.extend is None and report.to is None
    assert report.update_time is not None
    assert report.update_time.tzinfo is not None
    assert report.update_time.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("body", "sender", "to", "text"),
    [
        pytest.param(
            b"from=%2B86151****6789&to=1069****019&body=********&smsMsgId=9692b5be-c427-4525-8e73-cf4a6ac5b3f7",
            "+86151****6789",
            "1069****019",
            "********",
            id="8.2-python-demo",
        ),
        pytest.param(
            b"from=%2B86151****6789&to=1069***2019&body=***********&smsMsgId=9692b5be-c427-4525-8e73-cf4a6ac5b3f7",
            "+86151****6789",
            "1069***2019",
            "***********",
            id="8.2-go-demo",
        ),
        pytest.param(
            b"from=%2B86151****6789&to=1069***2019&body=********&smsMsgId=9692b5be-c427-4525-8e73-cf4a6ac5b3f7",
            "+86151****6789",
            "1069***2019",
            "********",
            id="8.2-java-demo",
        ),
        pytest.param(
            b"from=%2B86155****5172&to=201804131431201234&body=********&smsMsgId=9692b5be-c427-4525-8e73-cf4a6ac5b3f7",
            "+86155****5172",
            "201804131431201234",
            "********",
            id="3-api-example-sms_05_0004",
        ),
        pytest.param(
            b"from=%2B8615123456789&to=10691002019&body=********&smsMsgId=9692b5be-c427-4525-8e73-cf4a6ac5b3f7",
            "+8615123456789",
            "10691002019",
            "********",
            id="8.1-older-upstream_sms_message",
        ),
    ],
)
def test_official_uplink_samples(body: bytes, sender: str, to: str, text: str) -> None:
    uplink = parse_uplink_form(body)
    assert uplink == Uplink(sms_msg_id=UPLINK_ID, from_=sender, to=to, body=text)
    assert uplink.create_time is None
    assert uplink.extra == {}


# --- times ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2018-04-13T06%3A31%3A46Z", utc(2018, 4, 13, 6, 31, 46)),
        ("2018-04-13T06%3a31%3a46Z", utc(2018, 4, 13, 6, 31, 46)),
        ("2018-04-13T06:31:46Z", utc(2018, 4, 13, 6, 31, 46)),
        ("2018-04-13T06%3A31%3A46z", utc(2018, 4, 13, 6, 31, 46)),
        ("2018-04-13T06%3A31%3A46", utc(2018, 4, 13, 6, 31, 46)),  # no zone: UTC per the reference
        ("2018-04-13T14%3A31%3A46%2B08%3A00", utc(2018, 4, 13, 6, 31, 46)),
        ("2018-04-13T06%3A31%3A46.250Z", utc(2018, 4, 13, 6, 31, 46, 250000)),
        ("2024-02-29T23%3A59%3A59Z", utc(2024, 2, 29, 23, 59, 59)),
    ],
)
def test_update_time_decoded_to_aware_utc(raw: str, expected: datetime) -> None:
    report = parse_status_report_form(f"smsMsgId=a&status=DELIVRD&updateTime={raw}".encode())
    assert report.update_time == expected
    assert report.update_time is not None and report.update_time.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"sequence=1&total=1&source=3&smsMsgId=abc&status=EXPIRED", id="absent"),
        pytest.param(b"sequence=1&total=1&source=3&smsMsgId=abc&status=EXPIRED&updateTime=", id="blank"),
        pytest.param(b"sequence=1&total=1&source=3&smsMsgId=abc&status=EXPIRED&updateTime", id="bare-name"),
    ],
)
def test_platform_built_report_without_update_time(body: bytes) -> None:
    report = parse_status_report_form(body)
    assert report == StatusReport(sms_msg_id="abc", status="EXPIRED", total=1, sequence=1, source="3")
    assert report.update_time is None


@pytest.mark.parametrize(
    "raw",
    [
        "yesterday",
        "2018-04-13",
        "2018-13-13T06%3A31%3A46Z",
        "2018-02-30T06%3A31%3A46Z",
        "2018-04-13T25%3A31%3A46Z",
        "20181031T084341Z",
        "2018-04-13T06%3A31%3A46%2B99%3A00",
        "0001-01-01T00%3A00%3A00%2B01%3A00",  # before year 1 in UTC: must not raise OverflowError
        "9999-12-31T23%3A59%3A59-01%3A00",  # after year 9999 in UTC: must not raise OverflowError
        "%D9%A2%D9%A0%D9%A1%D9%A8-04-13T06%3A31%3A46Z",  # Arabic-Indic digits
    ],
)
def test_bad_update_time_is_invalid_field(raw: str) -> None:
    error = refused(parse_status_report_form, f"smsMsgId=a&status=DELIVRD&updateTime={raw}".encode())
    assert error.code == "invalid_field"
    assert field_of(error) == "updateTime"


def test_uplink_create_time() -> None:
    uplink = parse_uplink_form(uplink_body(createTime="2018-02-12T15:30:20Z"))
    assert b"createTime=2018-02-12T15%3A30%3A20Z" in uplink_body(createTime="2018-02-12T15:30:20Z")
    assert uplink.create_time == utc(2018, 2, 12, 15, 30, 20)
    assert parse_uplink_form(uplink_body(createTime="")).create_time is None
    assert field_of(refused(parse_uplink_form, uplink_body(createTime="soon"))) == "createTime"


# --- blank and absent -----------------------------------------------------------------------------


def test_blank_optional_fields_are_absent() -> None:
    body = b"smsMsgId=abc&status=DELIVRD&total=&sequence=&statusDesc=&source=&updateTime=&extend=&to=&orgCode="
    assert parse_status_report_form(body) == StatusReport(sms_msg_id="abc", status="DELIVRD")


def test_only_required_fields() -> None:
    report = parse_status_report_form(b"smsMsgId=abc&status=UNDELIV")
    assert report == StatusReport(sms_msg_id="abc", status="UNDELIV")
    assert (report.total, report.sequence, report.source, report.org_code) == (None, None, None, None)


@pytest.mark.parametrize("value", ["+", "%20", "%20%20"])
def test_report_to_of_only_blanks_is_absent(value: str) -> None:
    report = parse_status_report_form(f"smsMsgId=a&status=DELIVRD&extend=order-1&to={value}".encode())
    assert report.to is None
    assert report.extend == "order-1"


def test_extend_and_to_together() -> None:
    report = parse_status_report_form(report_body(extend="order-42;shop=7", to="+8613800138000"))
    assert report.extend == "order-42;shop=7"
    assert report.to == "+8613800138000"


# --- phone numbers and "+" ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("%2B8613800138000", "+8613800138000", id="encoded-plus"),
        pytest.param("%2b8613800138000", "+8613800138000", id="encoded-plus-lower"),
        pytest.param("+8613800138000", "+8613800138000", id="raw-plus-read-as-space"),
        pytest.param("8613800138000", "8613800138000", id="no-plus"),
        pytest.param("%2B86155****5172", "+86155****5172", id="masked"),
    ],
)
def test_uplink_from_plus(raw: str, expected: str) -> None:
    body = f"from={raw}&to=10691002019&body=R&smsMsgId={UPLINK_ID}".encode()
    assert parse_uplink_form(body).from_ == expected


def test_report_to_raw_plus_restored() -> None:
    report = parse_status_report_form(b"smsMsgId=a&status=DELIVRD&extend=x&to=+8613800138000")
    assert report.to == "+8613800138000"


def test_plus_in_body_text_follows_form_rules() -> None:
    assert parse_uplink_form(uplink_body(body="1+1=2")).body == "1+1=2"  # urlencode sends %2B
    raw = f"from=%2B8613800138000&to=106&body=1+1&smsMsgId={UPLINK_ID}".encode()
    assert parse_uplink_form(raw).body == "1 1"  # an unencoded + in text is a space


# --- Chinese and other non-ASCII text -------------------------------------------------------------


SENTENCE = "您好，验证码已收到，谢谢！请不要再发送营销短信了。"


@pytest.mark.parametrize(
    ("encoded", "text"),
    [
        pytest.param("%E9%80%80%E8%AE%A2", "退订", id="unsubscribe"),
        pytest.param(quote(SENTENCE), SENTENCE, id="sentence"),
        pytest.param(quote("ＲＥＰＬＹ　１２３？"), "ＲＥＰＬＹ　１２３？", id="full-width-kept"),
        pytest.param(quote("R 退订 👍"), "R 退订 👍", id="mixed-emoji"),
    ],
)
def test_chinese_uplink_body(encoded: str, text: str) -> None:
    body = f"from=%2B8615123456789&to=10691002019&body={encoded}&smsMsgId={UPLINK_ID}".encode()
    uplink = parse_uplink_form(body)
    assert uplink.body == text
    assert uplink.from_ == "+8615123456789"


def test_body_limit_counts_characters_not_bytes() -> None:
    assert parse_uplink_form(uplink_body(body="退" * 160)).body == "退" * 160
    error = refused(parse_uplink_form, uplink_body(body="退" * 161))
    assert (error.code, error.detail) == ("field_too_long", {"field": "body", "max_length": 160})


def test_chinese_status_desc() -> None:
    report = parse_status_report_form(report_body(status="UNDELIV", statusDesc="用户关机或欠费"))
    assert report.status_desc == "用户关机或欠费"


# --- form encoding errors -------------------------------------------------------------------------

BAD_UTF8 = [
    pytest.param(b"\xff", id="raw-ff"),
    pytest.param(b"%FF", id="pct-ff"),
    pytest.param(b"%C0%AF", id="overlong"),
    pytest.param(b"%ED%A0%80", id="surrogate"),
    pytest.param(b"%E9%80", id="truncated"),
    pytest.param("退订".encode("gbk"), id="raw-gbk"),
    pytest.param(b"%CD%CB%B6%A9", id="pct-gbk"),
]


@pytest.mark.parametrize("bad", BAD_UTF8)
def test_report_invalid_utf8(bad: bytes) -> None:
    assert refused(parse_status_report_form, b"smsMsgId=a&status=DELIVRD&statusDesc=" + bad).code == "invalid_encoding"


@pytest.mark.parametrize("bad", BAD_UTF8)
def test_uplink_invalid_utf8(bad: bytes) -> None:
    body = b"from=%2B8615123456789&to=106&smsMsgId=a&body=" + bad
    assert refused(parse_uplink_form, body).code == "invalid_encoding"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"smsMsgId=a&status=DELIVRD&statusDesc=x%00y", id="pct-in-value"),
        pytest.param(b"smsMsgId=a&status=DELIVRD&statusDesc=x\x00y", id="raw-in-value"),
        pytest.param(b"smsMsgId=a%00&status=DELIVRD", id="in-required"),
        pytest.param(b"smsMsgId=a&status=DELIVRD&fo%00o=1", id="in-name"),
        pytest.param(b"smsMsgId=a&status=DELIVRD&unknown=%00", id="in-unknown"),
    ],
)
def test_nul_is_invalid_character(body: bytes) -> None:
    assert refused(parse_status_report_form, body).code == "invalid_character"
    uplink = body.replace(b"status=DELIVRD", b"from=1&to=2&body=3")
    assert refused(parse_uplink_form, uplink).code == "invalid_character"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"smsMsgId=a&status=DELIVRD&status=UNDELIV", "status"),
        (b"smsMsgId=a&status=DELIVRD&status=DELIVRD", "status"),
        (b"smsMsgId=&smsMsgId=a&status=DELIVRD", "smsMsgId"),
        (b"smsMsgId=a&status=DELIVRD&foo=1&foo=2", "foo"),
        (b"smsMsgId=a&status=DELIVRD&up%64ateTime=x&updateTime=y", "updateTime"),
    ],
)
def test_duplicate_field(body: bytes, field: str) -> None:
    error = refused(parse_status_report_form, body)
    assert (error.code, error.detail) == ("duplicate_field", {"field": field})


def test_uplink_duplicate_field() -> None:
    error = refused(parse_uplink_form, uplink_body() + b"&body=again")
    assert (error.code, error.detail) == ("duplicate_field", {"field": "body"})


def test_field_count_limit() -> None:
    extras = {f"x{i}": str(i) for i in range(62)}
    ok = urlencode({"smsMsgId": "a", "status": "DELIVRD"} | extras).encode()
    assert ok.count(b"&") == 63  # 64 fields
    assert parse_status_report_form(ok).extra == extras
    error = refused(parse_status_report_form, ok + b"&x62=62")
    assert error.code == "too_many_fields"
    assert error.detail == {"max_fields": 64}

    uplink_ok = uplink_body() + b"".join(f"&x{i}=1".encode() for i in range(60))
    assert len(parse_uplink_form(uplink_ok).extra) == 60
    assert refused(parse_uplink_form, uplink_ok + b"&x60=1").code == "too_many_fields"


def test_huge_field_count_refused_before_parsing() -> None:
    assert refused(parse_status_report_form, b"a=1&" * 100_000).code == "too_many_fields"


# --- required fields ------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["smsMsgId", "status"])
@pytest.mark.parametrize("how", ["absent", "blank"])
def test_report_required_fields(field: str, how: str) -> None:
    fields: dict[str, str] = {"smsMsgId": "a", "status": "DELIVRD", "total": "1", "sequence": "1"}
    if how == "absent":
        del fields[field]
    else:
        fields[field] = ""
    error = refused(parse_status_report_form, urlencode(fields).encode())
    assert (error.code, error.detail) == ("missing_field", {"field": field})


@pytest.mark.parametrize("field", ["smsMsgId", "from", "to", "body"])
@pytest.mark.parametrize("how", ["absent", "blank"])
def test_uplink_required_fields(field: str, how: str) -> None:
    fields = {"from": "+8615123456789", "to": "10691002019", "body": "R", "smsMsgId": UPLINK_ID}
    if how == "absent":
        del fields[field]
    else:
        fields[field] = ""
    error = refused(parse_uplink_form, urlencode(fields).encode())
    assert (error.code, error.detail) == ("missing_field", {"field": field})


@pytest.mark.parametrize("field", ["from", "to"])
def test_uplink_number_of_only_blanks_is_missing(field: str) -> None:
    body = uplink_body(**{field: "x"}).replace(f"{field}=x".encode(), f"{field}=+".encode())
    error = refused(parse_uplink_form, body)
    assert (error.code, error.detail) == ("missing_field", {"field": field})


def test_empty_bodies() -> None:
    assert refused(parse_status_report_form, b"").detail == {"field": "smsMsgId"}
    assert refused(parse_uplink_form, b"").detail == {"field": "smsMsgId"}


# --- length limits --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "limit", "char"),
    [
        ("smsMsgId", 50, "a"),
        ("status", 7, "E"),
        ("statusDesc", 500, "d"),
        ("extend", 128, "e"),
        ("to", 21, "1"),
        ("total", 2, "9"),
        ("sequence", 2, "1"),
    ],
)
def test_report_length_limits(field: str, limit: int, char: str) -> None:
    at_limit = char * limit
    report = parse_status_report_form(report_body(**{field: at_limit}))
    value = {
        "smsMsgId": report.sms_msg_id,
        "status": report.status,
        "statusDesc": report.status_desc,
        "extend": report.extend,
        "to": report.to,
        "total": report.total,
        "sequence": report.sequence,
    }[field]
    assert value == (int(at_limit) if field in {"total", "sequence"} else at_limit)
    error = refused(parse_status_report_form, report_body(**{field: at_limit + char}))
    assert (error.code, error.detail) == ("field_too_long", {"field": field, "max_length": limit})


@pytest.mark.parametrize(
    ("field", "limit", "char", "attribute"),
    [
        ("smsMsgId", 50, "u", "sms_msg_id"),
        ("from", 21, "8", "from_"),
        ("to", 21, "1", "to"),
        ("body", 160, "b", "body"),
    ],
)
def test_uplink_length_limits(field: str, limit: int, char: str, attribute: str) -> None:
    at_limit = char * limit
    assert getattr(parse_uplink_form(uplink_body(**{field: at_limit})), attribute) == at_limit
    error = refused(parse_uplink_form, uplink_body(**{field: at_limit + char}))
    assert (error.code, error.detail) == ("field_too_long", {"field": field, "max_length": limit})


def test_limit_counts_characters_of_decoded_value() -> None:
    # 50 characters, 150 UTF-8 bytes, 450 characters once percent-encoded: still within 50.
    report = parse_status_report_form(report_body(smsMsgId="号" * 50))
    assert report.sms_msg_id == "号" * 50


def test_unknown_field_bounds() -> None:
    assert parse_status_report_form(report_body(**{"n" * 64: "v" * 2048})).extra == {"n" * 64: "v" * 2048}
    long_name = refused(parse_status_report_form, report_body(**{"n" * 65: "v"}))
    assert (long_name.code, long_name.detail) == ("field_too_long", {"field": "n" * 64, "max_length": 64})
    long_value = refused(parse_status_report_form, report_body(newField="v" * 2049))
    assert (long_value.code, long_value.detail) == ("field_too_long", {"field": "newField", "max_length": 2048})
    assert refused(parse_uplink_form, uplink_body(newField="v" * 2049)).code == "field_too_long"


# --- total and sequence ---------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["total", "sequence"])
@pytest.mark.parametrize("value", ["0", "00", "x", "-1", "1.", "+1", " 1", "1a", "１", "²"])
def test_total_sequence_invalid(field: str, value: str) -> None:
    error = refused(parse_status_report_form, report_body(**{field: value}))
    assert error.code == "invalid_field"
    assert field_of(error) == field


@pytest.mark.parametrize(
    ("total", "sequence", "expected"),
    [
        ("1", "1", (1, 1)),
        ("3", "2", (3, 2)),
        ("99", "99", (99, 99)),
        ("02", "01", (2, 1)),
        ("2", None, (2, None)),
        (None, "5", (None, 5)),
    ],
)
def test_total_sequence_valid(
    total: str | None, sequence: str | None, expected: tuple[int | None, int | None]
) -> None:
    report = parse_status_report_form(report_body(total=total, sequence=sequence))
    assert (report.total, report.sequence) == expected


@pytest.mark.parametrize(("total", "sequence"), [("1", "2"), ("2", "3"), ("9", "10")])
def test_sequence_greater_than_total(total: str, sequence: str) -> None:
    error = refused(parse_status_report_form, report_body(total=total, sequence=sequence))
    assert error.code == "invalid_field"
    assert field_of(error) == "sequence"


# --- openness: unknown fields and status codes ----------------------------------------------------


def test_unknown_fields_kept_in_extra() -> None:
    body = report_body(newField="new", smsCount="2", note="退订", empty="")
    report = parse_status_report_form(body)
    assert report.extra == {"newField": "new", "smsCount": "2", "note": "退订", "empty": ""}
    assert report.status == "DELIVRD"


def test_uplink_unknown_fields_kept_in_extra() -> None:
    uplink = parse_uplink_form(uplink_body(signature="华为云", extCode="1234"))
    assert uplink.extra == {"signature": "华为云", "extCode": "1234"}


@pytest.mark.parametrize(
    "status",
    [
        "DELIVRD", "SVC6001", "SVC4001", "MK:0036", "SC:0016", "GB:0014", "S:43", "908", "1", "delivrd",
        "RTE_ERR", "E200027", "MA:0001",
    ],
)
def test_status_is_an_open_string_kept_raw(status: str) -> None:
    assert parse_status_report_form(report_body(status=status)).status == status
    batch = parse_status_report_batch(batch_body({"smsMsgId": "a", "status": status}))
    assert [report.status for report, _ in batch.reports] == [status]


def test_status_with_encoded_colon() -> None:
    assert parse_status_report_form(b"smsMsgId=a&status=MK%3A0036").status == "MK:0036"


@pytest.mark.parametrize("source", ["1", "2", "3", "9"])
def test_source_kept_as_string(source: str) -> None:
    assert parse_status_report_form(report_body(source=source)).source == source


# --- batch JSON -----------------------------------------------------------------------------------

SKETCH_ITEM = {
    "smsMsgId": MSG_ID_14,
    "total": "1",
    "sequence": "1",
    "status": "DELIVRD",
    "source": "2",
    "updateTime": "2018-04-13T06:31:46Z",
}


def compact(item: object) -> str:
    return json.dumps(item, ensure_ascii=False, separators=(",", ":"))


def test_batch_one_item() -> None:
    batch = parse_status_report_batch(batch_body(SKETCH_ITEM))
    assert isinstance(batch, Batch)
    assert batch.rejected == []
    assert batch.reports == [
        (
            StatusReport(
                sms_msg_id=MSG_ID_14,
                status="DELIVRD",
                total=1,
                sequence=1,
                source="2",
                update_time=utc(2018, 4, 13, 6, 31, 46),
            ),
            compact(SKETCH_ITEM),
        )
    ]
    assert json.loads(batch.reports[0][1]) == SKETCH_ITEM


def test_batch_fifty_items_in_order() -> None:
    items = [SKETCH_ITEM | {"smsMsgId": f"id-{i}", "status": "DELIVRD" if i % 2 else "UNDELIV"} for i in range(50)]
    batch = parse_status_report_batch(batch_body(*items))
    assert batch.rejected == []
    assert [report.sms_msg_id for report, _ in batch.reports] == [f"id-{i}" for i in range(50)]
    assert [report.status for report, _ in batch.reports][:3] == ["UNDELIV", "DELIVRD", "UNDELIV"]
    assert [raw for _, raw in batch.reports] == [compact(item) for item in items]


@pytest.mark.parametrize("count", [0, 51, 100])
def test_batch_size_out_of_range(count: int) -> None:
    items = [SKETCH_ITEM | {"smsMsgId": f"id-{i}"} for i in range(count)]
    error = refused(parse_status_report_batch, batch_body(*items))
    assert error.code == "invalid_batch"
    assert error.detail == {"items": count, "allowed": "1-50"}


def nested(depth: int) -> str:
    """``depth`` levels of objects and lists around a string, as JSON text."""
    opening = "".join('{"k":' if level % 2 == 0 else "[" for level in range(depth))
    closing = "".join("}" if level % 2 == 0 else "]" for level in reversed(range(depth)))
    return opening + '"x"' + closing


@pytest.mark.parametrize(
    ("extra_levels", "code"), [(13, None), (14, "too_deep"), (900, "too_deep"), (100_000, "invalid_json")]
)
def test_batch_nesting_depth_is_bounded(extra_levels: int, code: str | None) -> None:
    """Envelope, list and item are 3 levels; 16 in all are allowed. Deeper is refused as a whole,
    before anything recurses over it (900 levels parse in Python, but nothing downstream should
    have to walk them); far deeper is not even JSON to Python."""
    body = f'{{"statusReportList":[{{"smsMsgId":"a","status":"DELIVRD","deep":{nested(extra_levels)}}}]}}'.encode()
    if code is None:
        [(report, _)] = parse_status_report_batch(body).reports
        assert report.extra["deep"] == json.loads(nested(extra_levels))
        return
    error = refused(parse_status_report_batch, body)
    assert error.code == code
    if code == "too_deep":
        assert error.detail == {"max_depth": 16}


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        pytest.param(["v" * 2044], True, id="list-at-limit"),  # ["vvv...v"]: 2048 characters of JSON
        pytest.param(["v" * 2045], False, id="list-over-limit"),
        pytest.param({"k": ["a"] * 400}, True, id="object-under-limit"),
        pytest.param({"k": ["a"] * 600}, False, id="object-over-limit"),
        pytest.param(int("9" * 2048), True, id="integer-at-limit"),
        pytest.param(int("9" * 2049), False, id="integer-over-limit"),
    ],
)
def test_batch_unknown_values_of_any_type_are_bounded(value: object, kept: bool) -> None:
    batch = parse_status_report_batch(batch_body(SKETCH_ITEM | {"newField": value}))
    if kept:
        [(report, _)] = batch.reports
        assert report.extra == {"newField": value}
    else:
        [rejected] = batch.rejected
        assert (rejected.error.code, rejected.error.detail) == ("field_too_long", {"field": "newField", "max_length": 2048})


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"{", id="truncated"),
        pytest.param(b"sequence=1&total=1&smsMsgId=a&status=DELIVRD", id="form-body"),
        pytest.param(b"{'statusReportList': []}", id="single-quotes"),
        pytest.param(b'{"statusReportList":[{"smsMsgId":"a","status":"DELIVRD"}]}x', id="trailing"),
        pytest.param(b"\xef\xbb\xbf{}", id="utf8-bom"),
        pytest.param(b"[" * 100_000, id="deep-nesting"),
    ],
)
def test_batch_not_json(body: bytes) -> None:
    assert refused(parse_status_report_batch, body).code == "invalid_json"


@pytest.mark.parametrize("body", [b'{"statusReportList":"\xff"}', b"\xff\xfe{}", "{}".encode("utf-16")])
def test_batch_not_utf8(body: bytes) -> None:
    assert refused(parse_status_report_batch, body).code == "invalid_encoding"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[]", id="array"),
        pytest.param(b"null", id="null"),
        pytest.param(b'"statusReportList"', id="string"),
        pytest.param(b"1", id="number"),
        pytest.param(b"{}", id="empty-object"),
        pytest.param(b'{"statusreportlist":[{"smsMsgId":"a","status":"DELIVRD"}]}', id="wrong-case"),
        pytest.param(b'{"statusReportList":null}', id="list-null"),
        pytest.param(b'{"statusReportList":{"smsMsgId":"a","status":"DELIVRD"}}', id="list-is-object"),
        pytest.param(b'{"statusReportList":"[]"}', id="list-is-string"),
        pytest.param(b'[{"smsMsgId":"a","status":"DELIVRD"}]', id="bare-list"),
    ],
)
def test_batch_bad_envelope(body: bytes) -> None:
    assert refused(parse_status_report_batch, body).code == "invalid_batch"


def test_batch_numbers_for_total_and_sequence() -> None:
    batch = parse_status_report_batch(batch_body({"smsMsgId": "a", "status": "DELIVRD", "total": 3, "sequence": 2}))
    [(report, raw)] = batch.reports
    assert (report.total, report.sequence) == (3, 2)
    assert raw == '{"smsMsgId":"a","status":"DELIVRD","total":3,"sequence":2}'


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (0, "invalid_field"),
        (-1, "invalid_field"),
        (1.0, "invalid_field"),
        (True, "invalid_field"),
        ([1], "invalid_field"),
        (100, "field_too_long"),
    ],
)
def test_batch_bad_numbers_reject_the_item(value: object, code: str) -> None:
    batch = parse_status_report_batch(batch_body({"smsMsgId": "a", "status": "DELIVRD", "total": value}))
    assert batch.reports == []
    [rejected] = batch.rejected
    assert (rejected.index, rejected.error.code, field_of(rejected.error)) == (0, code, "total")


def test_batch_null_fields_are_absent() -> None:
    item = {"smsMsgId": "a", "status": "DELIVRD", "total": None, "updateTime": None, "extend": None, "to": None}
    [(report, _)] = parse_status_report_batch(batch_body(item)).reports
    assert report == StatusReport(sms_msg_id="a", status="DELIVRD")


@pytest.mark.parametrize(
    "raw",
    ["2018-04-13T06%3A31%3A46Z", "2018-04-13T06%3a31%3a46Z", "2018-04-13T06:31:46Z"],
)
def test_batch_update_time_url_encoded_inside_json(raw: str) -> None:
    [(report, text)] = parse_status_report_batch(batch_body(SKETCH_ITEM | {"updateTime": raw})).reports
    assert report.update_time == utc(2018, 4, 13, 6, 31, 46)
    assert json.loads(text)["updateTime"] == raw  # the raw item is kept as sent


def test_batch_one_bad_item_among_good_ones() -> None:
    good0 = SKETCH_ITEM | {"smsMsgId": "good-0"}
    missing_status = {"smsMsgId": "bad-1", "total": "1"}
    good2 = SKETCH_ITEM | {"smsMsgId": "good-2", "statusDesc": "用户已接收", "newField": {"nested": [1, 2]}}
    not_object = ["smsMsgId", "bad-3"]
    too_long = SKETCH_ITEM | {"smsMsgId": "x" * 51}
    batch = parse_status_report_batch(batch_body(good0, missing_status, good2, not_object, too_long))

    assert [(report.sms_msg_id, raw) for report, raw in batch.reports] == [
        ("good-0", compact(good0)),
        ("good-2", compact(good2)),
    ]
    assert "用户已接收" in batch.reports[1][1]  # raw JSON text is not ASCII-escaped
    assert batch.reports[1][0].status_desc == "用户已接收"
    assert batch.reports[1][0].extra == {"newField": {"nested": [1, 2]}}

    assert [(item.index, item.error.code, item.raw) for item in batch.rejected] == [
        (1, "missing_field", compact(missing_status)),
        (3, "invalid_item", compact(not_object)),
        (4, "field_too_long", compact(too_long)),
    ]
    assert batch.rejected[0].error.detail == {"field": "status"}
    assert batch.rejected[2].error.detail == {"field": "smsMsgId", "max_length": 50}


def test_batch_every_item_bad_is_still_a_batch() -> None:
    batch = parse_status_report_batch(batch_body(1, "x", None, {}))
    assert batch.reports == []
    assert [(item.index, item.error.code) for item in batch.rejected] == [
        (0, "invalid_item"),
        (1, "invalid_item"),
        (2, "invalid_item"),
        (3, "missing_field"),
    ]


def test_batch_item_field_count_limit() -> None:
    item = {"smsMsgId": "a", "status": "DELIVRD"} | {f"x{i}": i for i in range(62)}
    [(report, _)] = parse_status_report_batch(batch_body(item)).reports
    assert len(report.extra) == 62
    [rejected] = parse_status_report_batch(batch_body(item | {"x62": 62})).rejected
    assert rejected.error.code == "too_many_fields"


@pytest.mark.parametrize(
    ("item", "code", "field"),
    [
        ({"smsMsgId": "a\u0000", "status": "DELIVRD"}, "invalid_character", "smsMsgId"),
        ({"smsMsgId": "a", "status": "DELIVRD", "newField": "x\u0000"}, "invalid_character", "newField"),
        ({"smsMsgId": "a", "status": "DELIVRD", "deep": {"k": ["\u0000"]}}, "invalid_character", "deep"),
        ({"smsMsgId": "a", "status": "DELIVRD", "n\u0000me": "x"}, "invalid_character", "nme"),
        ({"smsMsgId": "\ud800", "status": "DELIVRD"}, "invalid_encoding", "smsMsgId"),
        ({"smsMsgId": "a", "status": "DELIVRD", "newField": ["\udfff"]}, "invalid_encoding", "newField"),
        ({"smsMsgId": "a", "status": "DELIVRD", "\ud83d": "x"}, "invalid_encoding", "?"),
    ],
)
def test_batch_json_escapes_a_form_body_cannot_carry(item: dict[str, object], code: str, field: str) -> None:
    """``\\u0000`` and lone surrogates only reach us through JSON escapes: the item is refused,
    its neighbours are kept, and nothing handed back is unencodable as UTF-8."""
    body = json.dumps({"statusReportList": [SKETCH_ITEM, item]}).encode()  # ASCII, escapes kept
    batch = parse_status_report_batch(body)
    assert [report.sms_msg_id for report, _ in batch.reports] == [MSG_ID_14]
    [rejected] = batch.rejected
    assert (rejected.index, rejected.error.code, rejected.error.detail) == (1, code, {"field": field})
    assert json.loads(rejected.raw) == item
    rejected.raw.encode("utf-8")
    json.dumps(rejected.error.detail, ensure_ascii=False).encode("utf-8")


def test_batch_surrogate_pair_escape_is_fine() -> None:
    body = b'{"statusReportList":[{"smsMsgId":"a","status":"DELIVRD","statusDesc":"\\ud83d\\udc4d"}]}'
    [(report, raw)] = parse_status_report_batch(body).reports
    assert report.status_desc == "👍"
    assert raw == '{"smsMsgId":"a","status":"DELIVRD","statusDesc":"👍"}'


def test_batch_duplicate_keys_last_wins() -> None:
    # JSON objects have no duplicate rule of their own; json.loads keeps the last one.
    body = b'{"statusReportList":[{"smsMsgId":"a","status":"UNDELIV","status":"DELIVRD"}]}'
    [(report, _)] = parse_status_report_batch(body).reports
    assert report.status == "DELIVRD"


# --- dedupe key -----------------------------------------------------------------------------------

BASE_FORM = (
    b"sequence=1&total=2&orgCode=000&updateTime=2018-04-13T06%3A31%3A46Z&source=2"
    b"&smsMsgId=b9d9b4fe-ad0e-4a2a-a2c7-445505b674ac_6&status=DELIVRD"
)


def test_dedupe_key_same_report_same_key() -> None:
    first = parse_status_report_form(BASE_FORM).dedupe_key(7)
    again = parse_status_report_form(BASE_FORM).dedupe_key(7)
    assert isinstance(first, bytes) and len(first) == 16
    assert first == again
    reordered = (
        b"status=DELIVRD&smsMsgId=b9d9b4fe-ad0e-4a2a-a2c7-445505b674ac_6&source=2&total=2&sequence=1"
        b"&updateTime=2018-04-13T06%3a31%3a46Z&orgCode=000"
    )
    assert parse_status_report_form(reordered).dedupe_key(7) == first


@pytest.mark.parametrize(
    ("old", "new"),
    [
        pytest.param(b"status=DELIVRD", b"status=UNDELIV", id="status"),
        pytest.param(b"status=DELIVRD", b"status=delivrd", id="status-case"),
        pytest.param(b"sequence=1", b"sequence=2", id="sequence"),
        pytest.param(b"total=2", b"total=3", id="total"),
        pytest.param(b"06%3A31%3A46Z", b"06%3A31%3A47Z", id="updateTime"),
        pytest.param(b"&updateTime=2018-04-13T06%3A31%3A46Z", b"", id="updateTime-absent"),
        pytest.param(b"orgCode=000", b"orgCode=001", id="orgCode"),
        pytest.param(b"source=2", b"source=3", id="source"),
        pytest.param(b"_6&", b"_7&", id="smsMsgId"),
        pytest.param(b"status=DELIVRD", b"status=DELIVRD&newField=1", id="extra"),
    ],
)
def test_dedupe_key_differs(old: bytes, new: bytes) -> None:
    assert old in BASE_FORM
    changed = BASE_FORM.replace(old, new)
    assert parse_status_report_form(changed).dedupe_key(7) != parse_status_report_form(BASE_FORM).dedupe_key(7)


def test_dedupe_key_differs_per_application() -> None:
    report = parse_status_report_form(BASE_FORM)
    assert report.dedupe_key(1) != report.dedupe_key(2)


def test_dedupe_key_same_from_form_and_batch() -> None:
    from_form = parse_status_report_form(BASE_FORM)
    item = {
        "smsMsgId": MSG_ID_14,
        "total": 2,  # a JSON number
        "sequence": "1",
        "status": "DELIVRD",
        "source": "2",
        "orgCode": "000",
        "updateTime": "2018-04-13T06:31:46Z",
    }
    [(from_batch, _)] = parse_status_report_batch(batch_body(item)).reports
    assert from_batch == from_form
    assert from_batch.dedupe_key(7) == from_form.dedupe_key(7)
    encoded = item | {"updateTime": "2018-04-13T06%3A31%3A46Z"}
    [(from_encoded, _)] = parse_status_report_batch(batch_body(encoded)).reports
    assert from_encoded.dedupe_key(7) == from_form.dedupe_key(7)
    assert from_batch.dedupe_key(8) != from_form.dedupe_key(7)


def test_dedupe_key_with_non_ascii() -> None:
    report = parse_status_report_form(report_body(statusDesc="用户关机", extend="订单"))
    same = parse_status_report_form(report_body(statusDesc="用户关机", extend="订单"))
    other = parse_status_report_form(report_body(statusDesc="用户停机", extend="订单"))
    assert report.dedupe_key(1) == same.dedupe_key(1)
    assert report.dedupe_key(1) != other.dedupe_key(1)


# --- properties -----------------------------------------------------------------------------------

KNOWN_NAMES = ["smsMsgId", "status", "total", "sequence", "statusDesc", "source", "updateTime", "extend", "to",
               "orgCode", "from", "body", "createTime"]  # fmt: skip

field_values = st.one_of(
    st.text(max_size=30),
    st.integers(min_value=-5, max_value=200).map(str),
    st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}(:|%3A)[0-9]{2}(:|%3a)[0-9]{2}(Z|[+-][0-9]{2}:?[0-9]{2})?",
                  fullmatch=True),
    st.sampled_from(["%", "%2", "%ZZ", "%00", "%FF", "%ED%A0%80", "+", "%2B86", "&", "=", "\x00", " "]),
)  # fmt: skip
form_like = st.lists(
    st.tuples(st.one_of(st.sampled_from(KNOWN_NAMES), st.text(max_size=8)), field_values), max_size=12
).map(lambda pairs: "&".join(f"{name}={value}" for name, value in pairs).encode("utf-8", "surrogatepass"))
any_body = st.one_of(st.binary(max_size=600), form_like)


def check_outcome(parse: Any, body: bytes, kind: type) -> None:
    try:
        result = parse(body)
    except ProtocolError as error:
        assert error.code in ERROR_CODES
        json.dumps(error.detail, ensure_ascii=False).encode("utf-8")  # safe to log and store
    else:
        assert isinstance(result, kind)


@NO_DB
@given(any_body)
@example(b"smsMsgId=a&status=X&updateTime=0001-01-01T00%3A00%3A00%2B01%3A00")
@example(b"smsMsgId=a&status=X&updateTime=9999-12-31T23%3A59%3A59-01%3A00")
@example(b"smsMsgId=a&status=X&total=99&sequence=99&to=+&updateTime=2018-04-13T06%3A31%3A46Z")
def test_report_form_never_raises_anything_else(body: bytes) -> None:
    check_outcome(parse_status_report_form, body, StatusReport)


@NO_DB
@given(any_body)
@example(b"from=+&to=1&body=x&smsMsgId=a&createTime=0001-01-01T00%3A00%3A00%2B00%3A01")
def test_uplink_form_never_raises_anything_else(body: bytes) -> None:
    check_outcome(parse_uplink_form, body, Uplink)


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(["\x00", "\ud800", "2018-04-13T06%3A31%3A46Z", "%E9%80%80", "DELIVRD"]),
)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)  # fmt: skip
json_items = st.one_of(
    st.dictionaries(st.sampled_from(KNOWN_NAMES) | st.text(max_size=8), json_values, max_size=10),
    json_values,
)
json_bodies = st.lists(json_items, max_size=55).map(
    lambda items: json.dumps({"statusReportList": items}).encode()  # ASCII with \u escapes
)


@NO_DB
@given(st.one_of(st.binary(max_size=600), json_bodies))
@example(b'{"statusReportList":[{"smsMsgId":"\\ud800","status":"DELIVRD"}]}')
@example(b'{"statusReportList":[{"smsMsgId":"a","status":"DELIVRD","updateTime":"9999-12-31T23:59:59-01:00"}]}')
def test_batch_never_raises_anything_else(body: bytes) -> None:
    try:
        batch = parse_status_report_batch(body)
    except ProtocolError as error:
        assert error.code in ERROR_CODES
        return
    assert isinstance(batch, Batch)
    assert 1 <= len(batch.reports) + len(batch.rejected) <= 50
    for report, raw in batch.reports:
        assert isinstance(report, StatusReport)
        raw.encode("utf-8")
        assert len(report.dedupe_key(1)) == 16
    for item in batch.rejected:
        assert item.error.code in ERROR_CODES
        item.raw.encode("utf-8")
        json.dumps(item.error.detail, ensure_ascii=False).encode("utf-8")
    indexes = sorted(item.index for item in batch.rejected)
    assert indexes == sorted(set(indexes))


def text_of(max_size: int) -> st.SearchStrategy[str]:
    return st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=max_size)


phone = st.from_regex(r"\+?[0-9]{1,20}", fullmatch=True)
channel = st.from_regex(r"\+?[0-9A-Za-z*]{1,20}", fullmatch=True)
utc_times = st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 31)).map(
    lambda moment: moment.replace(microsecond=0, tzinfo=UTC)
)
extra_fields = st.dictionaries(
    st.from_regex(r"x[A-Za-z0-9_]{0,20}", fullmatch=True),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=50),
    max_size=5,
)


@st.composite
def report_fields(draw: st.DrawFn) -> tuple[dict[str, str], StatusReport]:
    total = draw(st.none() | st.integers(min_value=1, max_value=99))
    sequence = draw(st.none() | st.integers(min_value=1, max_value=total or 99))
    update_time = draw(st.none() | utc_times)
    extra = draw(extra_fields)
    optional = {
        "statusDesc": draw(st.none() | text_of(500)),
        "source": draw(st.none() | st.sampled_from(["1", "2", "3"])),
        "extend": draw(st.none() | text_of(128)),
        "to": draw(st.none() | phone),
        "orgCode": draw(st.none() | text_of(64)),
    }
    expected = StatusReport(
        sms_msg_id=draw(text_of(50)),
        status=draw(text_of(7)),
        total=total,
        sequence=sequence,
        status_desc=optional["statusDesc"],
        source=optional["source"],
        update_time=update_time,
        extend=optional["extend"],
        to=optional["to"],
        org_code=optional["orgCode"],
        extra={**extra},
    )
    fields = {"smsMsgId": expected.sms_msg_id, "status": expected.status} | {
        name: value for name, value in optional.items() if value is not None
    }
    if total is not None:
        fields["total"] = str(total)
    if sequence is not None:
        fields["sequence"] = str(sequence)
    if update_time is not None:
        fields["updateTime"] = f"{update_time:%Y-%m-%dT%H:%M:%S}Z"
    return fields | extra, expected


@NO_DB
@given(report_fields(), st.randoms(use_true_random=False))
def test_report_round_trip(case: tuple[dict[str, str], StatusReport], random: Any) -> None:
    fields, expected = case
    pairs = list(fields.items())
    random.shuffle(pairs)
    assert parse_status_report_form(urlencode(pairs).encode()) == expected
    item = {name: value for name, value in pairs}
    [(from_batch, raw)] = parse_status_report_batch(batch_body(item)).reports
    assert from_batch == expected
    assert json.loads(raw) == item
    assert from_batch.dedupe_key(3) == expected.dedupe_key(3)


@NO_DB
@given(
    text_of(50),
    phone,
    channel,
    text_of(160),
    st.none() | utc_times,
    extra_fields,
)
def test_uplink_round_trip(
    sms_msg_id: str, sender: str, to: str, text: str, created: datetime | None, extra: dict[str, str]
) -> None:
    fields = {"smsMsgId": sms_msg_id, "from": sender, "to": to, "body": text} | extra
    if created is not None:
        fields["createTime"] = f"{created:%Y-%m-%dT%H:%M:%S}Z"
    expected = Uplink(sms_msg_id=sms_msg_id, from_=sender, to=to, body=text, create_time=created, extra={**extra})
    assert parse_uplink_form(urlencode(fields).encode()) == expected
    # quote() instead of quote_plus(): spaces as %20, "+" as %2B, the way other clients send it
    assert parse_uplink_form(urlencode(fields, quote_via=quote).encode()) == expected


# --- the form decoder reads bodies as parse_qsl does ---------------------------------------------

_FORM_PIECES = st.sampled_from(["a", "b", "=", "&", "+", "%2B", "%3D", "%26", "%e4%bd%a0", "%ff", "%", "%4", "é", "\x00", " ", "x=y",
                                "%3a", "%3A", "%7f", "%7F", "%80", "%00", "%aB", "%c3%A9", "%2b", "%25", "%g1"])


@given(st.lists(_FORM_PIECES, max_size=30).map("".join))
@example("a=1&&b=&c&=d")
@example("a\x00=&b&b")
@example("&".join(f"f{i}=1" for i in range(64)))
def test_decode_form_reads_as_parse_qsl_does(text: str) -> None:
    """The callback path's form decoder against the standard library's reading it replaces."""
    from urllib.parse import parse_qsl

    from receiver.protocol.form import decode_form

    try:
        pairs = parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict", max_num_fields=64)
    except UnicodeDecodeError:
        expected: object = "invalid_encoding"
    except ValueError:
        expected = "too_many_fields"
    else:
        fields: dict[str, str] = {}
        expected = fields
        for name, value in pairs:  # the checks, in the order the fields came
            if name in fields:
                expected = "duplicate_field"
                break
            if "\x00" in name or "\x00" in value:
                expected = "invalid_character"
                break
            fields[name] = value
    try:
        got: object = decode_form(text.encode())
    except ProtocolError as error:
        got = error.code
    assert got == expected

