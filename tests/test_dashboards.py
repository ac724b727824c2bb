"""Dashboard views over time buckets, and the read-only role dashboards connect as."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import grafana_panels as panels
import pytest
from support import Harness, plan_nodes, run

from receiver.blacklist import store as blacklist_store
from receiver.config import Settings
from receiver.correlation import sweep

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
    # to the number that replies "T" at 02:40: a send after an opt-out
    result.append({"smsMsgId": "h2-optout", "from": "csms1", "originTo": "+8613100000001", "status": "000000",
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
    run(_date_and_sweep(harness.url))


async def _date_and_sweep(url: str) -> None:
    """What HTTP cannot carry: the replies received when they were written;
    then the clock's part: the 2024 sends still pending are long past their report window."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("UPDATE uplinks SET received_at = create_time")
        async with conn.transaction():
            await blacklist_store.rebuild(conn, blacklist_store.Config.of(Settings()))
        await sweep.sweep_unreported(conn, Settings().report_window)
    finally:
        await conn.close()

def test_delivery_hourly(harness: Harness) -> None:
    sends(harness)
    rows = harness.rows(
        "SELECT bucket, sent, delivered, failed, pending, unreported, delivery_rate, latency_p50_seconds,"
        " latency_p99_seconds FROM dashboard_delivery_hourly ORDER BY bucket"
    )
    assert [r[:7] for r in rows] == [
        (HOUR_1, 4, 2, 1, 0, 1, pytest.approx(0.5)),
        (HOUR_2, 4, 1, 1, 0, 2, pytest.approx(1 / 4)),
    ]
    assert rows[0][7] == pytest.approx(20.0)  # latencies 10 s and 30 s
    assert rows[1][8] == pytest.approx(60.0)
    daily = harness.rows("SELECT sent, delivered, failed, pending, unreported FROM dashboard_delivery_daily")
    assert daily == [(8, 3, 2, 0, 3)]


def test_sends_after_an_optout(harness: Harness) -> None:
    sends(harness)
    view = "SELECT bucket, sms_msg_id, \"to\", source, reason, blacklisted_at, after FROM dashboard_sends_after_optout"
    assert harness.rows(view) == [
        (HOUR_2, "h2-optout", "+8613100000001", "keyword", "replied 'T'", HOUR_1 + timedelta(minutes=40),
         timedelta(minutes=25))
    ]  # fmt: skip

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

def test_replies_by_how_they_were_linked(harness: Harness) -> None:
    """Per hour and rule: replies and the ambiguous ones among them; unlinked ones by reason."""
    sends(harness)  # r1 and r2: each to csms1, the channel its send went from
    more = {"result": [{"smsMsgId": f"n{i}", "from": "csms9", "originTo": "+8613400000000", "status": "000000",
                        "createTime": f"2024-11-22T02:0{i}:00Z"} for i in (1, 2)]}  # fmt: skip
    assert harness.api("POST", "/v1/sent", json=more).status_code == 200
    for sms_msg_id, sender, when in (("r3", "8613400000000", "02%3A50"), ("r4", "8613500000000", "03%3A10")):
        body = f"smsMsgId={sms_msg_id}&from=%2B{sender}&to=10691002019&body=ok&createTime=2024-11-22T{when}%3A00Z"
        assert harness.post("uplink", body).status_code == 200
    rows = harness.rows(
        "SELECT bucket, match, unlinked_reason, replies, ambiguous FROM dashboard_reply_matches_hourly ORDER BY 1, 2"
    )
    assert rows == [(HOUR_1, "channel", None, 2, 0), (HOUR_1, "number", None, 1, 1), (HOUR_2, "unlinked", "no_send", 1, 0)]
    assert harness.rows("SELECT sum(replies - linked)::int FROM dashboard_replies_hourly") == [(1,)]


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
            assert await conn.fetchval("SELECT sum(sent) FROM dashboard_delivery_hourly") == 8
            assert await conn.fetchval("SELECT count(*) FROM dashboard_sends_after_optout") == 1
            assert await conn.fetchval("SELECT count(*) FROM status_reports") == 4
            assert await conn.fetchval("SELECT name FROM applications") == "shop"
            assert await conn.fetchval("SELECT count(*) FROM blacklist") == 1
            assert await conn.fetchval("SELECT sum(unsubscribed_by_reply) FROM dashboard_optouts_hourly") == 1
            assert await conn.fetchval("SELECT sum(replies) FROM dashboard_reply_matches_hourly") == 2
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
                         "dashboard_optouts_hourly", "dashboard_reply_matches_hourly"):
                rows = await conn.fetch(f"EXPLAIN SELECT * FROM {view} WHERE bucket >= $1 AND bucket < $2",
                                        HOUR_1, HOUR_2)  # fmt: skip
                found.append("\n".join(r[0] for r in rows))
            return found
        finally:
            await conn.close()

    for plan in run(plans()):
        assert "hour" in plan and "Index" in plan, plan


def test_every_grafana_panel_query_runs_on_the_views(harness: Harness) -> None:
    """The dashboard's panel queries, expanded and run as Grafana runs them, read the way Grafana
    reads them."""
    sends(harness)
    dashboard = panels.load()
    data = run(panels.query(harness.url, dashboard, HOUR_1, datetime.now(UTC) + timedelta(hours=1)))
    assert len(data) == len(dashboard["panels"]) >= 8
    by_title = {(d.panel["type"], d.panel["title"]): d for d in data}
    assert all(d.frames and d.frames[0].rows for d in data), [
        d.panel["title"] for d in data if not d.frames[0].rows
    ]
    assert "$" not in "".join(f.sql for d in data for f in d.frames)

    [(name, rate)] = panels.stat_values(by_title["stat", "Delivery rate"].frames)
    assert name == "delivery rate" and rate is not None and math.isclose(rate, 3 / 8)
    counts = panels.stat_values(by_title["stat", "Sent / delivered / failed / pending / unreported"].frames)
    assert counts == [("sent", 8), ("delivered", 3), ("failed", 2), ("pending", 0), ("unreported", 3)]
    outcome = panels.series(by_title["timeseries", "Messages by outcome (per hour sent)"].frames[0])
    assert [(s.name, s.times, s.values) for s in outcome] == [
        ("delivered", [HOUR_1, HOUR_2], [2, 1]),
        ("failed", [HOUR_1, HOUR_2], [1, 1]),
        ("pending", [HOUR_1, HOUR_2], [0, 0]),
        ("unreported", [HOUR_1, HOUR_2], [1, 2]),
    ]
    assert panels.stat_values(by_title["stat", "Sends after an opt-out"].frames) == [("sends after an opt-out", 1)]
    optout_sends = by_title["table", "Sends after an opt-out: the newest 25 (times UTC)"].frames[0]
    assert optout_sends.rows == [
        ("2024-11-22 03:05", "+8613100000001", "csms1", "keyword", "replied 'T'", "2024-11-22 02:40")
    ]
    [by_code] = panels.series(
        by_title["timeseries", "Failed reports by status code"].frames[0]
    )  # metric column
    assert (by_code.name, by_code.times, by_code.values) == ("UNDELIV", [HOUR_1], [1])
    table = by_title["table", "Failures by status code and source (1 SMS platform, 2 SMS center, 3 Huawei platform)"]
    assert table.frames[0].columns == ["status", "source", "reports"]
    assert table.frames[0].rows == [("UNDELIV", "2", 1)]
    optouts = {s.name: s.values for s in panels.series(by_title["timeseries", "Opt-outs"].frames[0])}
    assert optouts["unsubscribed_by_reply"] == [1]
    matches = panels.series(by_title["timeseries", "Replies by how they were linked"].frames[0])
    assert [(s.name, s.times, s.values) for s in matches] == [("channel", [HOUR_1], [2])]
    assert panels.stat_values(by_title["stat", "Replies"].frames) == [("replies", 2), ("unlinked", 0), ("ambiguous", 0)]

    # The time range is the one asked for: the hour before it is left out.
    later = run(panels.query(harness.url, dashboard, HOUR_2, HOUR_2 + timedelta(minutes=59)))
    assert panels.stat_values(later[1].frames)[0] == ("sent", 4)


def test_grafana_macros_expand_as_grafana_does_and_unknown_ones_are_refused() -> None:
    start, end = datetime(2024, 11, 21, 3, 15, 52, tzinfo=UTC), datetime(2024, 11, 22, 3, 15, 52, tzinfo=UTC)
    assert panels.expand(
        "SELECT 1 FROM v WHERE $__timeFilter(bucket) AND $__timeFrom() < $__timeTo()", start, end
    ) == (
        "SELECT 1 FROM v WHERE bucket BETWEEN '2024-11-21T03:15:52Z' AND '2024-11-22T03:15:52Z'"
        " AND '2024-11-21T03:15:52Z' < '2024-11-22T03:15:52Z'"
    )
    assert panels.expand("SELECT $__unixEpochFrom()", start, end) == f"SELECT {int(start.timestamp())}"
    for sql in ("SELECT $__timeGroupAlias(bucket, '1h')", "SELECT 1 WHERE channel = '$channel'",
                "SELECT ${DS_RECEIVER}", "SELECT $__interval"):  # fmt: skip
        with pytest.raises(panels.PanelError):
            panels.expand(sql, start, end)


def test_a_broken_panel_query_is_named(db_url: str) -> None:
    dashboard = panels.load()
    dashboard["panels"][3]["targets"][0]["rawSql"] = (
        "SELECT bucket AS time, delivred FROM dashboard_delivery_hourly WHERE $__timeFilter(bucket)"
    )
    with pytest.raises(panels.PanelError, match="Messages by outcome.*delivred"):
        run(panels.query(db_url, dashboard, HOUR_1, HOUR_2))


def test_a_day_of_replies_reads_its_hour_s_links_however_many_older_links_there_are(harness: Harness) -> None:
    """The replies of a busy day beside the links of a long history (in reply_links' default
    partition with them, their days having none): the view counts the hours' links by their
    hour's index, never by reading every link."""
    sends(harness)
    harness.settle()

    async def plan() -> tuple[list[tuple[str, int]], int]:
        conn = await asyncpg.connect(harness.url)
        try:
            await conn.execute("SET session_replication_role = replica")  # history, not news: no feed rows
            app = await conn.fetchval("SELECT id FROM applications LIMIT 1")
            await conn.execute(
                """INSERT INTO uplinks (id, application_id, sms_msg_id, "from", "to", body, raw_body, received_at)
                   OVERRIDING SYSTEM VALUE SELECT 10000000 + g, $1, 'busy-' || g, '+8613100000000', '10691002019', 'ok', '', t
                   FROM generate_series(1, 4000) g, LATERAL (SELECT $2::timestamptz + g * interval '0.9 second') AS s(t)""",
                app, HOUR_1,
            )  # fmt: skip
            await conn.execute(
                "INSERT INTO reply_links (uplink_id, sms_msg_id, candidates, match, uplink_received_at, reply_hour)"
                " SELECT id, 'm-' || (id - 10000000), 1, 'channel', received_at, reply_hour FROM uplinks"
                " WHERE id > 10000000"
                " UNION ALL SELECT -g, 'gone-' || g, 1, 'channel', t, date_trunc('hour', t) FROM generate_series(1, 160000) g,"
                " LATERAL (SELECT $1::timestamptz - interval '400 days' + g * interval '1 minute') AS s(t)",
                HOUR_1,
            )
            await conn.execute("RESET session_replication_role")
            await conn.execute("ANALYZE uplinks")
            await conn.execute("ANALYZE reply_links")
            sql = "SELECT * FROM dashboard_replies_hourly WHERE bucket >= $1 AND bucket < $2"
            nodes = await plan_nodes(conn, sql, HOUR_1, HOUR_2 + timedelta(hours=1), analyze=True)
            linked = await conn.fetchval(f"SELECT sum(linked)::int FROM ({sql}) AS v", HOUR_1, HOUR_2 + timedelta(hours=1))
            read = [(n["Relation Name"], n["Actual Rows"] + n.get("Rows Removed by Filter", 0) + n.get("Rows Removed by Index Recheck", 0))
                    for n in nodes if n.get("Actual Loops") and n.get("Relation Name", "").startswith("reply_links")]
            return read, linked
        finally:
            await conn.close()

    read, linked = run(plan())
    assert linked == 4002  # the busy day's and the two replies of sends()
    assert read and 4002 <= sum(rows for _, rows in read) < 5000, read  # the hours' links, not the 160,000 before

