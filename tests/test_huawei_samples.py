"""The platform's official sample bodies (tests/fixtures/huawei/; docs/protocol.md, Official
samples), each parsed by the protocol's functions and stored through the service: request in,
rows out, on a real PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from conftest import BOTH_PATHS
from support import JSON, Harness, huawei_sample

from receiver.protocol import parse_status_report_batch, parse_status_report_form, parse_uplink_form

pytestmark = BOTH_PATHS  # each test through the ASGI path and the direct lane

T_API = datetime(2018, 4, 13, 6, 31, 46, tzinfo=UTC)
T_DEMO = datetime(2018, 10, 31, 8, 43, 41, tzinfo=UTC)
DEMO_ID = "2ea20735-f856-4376-afbf-570bd70a46ee_11840135"
UPLINK_ID = "9692b5be-c427-4525-8e73-cf4a6ac5b3f7"

# sample: (smsMsgId, status, total, sequence, source, updateTime, orgCode); none has extend, to or
# an unknown field.
STATUS_REPORTS = {
    "status-report-api-example": ("b9d9b4fe-ad0e-4a2a-a2c7-445505b674ac_6", "DELIVRD", 1, 1, "2", T_API, "000"),
    "status-report-demo-success": (DEMO_ID, "DELIVRD", 1, 1, "2", T_DEMO, None),
    "status-report-demo-failed": (DEMO_ID, "E200027", 1, 1, "2", T_DEMO, None),
    "status-report-old-demo-failed": (DEMO_ID, "RTE_ERR", 1, 1, "2", T_DEMO, "E200027"),
}
# sample: (smsMsgId, from, to, body); none has createTime. The samples mask digits with "*".
UPLINKS = {
    "uplink-python-demo": (UPLINK_ID, "+86151****6789", "1069****019", "********"),
    "uplink-go-demo": (UPLINK_ID, "+86151****6789", "1069***2019", "***********"),
    "uplink-java-demo": (UPLINK_ID, "+86151****6789", "1069***2019", "********"),
    "uplink-api-example": (UPLINK_ID, "+86155****5172", "201804131431201234", "********"),
    "uplink-old-demo": (UPLINK_ID, "+8615123456789", "10691002019", "********"),
}
REPORT_ROW = 'sms_msg_id, status, total, sequence, source, update_time, org_code, extend, "to", extra, via'


@pytest.mark.parametrize(("name", "fields"), STATUS_REPORTS.items(), ids=STATUS_REPORTS)
def test_official_status_report(harness: Harness, name: str, fields: tuple[object, ...]) -> None:
    body = huawei_sample(name)
    report = parse_status_report_form(body.encode())
    parsed = (report.sms_msg_id, report.status, report.total, report.sequence, report.source, report.update_time,
              report.org_code)  # fmt: skip
    assert parsed == fields
    assert (report.extend, report.to, report.extra) == (None, None, {})

    response = harness.post("status-report", body)
    assert (response.status_code, response.content) == (200, b"")
    assert harness.rows(f"SELECT {REPORT_ROW}, raw_body FROM status_reports") == [
        (*fields, None, None, "{}", "form", body)
    ]


@pytest.mark.parametrize(("name", "fields"), STATUS_REPORTS.items(), ids=STATUS_REPORTS)
def test_official_status_report_in_a_batch(harness: Harness, name: str, fields: tuple[object, ...]) -> None:
    """The platform published no batch body: each sample's fields as a batch item, as the batch's
    field table describes it, give the same report."""
    item = dict(pair.split("=", 1) for pair in huawei_sample(name).split("&"))
    item["updateTime"] = item["updateTime"].replace("%3A", ":")
    body = json.dumps({"statusReportList": [item]})
    batch = parse_status_report_batch(body.encode())
    assert batch.rejected == []
    [(report, _)] = batch.reports
    assert report == parse_status_report_form(huawei_sample(name).encode())

    response = harness.post("status-reports", body, JSON)
    assert (response.status_code, response.content) == (200, b"")
    assert harness.rows(f"SELECT {REPORT_ROW} FROM status_reports") == [(*fields, None, None, "{}", "batch")]


@pytest.mark.parametrize(("name", "fields"), UPLINKS.items(), ids=UPLINKS)
def test_official_uplink(harness: Harness, name: str, fields: tuple[object, ...]) -> None:
    body = huawei_sample(name)
    uplink = parse_uplink_form(body.encode())
    assert (uplink.sms_msg_id, uplink.from_, uplink.to, uplink.body) == fields
    assert (uplink.create_time, uplink.extra) == (None, {})

    response = harness.post("uplink", body)
    assert (response.status_code, response.content) == (200, b"")
    assert harness.rows('SELECT sms_msg_id, "from", "to", body, create_time, raw_body FROM uplinks') == [
        (*fields, None, body)
    ]
