"""Journal records (receiver/records.py): what the acknowledgement writes is what the writer reads."""

from __future__ import annotations

from datetime import UTC, datetime

from receiver import records
from receiver.protocol import parse_status_report_batch, parse_status_report_form, parse_uplink_form

FORM = (
    b"sequence=1&total=2&orgCode=000&updateTime=2018-04-13T06%3A31%3A46Z&source=2"
    b"&smsMsgId=m-1&status=DELIVRD&to=%2B8615112345678&extend=%E4%BD%A0&future=x"
)


def test_a_report_comes_back_as_it_went_in() -> None:
    event = parse_status_report_form(FORM)
    record = records.decode(records.report(7, "form", 1700000000.25, event, FORM.decode()))
    assert isinstance(record, records.ReportRecord)
    assert record.event == event and record.application_id == 7 and record.raw == FORM.decode()
    assert record.received_at == datetime.fromtimestamp(1700000000.25, UTC)


def test_an_uplink_in_chinese_comes_back_as_it_went_in() -> None:
    body = "smsMsgId=u-1&from=%2B8615112345678&to=10691002019&body=%E9%80%80%E8%AE%A2&createTime=2018-04-13T06%3A31%3A46Z"
    event = parse_uplink_form(body.encode())
    record = records.decode(records.uplink(3, 1.5, event, body))
    assert isinstance(record, records.UplinkRecord) and record.event == event and record.event.body == "退订"


def test_values_the_fast_encoder_refuses_still_round_trip() -> None:
    """Unknown fields of a batch item may hold integers beyond 64 bits: kept exactly as sent,
    beside floats that stay floats."""
    body = b'{"statusReportList":[{"smsMsgId":"m-2","status":"DELIVRD","a":1.5,"b":[{"c":123456789012345678901234567890}]}]}'
    [(event, raw)] = parse_status_report_batch(body).reports
    record = records.decode(records.report(1, "batch", 2.0, event, raw))
    assert isinstance(record, records.ReportRecord)
    assert record.event.extra == {"a": 1.5, "b": [{"c": 123456789012345678901234567890}]}


def test_a_quarantined_body_keeps_its_bytes() -> None:
    raw = b"\xff\xfe not utf-8"
    record = records.decode(records.quarantine(None, "uplink", 3.0, "invalid_encoding", {"field": "body"}, "text/x", raw))
    assert isinstance(record, records.QuarantineRecord)
    assert record.raw == raw and record.detail == {"field": "body"} and record.application_id is None
