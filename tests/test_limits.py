"""Every limit, over HTTP: each field one character over its bound (the bounds are the
protocol's own tables), too many fields, 51 items, deep nesting, a large body, a wrong content
type, malformed bodies. Each refusal is a 4xx with a JSON reason, lands in the quarantine and is
counted."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest
from conftest import BOTH_PATHS
from support import FORM, JSON, Harness

from receiver import records
from receiver.protocol import signature, status_report, uplink
from receiver.protocol.fields import MAX_FIELDS, MAX_UNKNOWN_NAME, MAX_UNKNOWN_VALUE

REPORT = {"smsMsgId": "m-1", "status": "DELIVRD"}
UPLINK = {"smsMsgId": "u-1", "from": "+8613100000000", "to": "1069000", "body": "hi"}
ITEM = {"smsMsgId": "m-1", "status": "DELIVRD"}


def too_long(name: str, limit: int) -> dict[str, object]:
    return {"error": "field_too_long", "detail": {"field": name, "max_length": limit}}


def over(name: str, limit: int) -> str:
    return ("1" if name in {"total", "sequence", "to", "from"} else "a") * (limit + 1)


CASES = [
    *[pytest.param("status-report", FORM, urlencode(REPORT | {name: over(name, rule.max_len)}), 400,
                   too_long(name, rule.max_len), id=f"report-{name}")
      for name, rule in status_report.RULES.items()],
    *[pytest.param("uplink", FORM, urlencode(UPLINK | {name: over(name, rule.max_len)}), 400,
                   too_long(name, rule.max_len), id=f"uplink-{name}")
      for name, rule in uplink.RULES.items()],
    pytest.param("status-report", FORM, urlencode(REPORT | {"n" * (MAX_UNKNOWN_NAME + 1): "v"}), 400,
                 too_long("n" * MAX_UNKNOWN_NAME, MAX_UNKNOWN_NAME), id="unknown-name"),
    pytest.param("uplink", FORM, urlencode(UPLINK | {"newField": "v" * (MAX_UNKNOWN_VALUE + 1)}), 400,
                 too_long("newField", MAX_UNKNOWN_VALUE), id="unknown-value"),
    pytest.param("status-report", FORM, urlencode(REPORT | {f"x{i}": "1" for i in range(MAX_FIELDS - 1)}), 400,
                 {"error": "too_many_fields", "detail": {"max_fields": MAX_FIELDS}}, id="too-many-fields"),
    pytest.param("status-reports", JSON, json.dumps({"statusReportList": [ITEM] * 51}), 400,
                 {"error": "invalid_batch", "detail": {"items": 51, "allowed": "1-50"}}, id="51-items"),
    pytest.param("status-reports", JSON, json.dumps({"statusReportList": []}), 400,
                 {"error": "invalid_batch", "detail": {"items": 0, "allowed": "1-50"}}, id="0-items"),
    pytest.param("status-reports", JSON, '{"statusReportList":[' + "[" * 20 + "]" * 20 + "]}", 400,
                 {"error": "too_deep", "detail": {"max_depth": 16}}, id="deep-nesting"),
    pytest.param("status-reports", JSON, "[" * 100_000, 400,
                 {"error": "invalid_json", "detail": "the body is not valid JSON"}, id="deeper-than-python"),
    pytest.param("status-reports", JSON, json.dumps({"statusReportList": [ITEM | {"smsMsgId": "m" * 51}]}), 400,
                 {"error": "invalid_items", "detail": {"accepted": 0, "rejected": [
                     {"index": 0, "error": "field_too_long", "detail": {"field": "smsMsgId", "max_length": 50}}]}},
                 id="batch-item-field"),
    pytest.param("status-reports", JSON, b'{"statusReportList": "\xff"}', 400,
                 {"error": "invalid_encoding", "detail": "the body must be UTF-8 JSON"}, id="not-utf8"),
    pytest.param("status-report", FORM, "smsMsgId=a&status=DELIVRD&pad=" + "p" * (256 << 10), 413,
                 {"error": "body_too_large", "detail": {"max_bytes": 256 << 10}}, id="body-too-large"),
    pytest.param("status-report", JSON, json.dumps(REPORT), 415,
                 {"error": "unsupported_media_type", "detail": {"expected": FORM}}, id="report-as-json"),
    pytest.param("status-reports", FORM, urlencode(REPORT), 415,
                 {"error": "unsupported_media_type", "detail": {"expected": JSON}}, id="batch-as-form"),
    pytest.param("uplink", "", urlencode(UPLINK), 415,
                 {"error": "unsupported_media_type", "detail": {"expected": FORM}}, id="uplink-no-type"),
]  # fmt: skip


@BOTH_PATHS
@pytest.mark.parametrize(("endpoint", "content_type", "body", "status", "answer"), CASES)
def test_every_limit_is_a_4xx_with_a_json_reason_quarantined_and_counted(
    harness: Harness, endpoint: str, content_type: str, body: str | bytes, status: int, answer: dict[str, object]
) -> None:
    response = harness.post(endpoint, body, content_type)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json() == answer
    error = "field_too_long" if answer["error"] == "invalid_items" else answer["error"]
    assert harness.rows("SELECT endpoint, error FROM quarantine") == [(endpoint, error)]
    assert harness.rows("SELECT endpoint, error, refusals FROM quarantine_counts") == [(endpoint, error, 1)]
    assert harness.rows("SELECT count(*) FROM status_reports") == [(0,)]


def test_every_known_field_has_a_bound_and_a_field_at_its_bound_is_taken(harness: Harness) -> None:
    at_limit = {name: over(name, rule.max_len)[1:] for name, rule in status_report.RULES.items()}
    at_limit |= {"smsMsgId": "m" * 50, "total": "99", "sequence": "99", "updateTime": "2026-01-01T00:00:00Z"}
    at_limit |= {"statusDesc": "d" * 500, "source": "2"}
    assert harness.post("status-report", urlencode(at_limit)).status_code == 200
    assert harness.post("status-reports", json.dumps({"statusReportList": [ITEM] * 50}), JSON).status_code == 200
    uplink_at_limit = {name: over(name, rule.max_len)[1:] for name, rule in uplink.RULES.items()} | {"createTime": None}
    assert harness.post("uplink", urlencode({k: v for k, v in uplink_at_limit.items() if v})).status_code == 200
    assert harness.rows("SELECT count(*) FROM quarantine") == [(0,)]


def test_header_values_kept_in_the_quarantine_are_bounded(harness: Harness) -> None:
    """A Content-Type of 10,000 characters: refused (415) and quarantined, its first 256 kept."""
    response = harness.post("uplink", urlencode(UPLINK), "text/plain; x=" + "a" * 10_000)
    assert response.status_code == 415
    assert harness.rows("SELECT length(content_type) FROM quarantine") == [(records.MAX_CONTENT_TYPE,)]


def test_a_signature_refusal_quotes_a_long_header_only_in_part() -> None:
    error = signature.SignatureError("unknown_access_key", f"no push key with access key {'k' * 10_000!r}")
    assert len(error.detail) == signature.MAX_DETAIL and error.detail.endswith("…")


@BOTH_PATHS
@pytest.mark.parametrize(("endpoint", "base", "table"), [("status-report", REPORT, "status_reports"), ("uplink", UPLINK, "uplinks")])
def test_a_body_whose_escapes_would_pass_a_mebibyte_is_journaled_as_it_came_and_stored(
    harness: Harness, endpoint: str, base: dict[str, str], table: str
) -> None:
    """The journal keeps the body as it came, never a re-serialised copy: 127 KiB of control
    characters (over 1 MiB once escaped as JSON) are acknowledged and stored whole."""
    body = "&".join([urlencode(base), *(f"x{i}=" + "\x01" * MAX_UNKNOWN_VALUE for i in range(60))])
    response = harness.post(endpoint, body, FORM)
    assert response.status_code == 200
    assert harness.rows(f"SELECT length(raw_body), length(extra->>'x59') FROM {table}") == [(len(body), MAX_UNKNOWN_VALUE)]
