"""The three callback endpoints, table-driven: request in, response and rows out, on a real PostgreSQL."""

from __future__ import annotations

import gc
import json
import time
from datetime import UTC, datetime

import asyncpg
import pytest
from conftest import BOTH_PATHS
from support import FORM, JSON, Harness, huawei_sample, run

from receiver import applications
from receiver.callback_protocol import CallbackProtocol

pytestmark = BOTH_PATHS  # each test through the ASGI path and the direct lane

# The platform's official sample bodies (docs/protocol.md, Official samples); each is parsed and
# stored on its own in test_huawei_samples.py.
SAMPLE_REPORT = huawei_sample("status-report-api-example")
DEMO_SUCCESS = huawei_sample("status-report-demo-success")
DEMO_FAILED = huawei_sample("status-report-demo-failed")
UPLINK_PY = huawei_sample("uplink-python-demo")
UPLINK_OLD = huawei_sample("uplink-old-demo")

T1 = datetime(2018, 4, 13, 6, 31, 46, tzinfo=UTC)

REPORT_COLUMNS = "sms_msg_id, status, total, sequence, source, update_time, org_code, extend, \"to\", extra, via"


REPORT_CASES = [
    ("platform-built, no updateTime", "smsMsgId=m_1&status=EXPIRED&source=1",
     ("m_1", "EXPIRED", None, None, "1", None, None, None, None, "{}", "form")),
    ("extend brings to", "smsMsgId=m_2&status=DELIVRD&extend=order-42&to=%2B8613112345678",
     ("m_2", "DELIVRD", None, None, None, None, None, "order-42", "+8613112345678", "{}", "form")),
    ("unknown fields kept", "smsMsgId=m_3&status=SVC6001&statusDesc=quota&newField=x",
     ("m_3", "SVC6001", None, None, None, None, None, None, None, '{"newField": "x"}', "form")),
    ("long message part", "smsMsgId=m_4&status=DELIVRD&total=3&sequence=2",
     ("m_4", "DELIVRD", 3, 2, None, None, None, None, None, "{}", "form")),
]  # fmt: skip


@pytest.mark.parametrize(("body", "row"), [c[1:] for c in REPORT_CASES], ids=[c[0] for c in REPORT_CASES])
def test_status_report_form(harness: Harness, body: str, row: tuple[object, ...]) -> None:
    response = harness.post("status-report", body)
    assert (response.status_code, response.content) == (200, b"")
    assert harness.rows(f"SELECT {REPORT_COLUMNS} FROM status_reports") == [row]
    assert harness.rows("SELECT raw_body FROM status_reports") == [(body,)]


UPLINK_CASES = [
    ("chinese reply", ("from=%2B8615123456789&to=10691002019&smsMsgId=u_1&body="
                       "%E9%80%80%E8%AE%A2%EF%BC%8C%E8%B0%A2%E8%B0%A2"),
     ("u_1", "+8615123456789", "10691002019", "退订，谢谢")),
]  # fmt: skip


@pytest.mark.parametrize(("body", "row"), [c[1:] for c in UPLINK_CASES], ids=[c[0] for c in UPLINK_CASES])
def test_uplink(harness: Harness, body: str, row: tuple[object, ...]) -> None:
    response = harness.post("uplink", body)
    assert (response.status_code, response.content) == (200, b"")
    assert harness.rows('SELECT sms_msg_id, "from", "to", body FROM uplinks') == [row]


def test_uplink_create_time_is_kept(harness: Harness) -> None:
    body = UPLINK_OLD + "&createTime=2018-02-12T15%3A30%3A20Z"
    assert harness.post("uplink", body).status_code == 200
    assert harness.rows("SELECT create_time FROM uplinks") == [(datetime(2018, 2, 12, 15, 30, 20, tzinfo=UTC),)]


def test_duplicates_are_stored_once(harness: Harness) -> None:
    for _ in range(3):
        assert harness.post("status-report", SAMPLE_REPORT).status_code == 200
        assert harness.post("uplink", UPLINK_PY).status_code == 200
    batch = {"statusReportList": [{"smsMsgId": "b9d9b4fe-ad0e-4a2a-a2c7-445505b674ac_6", "total": "1",
                                   "sequence": "1", "orgCode": "000", "updateTime": "2018-04-13T06:31:46Z",
                                   "source": "2", "status": "DELIVRD"}]}  # fmt: skip
    assert harness.post("status-reports", json.dumps(batch), JSON).status_code == 200
    assert harness.rows("SELECT count(*) FROM status_reports") == [(1,)]
    assert harness.rows("SELECT count(*) FROM uplinks") == [(1,)]


def test_a_later_report_for_the_same_part_is_kept_beside_the_first(harness: Harness) -> None:
    assert harness.post("status-report", DEMO_FAILED).status_code == 200
    assert harness.post("status-report", DEMO_SUCCESS).status_code == 200
    assert harness.rows("SELECT status FROM status_reports ORDER BY status") == [("DELIVRD",), ("E200027",)]


def test_batch_of_fifty(harness: Harness) -> None:
    items = [
        {"smsMsgId": f"batch_{i}", "status": "DELIVRD" if i % 2 else "UNDELIV", "total": "1", "sequence": "1",
         "source": "2", "updateTime": "2018-04-13T06:31:46Z"}
        for i in range(50)
    ]  # fmt: skip
    response = harness.post("status-reports", json.dumps({"statusReportList": items}), JSON)
    assert (response.status_code, response.content) == (200, b"")
    rows = harness.rows("SELECT sms_msg_id, status, via, update_time FROM status_reports ORDER BY id")
    assert len(rows) == 50
    assert {r[0] for r in rows} == {f"batch_{i}" for i in range(50)}
    assert {(r[2], r[3]) for r in rows} == {("batch", T1)}
    assert harness.rows("SELECT raw_body::jsonb->>'smsMsgId' FROM status_reports WHERE sms_msg_id = 'batch_7'") == [
        ("batch_7",)
    ]


def test_batch_keeps_good_items_and_quarantines_bad_ones(harness: Harness) -> None:
    items = [{"smsMsgId": "ok_1", "status": "DELIVRD"}, {"status": "DELIVRD"}, {"smsMsgId": "ok_2", "status": "X"}]
    response = harness.post("status-reports", json.dumps({"statusReportList": items}), JSON)
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid_items",
        "detail": {"accepted": 2, "rejected": [{"index": 1, "error": "missing_field", "detail": {"field": "smsMsgId"}}]},
    }
    assert harness.rows("SELECT sms_msg_id FROM status_reports ORDER BY sms_msg_id") == [("ok_1",), ("ok_2",)]
    assert harness.rows("SELECT endpoint, error, raw_body FROM quarantine") == [
        ("status-reports", "missing_field", b'{"status":"DELIVRD"}')
    ]


REFUSALS = [
    ("status-report", FORM, "status=DELIVRD", 400, "missing_field"),
    ("status-report", FORM, "smsMsgId=x&status=TOOLONGSTATUS", 400, "field_too_long"),
    ("status-report", FORM, "smsMsgId=x&status=DELIVRD&updateTime=yesterday", 400, "invalid_field"),
    ("status-report", FORM, b"smsMsgId=%FF%FE&status=DELIVRD", 400, "invalid_encoding"),
    ("status-report", JSON, '{"smsMsgId":"x","status":"DELIVRD"}', 415, "unsupported_media_type"),
    ("status-reports", JSON, "{not json", 400, "invalid_json"),
    ("status-reports", JSON, '{"statusReportList": []}', 400, "invalid_batch"),
    ("status-reports", FORM, "statusReportList=x", 415, "unsupported_media_type"),
    ("uplink", FORM, "from=%2B8613100000000&to=1069&smsMsgId=u", 400, "missing_field"),
    ("uplink", "text/plain", "hello", 415, "unsupported_media_type"),
]


@pytest.mark.parametrize(("endpoint", "content_type", "body", "status", "error"), REFUSALS)
def test_bad_input_gets_a_4xx_and_is_quarantined(
    harness: Harness, endpoint: str, content_type: str, body: str | bytes, status: int, error: str
) -> None:
    response = harness.post(endpoint, body, content_type)
    assert response.status_code == status
    assert response.json()["error"] == error
    raw = body.encode() if isinstance(body, str) else body
    assert harness.rows("SELECT endpoint, error, content_type, raw_body FROM quarantine") == [
        (endpoint, error, content_type, raw)
    ]
    assert harness.rows("SELECT count(*) FROM status_reports") == [(0,)]


def test_body_over_the_limit_gets_413(harness: Harness) -> None:
    response = harness.post("status-report", "smsMsgId=x&status=DELIVRD&pad=" + "a" * (300 << 10))
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"
    assert harness.rows("SELECT error FROM quarantine") == [("body_too_large",)]


def test_unknown_token_gets_404_and_leaves_no_trace(harness: Harness) -> None:
    response = harness.post("status-report", SAMPLE_REPORT, token="not-a-token")
    assert response.status_code == 404
    assert response.json()["error"] == "unknown_application"
    assert harness.rows("SELECT count(*) FROM quarantine") == [(0,)]
    assert harness.rows("SELECT count(*) FROM status_reports") == [(0,)]


def test_an_application_created_while_serving_is_found(harness: Harness) -> None:
    async def make_app() -> str:
        conn = await asyncpg.connect(harness.url)
        try:
            return (await applications.create(conn, "late", []))[1]
        finally:
            await conn.close()

    token = run(make_app())
    time.sleep(1.1)  # the registry refreshes at most once a second on a miss
    assert harness.post("uplink", UPLINK_PY, token=token).status_code == 200
    assert harness.rows("SELECT a.name FROM uplinks u JOIN applications a ON a.id = u.application_id") == [("late",)]


def test_an_application_created_just_after_a_lookup_gets_its_first_push(harness: Harness) -> None:
    """The registry reads the database at most once a second; a push in that second for a token
    it does not know waits for the next read instead of a 404 (the platform never retries)."""
    assert harness.post("status-report", SAMPLE_REPORT, token="not-a-token").status_code == 404  # a read now

    async def make_app() -> str:
        conn = await asyncpg.connect(harness.url)
        try:
            return (await applications.create(conn, "right-after", []))[1]
        finally:
            await conn.close()

    assert harness.post("uplink", UPLINK_PY, token=run(make_app())).status_code == 200


def test_readyz_and_healthz(harness: Harness) -> None:
    assert harness.client.get("/healthz").json() == {"status": "ok"}
    ready = harness.client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["ready"] is True
    assert body["database"] == {"reachable": True, "pending_migrations": []}
    assert body["journal"]["writable"] is True
    assert body["journal"]["filling"] is False


def test_a_callback_leaves_nothing_for_the_garbage_collector(harness: Harness) -> None:
    """Each callback's objects (the call, its scope, the connection's protocol and transport)
    are freed by reference counting as it ends. Held in a reference cycle, every one of them
    waited for a collection instead: at full load the collector ran dozens of times a second
    in each worker, on the CPU the acknowledgements need."""
    from receiver.http.callbacks import _Call

    bodies = [("status-report", SAMPLE_REPORT), ("status-report", "smsMsgId=&status=DELIVRD"), ("uplink", UPLINK_PY)]
    gc.collect()
    gc.disable()
    try:
        answers = [harness.post(endpoint, body).status_code for endpoint, body in bodies * 5]
        gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds goes to gc.garbage, to be looked at
        gc.collect()
        left = [type(o).__name__ for o in gc.garbage if isinstance(o, _Call | CallbackProtocol)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert answers == [200, 400, 200] * 5
    assert left == []
