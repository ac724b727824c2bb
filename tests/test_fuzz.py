"""No input may cause a 5xx: the three callbacks and the query API, fuzzed in-process.

Arbitrary bytes, form fields and JSON (nested, huge numbers, NaN, wrong types, 51 items, bad
UTF-8, odd content types) go to the real application on a real PostgreSQL. Every answer must be
a 200 or a 4xx whose body is ``{"error": <str>, "detail": ...}``; and a 200 must mean stored: once
the writer has drained the journal, every acknowledged event is in its table.

Deterministic (``derandomize``) and small, so CI stays quick; the whole API is also fuzzed
against its OpenAPI document in test_openapi.py.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote

from hypothesis import example, given, settings
from hypothesis import strategies as st
from support import FORM, JSON, Harness

from receiver.protocol import parse_status_report_batch, parse_status_report_form, parse_uplink_form

FUZZ = settings(max_examples=80, derandomize=True, deadline=None, database=None)

REPORT_NAMES = ["smsMsgId", "status", "total", "sequence", "statusDesc", "source", "updateTime", "extend", "to",
                "orgCode"]  # fmt: skip
UPLINK_NAMES = ["smsMsgId", "from", "to", "body", "createTime"]
CONTENT_TYPES = [
    FORM, JSON, f"{FORM}; charset=UTF-8", f"{JSON}; charset=gbk", "APPLICATION/JSON", "text/plain",
    "multipart/form-data; boundary=x", "application/octet-stream", "", ";", f" {FORM} ;;",
]  # fmt: skip


def refusal_ok(response: Any) -> None:
    """Never a 5xx; a 4xx says why in JSON."""
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and "detail" in body, body


# --- values ------------------------------------------------------------------------------------------

odd_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", " ", "\x00", "\ud800", "退订", "%", "%2B86", "+8613112345678", "DELIVRD", "１２",
                     "2018-04-13T06:31:46Z", "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"]),
    st.integers(min_value=-3, max_value=120).map(str),
    st.text(min_size=40, max_size=600),
)  # fmt: skip


def encode_field(text: str) -> str:
    """Percent-encode like a browser; a lone surrogate becomes the bytes no UTF-8 decoder accepts."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def form_body(names: list[str]) -> st.SearchStrategy[bytes]:
    pair = st.tuples(st.sampled_from(names[2:] or names) | st.text(max_size=70), odd_text)
    raw_pair = st.sampled_from([b"%FF=1", b"a=%E9%80", b"=", b"&&", b"a", b"a=1;b=2", b"+=+", b"%00=x"])

    def join(items: list[tuple[str, str] | bytes]) -> bytes:
        parts = [item if isinstance(item, bytes) else f"{encode_field(item[0])}={encode_field(item[1])}".encode()
                 for item in items]  # fmt: skip
        return b"&".join(parts)

    required = st.fixed_dictionaries({name: odd_text for name in names[:2]}).map(lambda d: list(d.items()))
    rest = st.lists(st.one_of(pair, raw_pair), max_size=12)
    return st.tuples(required, rest).map(lambda t: join([*t[0], *t[1]])) | st.binary(max_size=300)


json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([10**400, -(10**400), 1.0, 1e308, float("nan"), float("inf"), float("-inf")]),
    st.floats(allow_nan=False),
    odd_text,
)
json_value = st.recursive(
    json_scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)  # fmt: skip
report_item = st.one_of(
    st.fixed_dictionaries(
        {"smsMsgId": st.text(min_size=1, max_size=20), "status": st.sampled_from(["DELIVRD", "E200027", "x"])},
        optional={name: json_scalar for name in REPORT_NAMES[2:]} | {"extra": json_value, "n": json_value},
    ),
    st.dictionaries(st.sampled_from(REPORT_NAMES) | st.text(max_size=70), json_value, max_size=8),
    json_value,
)


def dumps(document: object) -> bytes:
    return json.dumps(document, ensure_ascii=False, allow_nan=True).encode("utf-8", "surrogatepass")


batch_body = st.one_of(
    st.lists(report_item, min_size=0, max_size=51).map(lambda items: dumps({"statusReportList": items})),
    st.integers(min_value=48, max_value=52).map(
        lambda n: dumps({"statusReportList": [{"smsMsgId": f"many_{i}", "status": "DELIVRD"} for i in range(n)]})
    ),
    json_value.map(dumps),
    st.just(b"[" * 3000 + b"]" * 3000),
    st.just(b'{"statusReportList": [' + b'{"a":' * 900 + b"1" + b"}" * 900 + b"]}"),
    st.binary(max_size=300),
)


# --- the three callbacks -----------------------------------------------------------------------------


def test_status_report_form_never_5xx_and_200_means_stored(harness: Harness) -> None:
    stored: set[tuple[str, str]] = set()

    @FUZZ
    @given(form_body(REPORT_NAMES), st.sampled_from(CONTENT_TYPES[:3]) | st.sampled_from(CONTENT_TYPES))
    def post(body: bytes, content_type: str) -> None:
        response = harness.post("status-report", body, content_type)
        refusal_ok(response)
        if response.status_code == 200:
            assert response.content == b""
            report = parse_status_report_form(body)
            stored.add((report.sms_msg_id, report.status))

    post()
    assert stored, "no example was accepted: the strategy tests nothing but refusals"
    rows = set(harness.rows("SELECT sms_msg_id, status FROM status_reports"))
    assert stored <= rows


def test_uplink_form_never_5xx_and_200_means_stored(harness: Harness) -> None:
    stored: set[str] = set()  # an uplink is identified by its smsMsgId: a second one with it is a duplicate

    @FUZZ
    @given(form_body(UPLINK_NAMES), st.sampled_from(CONTENT_TYPES[:3]))
    def post(body: bytes, content_type: str) -> None:
        response = harness.post("uplink", body, content_type)
        refusal_ok(response)
        if response.status_code == 200:
            stored.add(parse_uplink_form(body).sms_msg_id)

    @FUZZ
    @given(form_body(["to", "body"]), st.text(min_size=1, max_size=20), st.sampled_from(["%2B8613112345678", "1069"]))
    def post_complete(rest: bytes, sms_msg_id: str, sender: str) -> None:
        body = f"smsMsgId={encode_field(sms_msg_id)}&from={sender}&".encode() + rest
        response = harness.post("uplink", body)
        refusal_ok(response)
        if response.status_code == 200:
            stored.add(parse_uplink_form(body).sms_msg_id)

    post()
    post_complete()
    assert stored, "no example was accepted: the strategy tests nothing but refusals"
    rows = {row[0] for row in harness.rows("SELECT sms_msg_id FROM uplinks")}
    assert stored <= rows


def test_batch_never_5xx_and_what_is_accepted_is_stored(harness: Harness) -> None:
    stored: set[tuple[str, str]] = set()

    @settings(FUZZ, max_examples=100)
    @given(batch_body, st.sampled_from([JSON, JSON, f"{JSON}; charset=utf-8", FORM, ""]))
    def post(body: bytes, content_type: str) -> None:
        response = harness.post("status-reports", body, content_type)
        refusal_ok(response)
        accepted = response.status_code == 200 or (
            response.status_code == 400 and response.json()["error"] == "invalid_items"
        )
        if not accepted:
            return
        batch = parse_status_report_batch(body)
        if response.status_code == 200:
            assert response.content == b"" and not batch.rejected
        else:
            detail = response.json()["detail"]
            assert detail["accepted"] == len(batch.reports)
            assert [item["index"] for item in detail["rejected"]] == [item.index for item in batch.rejected]
        stored.update((report.sms_msg_id, report.status) for report, _ in batch.reports)

    post()
    assert stored, "no example was accepted: the strategy tests nothing but refusals"
    rows = set(harness.rows("SELECT sms_msg_id, status FROM status_reports"))
    assert stored <= rows


def test_any_request_to_a_callback_url_gets_json_or_200(harness: Harness) -> None:
    """Any token, method, content type and bytes: a JSON refusal or a 200, never a 5xx."""

    @settings(FUZZ, max_examples=60)
    @given(
        st.sampled_from(["status-report", "status-reports", "uplink"]),
        st.sampled_from([harness.token, "not-a-token", "%00", "x" * 300]) | st.text(min_size=1, max_size=20),
        st.sampled_from(["POST", "POST", "GET", "PUT", "DELETE", "PATCH"]),
        st.sampled_from(CONTENT_TYPES) | st.text(max_size=30),
        st.binary(max_size=200),
    )
    def send(endpoint: str, token: str, method: str, content_type: str, body: bytes) -> None:
        path = f"/callbacks/{quote(token, safe='')}/{endpoint}"
        headers = {b"Content-Type": content_type.encode("utf-8", "surrogatepass")}
        response = harness.client.request(method, path, content=body, headers=headers)
        refusal_ok(response)
        if method != "POST":
            assert response.status_code in (404, 405)

    send()


def test_numbers_jsonb_cannot_keep_are_refused_not_acknowledged(harness: Harness) -> None:
    """NaN, Infinity and 1e400 were acknowledged, then dropped by the writer as a poison record."""
    for value in ("NaN", "Infinity", "-Infinity", "1e400", "-1E+999"):
        body = f'{{"statusReportList": [{{"smsMsgId": "n", "status": "DELIVRD", "x": {value}}}]}}'
        response = harness.post("status-reports", body, JSON)
        assert (response.status_code, response.json()["error"]) == (400, "invalid_json"), value
    ok = '{"statusReportList": [{"smsMsgId": "n", "status": "DELIVRD", "x": 1e300, "y": 123456789012345678901234567890}]}'
    assert harness.post("status-reports", ok, JSON).status_code == 200
    assert harness.rows("SELECT sms_msg_id, extra->>'y' FROM status_reports") == [("n", "123456789012345678901234567890")]


# --- the query API -----------------------------------------------------------------------------------


def cursor_of(values: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


cursor_values = st.one_of(
    st.sampled_from(["0", "1" * 30, "-1", "", "2024-01-01T00:00:00", "0001-01-01T00:00:00+14:00",
                     "9999-12-31T23:59:59-14:00", "\x00", "a\x00b"]),
    st.integers(min_value=-(2**70), max_value=2**70),
    json_scalar,
)  # fmt: skip
cursors = st.one_of(
    st.lists(cursor_values, min_size=2, max_size=2).map(cursor_of),
    json_value.map(cursor_of),
    st.text(max_size=30),
)
query_text = odd_text | st.sampled_from(["²", "٣", "1e3", "+5", " 5", "500", "501", "0"])


def v1_get(harness: Harness, path: str, params: dict[str, str] | None = None) -> Any:
    """A GET with the query string encoded by hand: a lone surrogate goes as bytes that are not UTF-8."""
    query = "&".join(f"{encode_field(name)}={encode_field(value)}" for name, value in (params or {}).items())
    url = f"{path}?{query}" if query else path
    return harness.client.get(url, headers={"Authorization": f"Bearer {harness.api_key}"})


def test_cursors_never_5xx(harness: Harness) -> None:
    @settings(FUZZ, max_examples=60)
    @given(st.sampled_from(["/v1/messages", "/v1/uplinks"]), cursors)
    @example("/v1/messages", cursor_of(["0001-01-01T00:00:00+14:00", "a"]))  # before year 1 in UTC
    @example("/v1/messages", cursor_of(["2024-01-01T00:00:00+00:00", "a\x00b"]))  # NUL: not PostgreSQL text
    @example("/v1/uplinks", cursor_of(["1" * 30, 0]))  # past xid8
    @example("/v1/uplinks", cursor_of(["1", 2**70]))  # past bigint
    def read(path: str, cursor: str) -> None:
        refusal_ok(v1_get(harness, path, {"cursor": cursor}))

    read()


def test_query_parameters_never_5xx(harness: Harness) -> None:
    @settings(FUZZ, max_examples=80)
    @given(
        st.sampled_from(["/v1/messages", "/v1/uplinks", "/v1/messages/{}", "/v1/blacklist/{}"]),
        st.dictionaries(st.sampled_from(["to", "state", "since", "until", "limit", "channel"]), query_text, max_size=3),
        query_text,
    )
    @example("/v1/messages", {"limit": "²"}, "")  # str.isdigit() is true, int() refuses it
    @example("/v1/uplinks", {"limit": "1" * 5000}, "")  # int() refuses over 4300 digits
    @example("/v1/messages/{}", {}, "a\x00b")
    @example("/v1/blacklist/{}", {"channel": "\x00"}, "+8613112345678")
    def read(path: str, params: dict[str, str], value: str) -> None:
        refusal_ok(v1_get(harness, path.format(encode_field(value)), params))

    read()


def test_blacklist_bodies_never_5xx(harness: Harness) -> None:
    headers = {"Authorization": f"Bearer {harness.api_key}"}
    change = st.fixed_dictionaries({}, optional={"reason": json_scalar, "channel": json_scalar, "numbers": json_value})

    @settings(FUZZ, max_examples=60)
    @given(st.sampled_from(["POST", "PUT", "DELETE"]), change | json_value, st.sampled_from(["+8613112345678", "x"]))
    @example("PUT", {"reason": "r", "channel": "a\x00"}, "+8613112345678")
    @example("POST", {"numbers": ["+8613112345678"], "channel": "\x00"}, "")
    def send(method: str, document: object, number: str) -> None:
        path = "/v1/blacklist/check" if method == "POST" else f"/v1/blacklist/{quote(number)}"
        refusal_ok(harness.client.request(method, path, content=dumps(document), headers=headers))

    send()


def test_sent_registration_never_5xx(harness: Harness) -> None:
    result_item = st.fixed_dictionaries(
        {"smsMsgId": json_scalar, "originTo": json_scalar, "status": json_scalar},
        optional={"from": json_scalar, "createTime": json_scalar, "countryId": json_scalar, "total": json_scalar,
                  "raw": json_value},
    )  # fmt: skip
    response_doc = st.fixed_dictionaries({"result": st.lists(result_item | json_value, max_size=4)})

    @settings(FUZZ, max_examples=80)
    @given(
        st.one_of(
            response_doc,
            st.fixed_dictionaries({"response": response_doc},
                                  optional={k: json_scalar for k in ("extend", "template_id", "signature",
                                                                     "message_type")}),
            json_value,
        )
    )  # fmt: skip
    def register(document: object) -> None:
        response = harness.client.post(
            "/v1/sent", content=dumps(document), headers={"Authorization": f"Bearer {harness.api_key}"}
        )
        refusal_ok(response)

    register()

