"""Dashboard views over time buckets, and the read-only role dashboards connect as."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
import pytest
from support import Harness, run

HOUR_1 = datetime(2024, 11, 22, 2, tzinfo=UTC)
HOUR_2 = datetime(2024, 11, 22, 3, tzinfo=UTC)

def sends(harness: Harness) -> None:
    result = []
    for i in range(4):
        result.append({"smsMsgId": f"h1-{i}", "from": "csms1", "originTo": f"+861310000000{i}", "status": "000000",
                       "createTime": "2024-11-22T02:10:00Z"})  # fmt: skip
    for i in range(2):
        result.append({"smsMsgId": f"h2-{i}", "from": "csms1", "originTo": f"+861320000000{i}", "status": "000000",
                       "createTime": "2024-11-22T03:05:00Z"})  # fmt: skip
    result.append({"smsMsgId": "h2-refused", "from": "csms1", "originTo": "+8613300000000", "status": "E200041",
                   "createTime": "2024-11-22T03:05:00Z"})  # fmt: skip
    assert harness.api("POST", "/v1/sent", json={"code": "000000", "result": result}).status_code == 200
    reports = [("h1-0", "DELIVRD", "02%3A10%3A10"), ("h1-1", "DELIVRD", "02%3A10%3A30"), ("h1-2", "UNDELIV", "02%3A11%3A00"),
               ("h2-0", "DELIVRD", "03%3A06%3A00")]  # fmt: skip
    for sms_msg_id, status, time in reports:
        body = f"smsMsgId={sms_msg_id}&status={status}&source=2&updateTime=2024-11-22T{time}Z"
        assert harness.post("status-report", body).status_code == 200
    body = "smsMsgId=r1&from=%2B8613100000000&to=csms1&body=ok&createTime=2024-11-22T02%3A30%3A00Z"
    assert harness.post("uplink", body).status_code == 200
    body = "smsMsgId=r2&from=%2B8613100000001&to=csms1&body=T&createTime=2024-11-22T02%3A40%3A00Z"
    assert harness.post("uplink", body).status_code == 200
    harness.settle()

def test_delivery_hourly(harness: Harness) -> None:
    sends(harness)
    rows = harness.rows(
        "SELECT bucket, sent, delivered, failed, pending, delivery_rate, latency_p50_seconds, latency_p99_seconds "
        "FROM dashboard_delivery_hourly ORDER BY bucket"
    )
    assert [r[:6] for r in rows] == [
        (HOUR_1, 4, 2, 1, 1, pytest.approx(0.5)),
        (HOUR_2, 3, 1, 1, 1, pytest.approx(1 / 3)),
    ]
    assert rows[0][6] == pytest.approx(20.0)  # latencies 10 s and 30 s
    assert rows[1][7] == pytest.approx(60.0)
    daily = harness.rows("SELECT sent, delivered, failed, pending FROM dashboard_delivery_daily")
    assert daily == [(7, 3, 2, 2)]

def test_failures_and_replies(harness: Harness) -> None:
    sends(harness)
    assert harness.rows("SELECT bucket, status, source, reports FROM dashboard_failures_hourly") == [
        (HOUR_1, "UNDELIV", "2", 1)
    ]
    assert harness.rows("SELECT status, sum(reports)::int FROM dashboard_reports_hourly GROUP BY 1 ORDER BY 1") == [
        ("DELIVRD", 3),
        ("UNDELIV", 1),
    ]
    assert harness.rows("SELECT replies, linked, ambiguous FROM dashboard_replies_hourly") == [(2, 2, 0)]
    assert harness.rows("SELECT unsubscribed_by_reply, blacklisted_by_platform FROM dashboard_optouts_hourly") == [
        (1, 0)
    ]

def test_readonly_role_reads_and_changes_nothing(harness: Harness) -> None:
    sends(harness)
    login = f"dash_{uuid.uuid4().hex[:8]}"

    async def check() -> None:
        admin = await asyncpg.connect(harness.url)
        try:
            await admin.execute(f"CREATE ROLE {login} LOGIN IN ROLE receiver_readonly")
        finally:
            await admin.close()
        url = harness.url.replace("postgresql://postgres", f"postgresql://{login}", 1)
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT sum(sent) FROM dashboard_delivery_hourly") == 7
            assert await conn.fetchval("SELECT count(*) FROM status_reports") == 4
            assert await conn.fetchval("SELECT name FROM applications") == "shop"
            assert await conn.fetchval("SELECT count(*) FROM blacklist") == 1
            assert await conn.fetchval("SELECT sum(unsubscribed_by_reply) FROM dashboard_optouts_hourly") == 1
            for statement in (
                "DELETE FROM status_reports",
                "UPDATE message_states SET state = 'delivered'",
                "INSERT INTO sent_messages (sms_msg_id, \"to\", status, create_time, raw) VALUES ('x','y','z',now(),'{}')",
                "SELECT token_hash FROM applications",
                "SELECT * FROM api_keys",
                "CREATE TABLE mine (a int)",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(statement)
        finally:
            await conn.close()
            admin = await asyncpg.connect(harness.url)
            try:
                await admin.execute(f"DROP OWNED BY {login}; DROP ROLE {login}")
            finally:
                await admin.close()

    run(check())

def test_bucket_filters_use_the_hour_indexes(harness: Harness) -> None:
    sends(harness)

    async def plans() -> list[str]:
        conn = await asyncpg.connect(harness.url)
        try:
            await conn.execute("SET enable_seqscan = off")
            found = []
            for view in ("dashboard_delivery_hourly", "dashboard_failures_hourly", "dashboard_replies_hourly",
                         "dashboard_optouts_hourly"):
                rows = await conn.fetch(f"EXPLAIN SELECT * FROM {view} WHERE bucket >= $1 AND bucket < $2",
                                        HOUR_1, HOUR_2)  # fmt: skip
                found.append("\n".join(r[0] for r in rows))
            return found
        finally:
            await conn.close()

    for plan in run(plans()):
        assert "hour" in plan and "Index" in plan, plan


def test_every_grafana_panel_query_runs_on_the_views(harness: Harness) -> None:
    import json
    import re
    from pathlib import Path

    sends(harness)
    dashboard = json.loads(Path("dashboards/grafana-receiver.json").read_text())
    queries = [t["rawSql"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(queries) == len(dashboard["panels"]) >= 8

    async def run_all() -> list[int]:
        conn = await asyncpg.connect(harness.url)
        try:
            counts = []
            for sql in queries:
                concrete = re.sub(
                    r"\$__timeFilter\((\w+)\)", r"\1 BETWEEN '2024-11-22T00:00:00Z' AND 'infinity'", sql
                )
                assert "$" not in concrete, concrete
                counts.append(len(await conn.fetch(concrete)))
            return counts
        finally:
            await conn.close()

    counts = run(run_all())
    assert all(n >= 1 for n in counts), counts
