"""Unreported messages: no final report once the report window has passed.

The rule (``delivery_rule.derive`` with a clock), the sweep that stores it (its boundary, idempotence,
concurrent sweepers, a window made longer), late reports, every order of reports, send and
sweeps, what the API, the event feed, the dashboard views and the metrics show, on a real
PostgreSQL.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from delivery_rule import Report, Sent, derive
from support import Harness, fetch, run, samples, serving, value

from receiver import applications, metrics
from receiver.config import Settings
from receiver.correlation import queries, sweep
from receiver.correlation import store as correlation
from receiver.correlation.sent import SentMessage
from receiver.correlation.state import REPORT_WINDOW
from receiver.protocol import StatusReport
from receiver.records import ReportRecord
from receiver.writer import store

T0 = datetime(2026, 1, 1, tzinfo=UTC)
WINDOW = timedelta(hours=72)
TICK = timedelta(microseconds=1)  # PostgreSQL's resolution


# --- the rule -------------------------------------------------------------------------------------

RULES = [
    ("just before the window ends", Sent(create_time=T0), [], T0 + WINDOW - TICK, "pending"),
    ("exactly when the window ends", Sent(create_time=T0), [], T0 + WINDOW, "unreported"),
    ("long after", Sent(create_time=T0), [], T0 + timedelta(days=30), "unreported"),
    ("no clock given", Sent(create_time=T0), [], None, "pending"),
    ("delivered stays delivered", Sent(create_time=T0), [Report("DELIVRD", 1, 1, T0)], T0 + 2 * WINDOW, "delivered"),
    ("failed stays failed", Sent(create_time=T0), [Report("UNDELIV", 1, 1, T0)], T0 + 2 * WINDOW, "failed"),
    ("refused by the send API", Sent("E200041", create_time=T0), [], T0 + 2 * WINDOW, "failed"),
    ("one of two parts delivered", Sent(total=2, create_time=T0), [Report("DELIVRD", 1, 2, T0)], T0 + WINDOW,
     "unreported"),
    ("a late report, after the window", Sent(create_time=T0), [Report("DELIVRD", 1, 1, T0 + 2 * WINDOW)],
     T0 + 3 * WINDOW, "delivered"),
    ("reports alone: no createTime, no window", None, [Report("DELIVRD", 1, 2, T0)], T0 + 9 * WINDOW, "pending"),
]  # fmt: skip


@pytest.mark.parametrize(("sent", "reports", "now", "state"), [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_rules(sent: Sent | None, reports: list[Report], now: datetime | None, state: str) -> None:
    assert derive(sent, reports, now=now).state == state


def test_the_window_is_a_setting() -> None:
    assert Settings().report_window == REPORT_WINDOW == WINDOW
    assert Settings().stuck_pending_after == timedelta(minutes=10)
    for text, expected in (("172800", timedelta(hours=48)), ("P3D", timedelta(days=3)), ("PT10M", timedelta(minutes=10))):
        assert Settings(report_window=text).report_window == expected  # type: ignore[arg-type]
        assert Settings(stuck_pending_after=text).stuck_pending_after == expected  # type: ignore[arg-type]
    for bad in ("0", "-3600", "72 hours"):
        with pytest.raises(ValueError):
            Settings(stuck_pending_after=bad)  # type: ignore[arg-type]
    sent = Sent(create_time=T0)
    assert derive(sent, [], now=T0 + timedelta(hours=1), window=timedelta(hours=1)).state == "unreported"


# --- the sweep, on a real PostgreSQL ----------------------------------------------------------------


async def _app(conn: asyncpg.Connection) -> int:
    app, _ = await applications.create(conn, f"app-{uuid.uuid4().hex[:8]}", ["csms1"])
    return app.id


async def _register(conn: asyncpg.Connection, sms_msg_id: str, created: datetime, total: int = 1) -> None:
    message = SentMessage(sms_msg_id, "+8613100000000", "csms1", "000000", created, "CN", total, None, None, None,
                          None, {})  # fmt: skip
    async with conn.transaction():
        await correlation.register_sent(conn, [message], "tests", window=WINDOW)


async def _report(conn: asyncpg.Connection, app_id: int, sms_msg_id: str, report: Report) -> None:
    event = StatusReport(sms_msg_id, report.status, report.total, report.sequence, update_time=report.update_time)
    await store(conn, [ReportRecord(app_id, "form", T0, "raw", event)], after_insert=(correlation.after_insert_hook(WINDOW),))


async def _stored(conn: asyncpg.Connection, sms_msg_id: str) -> str:
    return str(await conn.fetchval("SELECT state FROM message_states WHERE sms_msg_id = $1", sms_msg_id))


async def _shown(conn: asyncpg.Connection, sms_msg_id: str, now: datetime) -> str:
    found = await queries.message(conn, sms_msg_id, now=now)
    assert found is not None
    return str(found.state)


def test_the_sweep_marks_at_the_boundary_and_only_once(db_url: str) -> None:
    async def go() -> list[object]:
        conn = await asyncpg.connect(db_url)
        try:
            await _register(conn, "m1", T0)
            before = metrics.UNREPORTED._value.get()
            early = await sweep.sweep_unreported(conn, WINDOW, T0 + WINDOW - TICK)
            state_early = await _stored(conn, "m1")
            due = await sweep.sweep_unreported(conn, WINDOW, T0 + WINDOW)
            again = await sweep.sweep_unreported(conn, WINDOW, T0 + 2 * WINDOW)
            counted = metrics.UNREPORTED._value.get() - before
            events = await conn.fetch("SELECT state AS s, previous AS p FROM events "
                                      "WHERE kind = 'state' ORDER BY id")  # fmt: skip
            return [early, state_early, due, await _stored(conn, "m1"), again, counted,
                    [(e["s"], e["p"]) for e in events]]  # fmt: skip
        finally:
            await conn.close()

    early, state_early, due, state_due, again, counted, events = run(go())
    assert (early, state_early) == (sweep.Swept(), "pending")
    assert (due, state_due) == (sweep.Swept(unreported=1), "unreported")
    assert again == sweep.Swept()  # nothing left to move: no second event, no second count
    assert counted == 1
    assert events == [("pending", None), ("unreported", "pending")]


def test_a_late_report_moves_an_unreported_message_and_a_partial_one_does_not_reopen_it(db_url: str) -> None:
    async def go() -> list[str]:
        conn = await asyncpg.connect(db_url)
        try:
            app_id = await _app(conn)
            await _register(conn, "late", T0)
            await _register(conn, "half", T0, total=2)
            await sweep.sweep_unreported(conn, WINDOW, T0 + WINDOW)
            states = [await _stored(conn, "late"), await _stored(conn, "half")]
            await _report(conn, app_id, "late", Report("DELIVRD", 1, 1, T0 + WINDOW + timedelta(hours=1)))
            await _report(conn, app_id, "half", Report("DELIVRD", 1, 2, T0 + WINDOW + timedelta(hours=1)))
            return [*states, await _stored(conn, "late"), await _stored(conn, "half")]
        finally:
            await conn.close()

    assert run(go()) == ["unreported", "unreported", "delivered", "unreported"]


# Every order of: the send, the reports, a sweep past the window. The stored state after a last
# sweep, and the state the API shows after every step, are the rule's.
CASES = [
    ("no report", [], "unreported"),
    ("one part of two delivered", [Report("DELIVRD", 1, 2, T0)], "unreported"),
    ("both parts delivered, one late", [Report("DELIVRD", 1, 2, T0), Report("DELIVRD", 2, 2, T0 + 2 * WINDOW)],
     "delivered"),
    ("a part failed late", [Report("DELIVRD", 1, 2, T0), Report("EXPIRED", 2, 2, None)], "failed"),
]  # fmt: skip


@pytest.mark.parametrize(("reports", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_reports_send_and_sweeps_in_every_order(db_url: str, reports: list[Report], expected: str) -> None:
    now = T0 + 3 * WINDOW
    steps: list[Any] = ["send", "sweep", *reports]

    async def go() -> list[tuple[tuple[str, ...], str, list[tuple[str, str]]]]:
        conn = await asyncpg.connect(db_url)
        results = []
        try:
            app_id = await _app(conn)
            for order in itertools.permutations(steps):
                sms_msg_id = f"m-{uuid.uuid4().hex}"
                stored: list[Report] = []
                shown = []  # (the API's state, the rule's for what is stored) after each step
                for step in order:
                    if step == "send":
                        await _register(conn, sms_msg_id, T0, total=2)
                    elif step == "sweep":
                        await sweep.sweep_unreported(conn, WINDOW, now)
                    else:
                        await _report(conn, app_id, sms_msg_id, step)
                        stored.append(step)
                    if await conn.fetchval("SELECT sent FROM message_states WHERE sms_msg_id = $1", sms_msg_id):
                        rule = derive(Sent(total=2, create_time=T0), stored, now=now).state
                        shown.append((await _shown(conn, sms_msg_id, now), rule))
                await sweep.sweep_unreported(conn, WINDOW, now)
                labels = tuple(s if isinstance(s, str) else f"report {s.sequence}" for s in order)
                results.append((labels, await _stored(conn, sms_msg_id), shown))
        finally:
            await conn.close()
        return results

    assert derive(Sent(total=2, create_time=T0), reports, now=now).state == expected
    for order, stored, shown in run(go()):
        assert stored == expected, order
        # once registered, the API shows the rule for the reports stored so far, swept or not
        assert all(api == rule for api, rule in shown), (order, shown)
        assert shown[-1][0] == expected


def test_concurrent_sweepers_move_each_message_once(db_url: str) -> None:
    async def go() -> tuple[list[sweep.Swept], int, int]:
        conn = await asyncpg.connect(db_url)
        try:
            ids = [f"c-{i}" for i in range(600)]
            await conn.execute(
                """INSERT INTO sent_messages (sms_msg_id, "to", "from", status, create_time, raw)
                   SELECT id, '+8613100000000', 'csms1', '000000', $2, '{}' FROM unnest($1::text[]) AS id""",
                ids, T0,
            )  # fmt: skip
            async with conn.transaction():
                await correlation.refresh_states(conn, ids)
        finally:
            await conn.close()
        conns = [await asyncpg.connect(db_url) for _ in range(3)]
        try:
            swept = await asyncio.gather(
                *(sweep.sweep_unreported(c, WINDOW, T0 + WINDOW, batch=50) for c in conns)
            )
            again = await sweep.sweep_unreported(conns[0], WINDOW, T0 + WINDOW)
            assert again.unreported == 600 - sum(s.unreported for s in swept)  # a skipped sweeper left the rest
            states = await conns[0].fetchval("SELECT count(*) FROM message_states WHERE state = 'unreported'")
            events = await conns[0].fetchval("SELECT count(*) FROM events WHERE state = 'unreported'")
            return list(swept), states, events
        finally:
            for c in conns:
                await c.close()

    swept, states, events = run(go())
    assert (states, events) == (600, 600)
    assert any(s.unreported for s in swept)


def test_the_sweep_waits_for_a_refresh_of_its_messages_and_moves_only_what_is_still_due(db_url: str) -> None:
    """A state refresh holds its messages' locks from reading their stored states to writing
    them, and announces its change from the state it read: a sweep that moved one of them in
    between would leave a second, wrong announcement. So the sweep takes the locks too."""

    async def go() -> tuple[str, sweep.Swept, str, list[tuple[str, str | None]]]:
        conn, writing, reading = [await asyncpg.connect(db_url) for _ in range(3)]
        try:
            await _register(conn, "m1", T0)
            await _register(conn, "m2", T0)
            async with writing.transaction():
                await correlation.lock_messages(writing, ["m1"])  # as a refresh of m1 does first
                swept = asyncio.ensure_future(sweep.sweep_unreported(conn, WINDOW, T0 + WINDOW))
                await asyncio.sleep(0.3)
                during = await _stored(reading, "m1")
                # the refresh settles m1 (its last report came in) before it lets go
                await writing.execute("UPDATE message_states SET state = 'delivered' WHERE sms_msg_id = 'm1'")
            result = await swept
            events = await reading.fetch("SELECT state, previous FROM events WHERE sms_msg_id = 'm1' ORDER BY id")
            return during, result, await _stored(reading, "m2"), [(e["state"], e["previous"]) for e in events]
        finally:
            for c in (conn, writing, reading):
                await c.close()

    during, result, other, events = run(go())
    assert during == "pending"  # not moved while the refresh held it
    assert (result, other) == (sweep.Swept(unreported=1), "unreported")  # m2 alone: m1 was no longer due
    assert events == [("pending", None)]  # and no announcement of a move that did not stay


def test_a_longer_window_makes_them_pending_again(db_url: str) -> None:
    async def go() -> list[object]:
        conn = await asyncpg.connect(db_url)
        try:
            await _register(conn, "m1", T0)
            now = T0 + WINDOW + timedelta(hours=1)
            first = await sweep.sweep_unreported(conn, WINDOW, now)
            longer = await sweep.sweep_unreported(conn, 2 * WINDOW, now)
            return [first, longer, await _stored(conn, "m1")]
        finally:
            await conn.close()

    assert run(go()) == [sweep.Swept(unreported=1), sweep.Swept(reopened=1), "pending"]


# --- what users see -----------------------------------------------------------------------------


def _send(h: Harness, sms_msg_id: str, created: datetime, channel: str = "csms100000001") -> None:
    item = {"smsMsgId": sms_msg_id, "from": channel, "originTo": "+8613100000001", "status": "000000",
            "createTime": created.strftime("%Y-%m-%dT%H:%M:%SZ")}  # fmt: skip
    assert h.api("POST", "/v1/sent", json={"code": "000000", "result": [item]}).status_code == 200


def test_the_api_shows_unreported_before_and_after_the_sweep(harness: Harness) -> None:
    now = datetime.now(UTC)
    _send(harness, "old", now - WINDOW - timedelta(minutes=5))
    _send(harness, "young", now - WINDOW + timedelta(minutes=5))
    _send(harness, "delivered", now - WINDOW - timedelta(minutes=5))
    body = "smsMsgId=delivered&status=DELIVRD&source=2"
    assert harness.post("status-report", body).status_code == 200

    def states() -> dict[str, str]:
        return {m: harness.api("GET", f"/v1/messages/{m}").json()["state"] for m in ("old", "young", "delivered")}

    def listed(state: str) -> list[str]:
        response = harness.api("GET", "/v1/messages", params={"state": state})
        assert response.status_code == 200
        return [m["sms_msg_id"] for m in response.json()["messages"]]

    expected = {"old": "unreported", "young": "pending", "delivered": "delivered"}
    assert harness.rows("SELECT sms_msg_id FROM message_states WHERE state = 'unreported'") == []  # not swept yet
    assert states() == expected
    assert (listed("unreported"), listed("pending")) == (["old"], ["young"])
    run(_sweep(harness.url))
    assert harness.rows("SELECT sms_msg_id FROM message_states WHERE state = 'unreported'") == [("old",)]
    assert states() == expected
    assert (listed("unreported"), listed("pending")) == (["old"], ["young"])
    bad = harness.api("GET", "/v1/messages", params={"state": "lost"})
    assert bad.status_code == 400
    assert "unreported" in bad.json()["detail"]["allowed"]

    events = harness.api("GET", "/v1/events", params={"kinds": "state"}).json()["events"]
    assert [(e["sms_msg_id"], e["data"]["state"], e["data"]["previous"]) for e in events][-1] == (
        "old", "unreported", "pending")  # fmt: skip


async def _sweep(url: str, window: timedelta = WINDOW) -> sweep.Swept:
    conn = await asyncpg.connect(url)
    try:
        return await sweep.sweep_unreported(conn, window)
    finally:
        await conn.close()


def test_dashboard_views_count_unreported(harness: Harness) -> None:
    hour = datetime(2024, 11, 22, 2, tzinfo=UTC)
    for i in range(3):
        _send(harness, f"d{i}", hour + timedelta(minutes=10))
    assert harness.post("status-report", "smsMsgId=d0&status=DELIVRD&source=2").status_code == 200
    run(_sweep(harness.url))
    view = "SELECT bucket, sent, delivered, pending, unreported FROM dashboard_delivery_hourly"
    assert harness.rows(view) == [(hour, 3, 1, 0, 2)]
    assert harness.rows("SELECT sent, pending, unreported FROM dashboard_delivery_daily") == [(3, 0, 2)]


def test_stuck_pending_gauge_by_application_and_channel(harness: Harness) -> None:
    now = datetime.now(UTC)
    _send(harness, "fresh", now - timedelta(minutes=2))
    _send(harness, "stuck-1", now - timedelta(minutes=20))
    _send(harness, "stuck-2", now - timedelta(hours=30))
    _send(harness, "elsewhere", now - timedelta(minutes=20), channel="csms999")
    _send(harness, "gone", now - WINDOW - timedelta(minutes=1))  # unreported: not stuck any more
    _send(harness, "done", now - timedelta(minutes=20))
    assert harness.post("status-report", "smsMsgId=done&status=DELIVRD&source=2").status_code == 200
    harness.settle()
    text = harness.client.get("/metrics").text
    name = "receiver_messages_stuck_pending"
    assert value(text, name, application="shop", channel="csms100000001") == 2
    assert value(text, name, application="", channel="csms999") == 1
    assert sum(v for (n, _), v in samples(text).items() if n == name) == 3


def test_the_stuck_pending_age_is_a_setting(db_url: str, tmp_path: Path) -> None:
    with serving(db_url, tmp_path, stuck_pending_after="PT1H") as h:
        now = datetime.now(UTC)
        _send(h, "a", now - timedelta(minutes=20))
        _send(h, "b", now - timedelta(minutes=90))
        h.settle()
        text = h.client.get("/metrics").text
        assert value(text, "receiver_messages_stuck_pending", application="shop", channel="csms100000001") == 1


def test_the_sweeper_runs_on_its_own(db_url: str, tmp_path: Path) -> None:
    with serving(db_url, tmp_path, sweep_interval_seconds=0.05) as h:
        _send(h, "old", datetime.now(UTC) - WINDOW - timedelta(minutes=1))
        deadline = datetime.now(UTC) + timedelta(seconds=10)
        while not h.rows("SELECT 1 FROM message_states WHERE state = 'unreported'"):
            assert datetime.now(UTC) < deadline, "no sweep ran"
        assert run(fetch(db_url, "SELECT count(*) FROM events WHERE state = 'unreported'"))[0][0] == 1
