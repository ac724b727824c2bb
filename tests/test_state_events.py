"""State events are stored as columns (sql/023_state_events.sql) and read as the object they were.

The feed shows a state event's ``data`` exactly as the trigger stored it before: the same keys,
numbers and UTC timestamps, whatever the reading session's time zone. Rows stored as JSON before
the migration are read as they are.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from support import Harness, run

from receiver.events import feed

# The object the state trigger stored before sql/023 (sql/019_message_index.sql), for one state row.
_OLD_OBJECT = """
SELECT jsonb_build_object(
    'state', $1::text, 'previous', $2::text, 'status', $3::text,
    'parts', jsonb_build_object('total', $4::integer, 'delivered', $5::integer),
    'registered', $6::boolean, 'sent_at', $7::timestamptz, 'delivered_at', $8::timestamptz,
    'latency_seconds', extract(epoch FROM $9::interval))
"""

SENT = datetime(2024, 11, 22, 2, 16, 46, 250000, tzinfo=UTC)
DELIVERED = SENT + timedelta(seconds=4, microseconds=500)
# A settled message with fractional seconds, and a first state with most fields null.
ROWS = [
    ("delivered", "pending", "DELIVRD", 2, 2, True, SENT, DELIVERED, DELIVERED - SENT),
    ("pending", None, "000000", 1, 0, True, SENT, None, None),
    ("failed", "pending", "UNDELIV", 3, 1, False, None, None, None),
]


Read = tuple[list[Any], list[Any], list[Any], list[tuple[str, bool, str | None]]]


async def _as_before_and_now(url: str) -> Read:
    """Each row stored both ways (JSON as before the migration, columns as now), read through the
    feed on a connection whose time zone is not UTC."""
    conn = await asyncpg.connect(url, server_settings={"timezone": "Asia/Shanghai"})
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL timezone = 'UTC'")  # the old trigger's rendering
            old = [await conn.fetchval(_OLD_OBJECT, *row) for row in ROWS]
        start = await feed.now(conn)
        for row, stored in zip(ROWS, old, strict=True):
            await conn.execute("INSERT INTO events (kind, sms_msg_id, data) VALUES ('state', 'before', $1)", stored)
            await conn.execute(
                "INSERT INTO events (kind, sms_msg_id, state, previous, status, parts_total, parts_delivered,"
                " registered, sent_at, delivered_at, latency) VALUES ('state', 'now', $1, $2, $3, $4, $5, $6, $7, $8, $9)",
                *row,
            )
        page = await feed.page(conn, start, limit=100)
        raw = await conn.fetch("SELECT sms_msg_id, data IS NULL AS no_json, state FROM events ORDER BY id")
    finally:
        await conn.close()
    before = [e.data for e in page.events if e.sms_msg_id == "before"]
    now = [e.data for e in page.events if e.sms_msg_id == "now"]
    return before, now, [json.loads(o) for o in old], [(r["sms_msg_id"], r["no_json"], r["state"]) for r in raw]


def test_a_state_event_stored_as_columns_reads_as_the_object_stored_before(db_url: str) -> None:
    before, now, old, raw = run(_as_before_and_now(db_url))
    assert now == before == old
    assert now[0] == {
        "state": "delivered", "previous": "pending", "status": "DELIVRD", "parts": {"total": 2, "delivered": 2},
        "registered": True, "sent_at": "2024-11-22T02:16:46.25+00:00", "delivered_at": "2024-11-22T02:16:50.2505+00:00",
        "latency_seconds": 4.0005,
    }  # fmt: skip
    assert [r for r in raw if r[0] == "now"] == [("now", True, state) for state, *_ in ROWS]


def test_the_service_stores_state_events_without_json(harness: Harness) -> None:
    send = {"result": [{"createTime": "2024-11-22T02:16:46Z", "from": "csms100000001", "originTo": "+8613712343774",
                        "smsMsgId": "m1", "status": "000000", "total": 1}]}  # fmt: skip
    harness.api("POST", "/v1/sent", json=send)
    body = "smsMsgId=m1&status=DELIVRD&sequence=1&total=1&updateTime=2024-11-22T02%3A16%3A50Z&source=2"
    assert harness.post("status-report", body).status_code == 200
    harness.settle()
    rows = harness.rows("SELECT state, previous, data IS NULL FROM events WHERE kind = 'state' ORDER BY id")
    assert rows == [("pending", None, True), ("delivered", "pending", True)]
    states = [e for e in harness.api("GET", "/v1/events").json()["events"] if e["kind"] == "state"]
    assert [e["data"]["state"] for e in states] == ["pending", "delivered"]
    assert states[1]["data"]["sent_at"] == "2024-11-22T02:16:46+00:00"
    assert states[1]["data"]["latency_seconds"] == 4


async def _refused(url: str, columns: str, values: str) -> bool:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"INSERT INTO events (kind, sms_msg_id, {columns}) VALUES ('state', 'x', {values})")
    except asyncpg.CheckViolationError:
        return True
    finally:
        await conn.close()
    return False


def test_a_state_event_has_its_json_or_its_columns_not_both_nor_neither(db_url: str) -> None:
    assert run(_refused(db_url, "data, state", """'{"state": "pending"}', 'pending'"""))
    assert run(_refused(db_url, "number", "NULL"))
    assert not run(_refused(db_url, "state", "'pending'"))
