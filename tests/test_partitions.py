"""Time partitions (docs/storage.md): the event tables are partitioned by UTC day and made ahead;
a report pushed again is stored once even when its copy lands in the next day's partition, in
either order and from two writers at once; a row of a day without a partition lands in the
default partition and moves into its day once that is made; a message whose send and reports
lie on both sides of midnight has one state, whatever the order; an existing database is
converted with its rows in place."""

from __future__ import annotations

import asyncio
import re
import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from support import cli, fetch, run, service_env

from receiver import partitions, retention
from receiver.correlation import queries
from receiver.correlation import store as correlation
from receiver.correlation.sent import SentMessage
from receiver.db import migrate
from receiver.protocol.events import StatusReport, Uplink
from receiver.records import ReportRecord, UplinkRecord
from receiver.writer import store

SQL = Path(__file__).resolve().parent.parent / "sql"
TODAY = datetime.now(UTC).date()
# A day boundary with a partition on either side (the migration makes a week ahead).
MIDNIGHT = datetime(TODAY.year, TODAY.month, TODAY.day, tzinfo=UTC) + timedelta(days=3)
BEFORE, AFTER = MIDNIGHT - timedelta(seconds=30), MIDNIGHT + timedelta(seconds=30)
HOOKS = (correlation.after_insert_hook(timedelta(hours=72)),)


async def _app(conn: asyncpg.Connection) -> int:
    app_id: int = await conn.fetchval(
        "INSERT INTO applications (name, token_hash) VALUES ('p', '\\x01') ON CONFLICT (name) DO UPDATE SET name = 'p'"
        " RETURNING id"
    )
    return app_id


def _report(app_id: int, sms_msg_id: str, at: datetime) -> ReportRecord:
    event = StatusReport(sms_msg_id, "DELIVRD", 1, 1, update_time=MIDNIGHT - timedelta(minutes=5))
    return ReportRecord(app_id, "form", at, "raw", event)


def _uplink(app_id: int, sms_msg_id: str, at: datetime) -> UplinkRecord:
    return UplinkRecord(app_id, at, "raw", Uplink(sms_msg_id, "+8613100000000", "csms1", "T"))


async def _stored(conn: asyncpg.Connection, table: str, like: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT sms_msg_id, received_at, tableoid::regclass::text AS part FROM {table} WHERE sms_msg_id LIKE $1"
        " ORDER BY sms_msg_id",
        like,
    )


def test_migrated_database_has_day_partitions_ahead(db_url: str) -> None:
    for table in partitions.TABLES:
        rows = run(fetch(db_url, "SELECT * FROM receiver_partitions($1::regclass)", table))
        names = {r["partition"] for r in rows}
        assert f"{table}_default" in names and f"{table}_older" not in names  # a new database's were empty
        for offset in range(-1, 8):  # yesterday to a week ahead
            assert partitions.name(table, TODAY + timedelta(days=offset)) in names


@pytest.mark.parametrize("order", [(BEFORE, AFTER), (AFTER, BEFORE)], ids=["before-first", "after-first"])
def test_a_copy_received_across_midnight_is_stored_once(db_url: str, order: tuple[datetime, datetime]) -> None:
    async def go() -> tuple[list[asyncpg.Record], list[asyncpg.Record], int]:
        conn = await asyncpg.connect(db_url)
        try:
            app_id = await _app(conn)
            for at in order:  # one batch each, as the platform's second push would come
                await store(conn, [_report(app_id, "mid-1", at), _uplink(app_id, "up-1", at)], HOOKS)
            # and once more both copies in one batch
            await store(conn, [_report(app_id, "mid-2", at) for at in order], HOOKS)
            events = await conn.fetchval("SELECT count(*) FROM events WHERE kind = 'report'")
            return await _stored(conn, "status_reports", "mid-%"), await _stored(conn, "uplinks", "up-%"), events
        finally:
            await conn.close()

    reports, uplinks, events = run(go())
    first = order[0]
    assert [(r["sms_msg_id"], r["received_at"]) for r in reports] == [("mid-1", first), ("mid-2", min(order))]
    assert [(r["sms_msg_id"], r["received_at"]) for r in uplinks] == [("up-1", first)]
    assert reports[0]["part"] == f"status_reports_{first:%Y%m%d}"  # the copy of the other day stayed out
    assert events == 2


def test_two_writers_storing_copies_either_side_of_midnight_store_each_report_once(db_url: str) -> None:
    async def go() -> tuple[int, int, int, int]:
        conns = [await asyncpg.connect(db_url) for _ in range(2)]
        try:
            app_id = await _app(conns[0])
            for round_ in range(5):
                ids = [f"con-{round_}-{i}" for i in range(50)]
                await asyncio.gather(
                    store(conns[0], [_report(app_id, i, BEFORE) for i in ids], HOOKS),
                    store(conns[1], [_report(app_id, i, AFTER) for i in reversed(ids)], HOOKS),
                )
            rows = await _stored(conns[0], "status_reports", "con-%")
            states = await conns[0].fetchval("SELECT count(*) FROM message_states WHERE sms_msg_id LIKE 'con-%'")
            events = await conns[0].fetchval(
                "SELECT count(*) FROM events WHERE kind = 'report' AND sms_msg_id LIKE 'con-%'"
            )
            return len(rows), len({r["sms_msg_id"] for r in rows}), states, events
        finally:
            for conn in conns:
                await conn.close()

    rows, distinct, states, events = run(go())
    assert rows == distinct == states == events == 250


def test_a_report_of_a_day_without_partition_lands_in_the_default_and_moves_when_its_day_is_made(
    db_url: str,
) -> None:
    ahead = MIDNIGHT + timedelta(days=40, hours=12)  # a worker's clock far ahead: no partition yet

    async def go() -> tuple[str, str, int, int]:
        conn = await asyncpg.connect(db_url)
        try:
            app_id = await _app(conn)
            await store(conn, [_report(app_id, "far-1", ahead)], HOOKS)
            (before,) = await _stored(conn, "status_reports", "far-1")
            assert await partitions.create(conn, "status_reports", ahead.date())
            assert not await partitions.create(conn, "status_reports", ahead.date())
            (after,) = await _stored(conn, "status_reports", "far-1")
            # stored again: still once; the event feed announced it once
            await store(conn, [_report(app_id, "far-1", ahead + timedelta(hours=1))], HOOKS)
            count = await conn.fetchval("SELECT count(*) FROM status_reports WHERE sms_msg_id = 'far-1'")
            events = await conn.fetchval("SELECT count(*) FROM events WHERE sms_msg_id = 'far-1' AND kind = 'report'")
            return before["part"], after["part"], count, events
        finally:
            await conn.close()

    assert run(go()) == ("status_reports_default", f"status_reports_{ahead:%Y%m%d}", 1, 1)


def test_ensure_makes_the_days_ahead_that_are_missing(db_url: str) -> None:
    async def go() -> tuple[date, int, int]:
        conn = await asyncpg.connect(db_url)
        try:
            # As the service keeps it today (the template may have been made before midnight).
            await partitions.ensure(conn)
            today = await conn.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")
            return today, await partitions.ensure(conn, days_ahead=10), await partitions.ensure(conn, days_ahead=10)
        finally:
            await conn.close()

    today, made, again = run(go())
    months = {(today + timedelta(days=n)).replace(day=1) for n in range(8, 11)}
    months -= {(today + timedelta(days=n)).replace(day=1) for n in range(-1, 8)}
    daily = len(partitions.TABLES) - len(partitions.MONTHLY)
    assert made == 3 * daily + len(months) * len(partitions.MONTHLY) and again == 0  # days 8 to 10; then nothing


# --- a message across midnight ---------------------------------------------------------------------


def _send(sms_msg_id: str, at: datetime) -> SentMessage:
    return SentMessage(sms_msg_id, "+8613100000000", "csms1", "000000", at, "CN", 2, None, None, None, None, {})


def _part(app_id: int, sms_msg_id: str, sequence: int, at: datetime) -> ReportRecord:
    event = StatusReport(sms_msg_id, "DELIVRD", total=2, sequence=sequence, update_time=at - timedelta(seconds=2))
    return ReportRecord(app_id, "form", at, "raw", event)


# A two-part message sent before midnight: part 1 reported before it, part 2 after it (and pushed
# again); the events come in these orders, one writer transaction each.
ACROSS = [
    ("send", "part1", "part2", "part2"),
    ("part2", "part1", "send", "part2"),
    ("part1", "part2", "part2", "send"),
    ("part2", "send", "part2", "part1"),
]


@pytest.mark.parametrize("order", ACROSS, ids=["-".join(o) for o in ACROSS])
def test_a_message_sent_before_midnight_and_reported_after_it_has_one_state(db_url: str, order: tuple[str, ...]) -> None:
    sent_at = BEFORE - timedelta(minutes=1)

    async def go() -> tuple[list[asyncpg.Record], list[asyncpg.Record], list[str]]:
        conn = await asyncpg.connect(db_url)
        try:
            app_id = await _app(conn)
            for event in order:
                if event == "send":
                    async with conn.transaction():
                        await correlation.register_sent(conn, [_send("across", sent_at)], "t", window=timedelta(hours=72))
                else:
                    at = BEFORE if event == "part1" else AFTER
                    await store(conn, [_part(app_id, "across", int(event[-1]), at)], HOOKS)
            states = await conn.fetch(
                "SELECT state, parts_delivered, reports, sent, message_at, tableoid::regclass::text AS part"
                " FROM message_states WHERE sms_msg_id = 'across'"
            )
            sends = await conn.fetch("SELECT tableoid::regclass::text AS part FROM sent_messages")
            events = await conn.fetchval(
                "SELECT array_agg(state ORDER BY id) FROM events WHERE kind = 'state' AND sms_msg_id = 'across'"
            )
            return states, sends, events
        finally:
            await conn.close()

    states, sends, events = run(go())
    day = f"{BEFORE:%Y%m%d}"
    assert [tuple(r) for r in states] == [("delivered", 2, 2, True, sent_at, f"message_states_{day}")]
    assert [r["part"] for r in sends] == [f"sent_messages_{day}"]
    assert events[-1] == "delivered" and events.count("delivered") == 1


def test_a_send_registered_again_on_the_next_day_is_stored_once(db_url: str) -> None:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(db_url)
        try:
            for at in (BEFORE, AFTER, BEFORE):  # the same send, its createTime as each registration says
                async with conn.transaction():
                    await correlation.register_sent(conn, [_send("twice", at)], "t", window=timedelta(hours=72))
            return await conn.fetch("SELECT create_time FROM sent_messages WHERE sms_msg_id = 'twice'")
        finally:
            await conn.close()

    assert [r["create_time"] for r in run(go())] == [BEFORE]


# --- converting a database that holds rows --------------------------------------------------------

BEFORE_016 = """
INSERT INTO applications (name, token_hash) VALUES ('app', '\\x02');
INSERT INTO status_reports (application_id, sms_msg_id, status, raw_body, via, received_at, dedupe_key)
SELECT 1, 'old-' || i, 'DELIVRD', 'raw', 'form', now() - i * interval '1 day', decode(md5('k' || i), 'hex')
FROM generate_series(1, 3) AS i;
INSERT INTO uplinks (application_id, sms_msg_id, "from", "to", body, raw_body, received_at, from_e164)
VALUES (1, 'up-old', '+8613100000000', 'csms1', 'T', 'raw', now() - interval '1 day', '+8613100000000');
INSERT INTO reply_links (uplink_id, sms_msg_id, candidates, match) SELECT id, 'old-1', 1, 'channel' FROM uplinks;
INSERT INTO quarantine (record_id, endpoint, error, raw_body, received_at)
VALUES ('00000000-0000-0000-0000-000000000001', 'status-report', 'bad', '\\x00', now());
INSERT INTO sent_messages (sms_msg_id, "to", "from", status, create_time, raw)
VALUES ('old-1', '+8613100000000', 'csms1', '000000', now() - interval '1 day 1 minute', '{}');
INSERT INTO message_states (sms_msg_id, state, status, parts_total, parts_delivered, reports, sent, sent_at)
VALUES ('old-1', 'delivered', 'DELIVRD', 1, 1, 1, true, now() - interval '1 day 1 minute');
INSERT INTO sends_after_optout (sms_msg_id, "to", "from", sent_at)
VALUES ('old-1', '+8613100000000', 'csms1', now() - interval '1 day 1 minute');
"""


def test_a_database_with_rows_is_converted_in_place(empty_db_url: str, tmp_path: Path) -> None:
    older = tmp_path / "sql"
    shutil.copytree(SQL, older, ignore=shutil.ignore_patterns("__init__.py", "__pycache__", "01[6-9]_*", "0[2-9][0-9]_*"))

    async def go() -> dict[str, object]:
        conn = await asyncpg.connect(empty_db_url)
        try:
            await migrate.apply(conn, older)
            await conn.execute(BEFORE_016)
            feed_before = await conn.fetch("SELECT kind, sms_msg_id FROM events ORDER BY txid, id")
            await migrate.apply(conn)
            app_id = await _app(conn)
            out: dict[str, object] = {
                "parts": await conn.fetchval(
                    "SELECT array_agg(DISTINCT tableoid::regclass::text) FROM (SELECT tableoid FROM status_reports"
                    " UNION ALL SELECT tableoid FROM uplinks UNION ALL SELECT tableoid FROM quarantine) t"
                ),
                "message_parts": await conn.fetchval(
                    "SELECT array_agg(DISTINCT tableoid::regclass::text) FROM (SELECT tableoid FROM sent_messages"
                    " UNION ALL SELECT tableoid FROM message_states UNION ALL SELECT tableoid FROM sends_after_optout) t"
                ),
                "message": await queries.message(conn, "old-1"),
                "events": await conn.fetch(
                    "SELECT kind, sms_msg_id FROM events WHERE report_received_at IS NOT NULL OR kind <> 'report'"
                    " ORDER BY txid, id"
                ),
                "feed_before": feed_before,
                "view": await conn.fetchval("SELECT sum(reports) FROM dashboard_reports_hourly"),
                "replies": await conn.fetchval("SELECT sum(linked) FROM dashboard_replies_hourly"),
                "links": await conn.fetch(
                    "SELECT l.tableoid::regclass::text AS part, l.uplink_received_at = u.received_at AS on_its_day,"
                    " (SELECT array_agg(day) FROM reply_index i WHERE i.sms_msg_id = l.sms_msg_id) AS days"
                    " FROM reply_links l JOIN uplinks u ON u.id = l.uplink_id"
                ),
                "granted": await conn.fetchval(
                    "SELECT bool_and(has_table_privilege('receiver_readonly', t, 'SELECT')) FROM unnest($1::text[]) AS t",
                    ["status_reports", "dashboard_reports_hourly", "reply_links", "reply_index",
                     "dashboard_replies_hourly", "dashboard_reply_matches_hourly"],
                ),
            }
            # ids go on from where they were; a new report is announced in the feed
            await store(conn, [_report(app_id, "new-1", datetime.now(UTC))], HOOKS)
            out["ids"] = await conn.fetchval("SELECT array_agg(id ORDER BY id) FROM status_reports")
            # a new report of a message from before: its state is brought up to date where it is
            await store(conn, [_report(app_id, "old-1", datetime.now(UTC))], HOOKS)
            out["old_state"] = await conn.fetch(
                "SELECT state, reports, tableoid::regclass::text AS part FROM message_states WHERE sms_msg_id = 'old-1'"
            )
            out["new_event"] = await conn.fetchval(
                "SELECT count(*) FROM events WHERE kind = 'report' AND sms_msg_id = 'new-1'"
            )
            return out
        finally:
            await conn.close()

    out = run(go())
    assert out["parts"] == ["quarantine_older", "status_reports_older", "uplinks_older"]
    assert [tuple(r) for r in out["events"]] == [tuple(r) for r in out["feed_before"]]  # type: ignore[attr-defined]
    assert out["view"] == 3 and out["replies"] == 1 and out["granted"] is True
    links: list[asyncpg.Record] = out["links"]  # type: ignore[assignment]
    [link] = links  # the reply's link on its day, found by its message
    yesterday = (datetime.now(UTC) - timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    assert (link["part"], link["on_its_day"]) == ("reply_links_older", True)
    assert link["days"] in ([yesterday], [yesterday - timedelta(days=1)])  # (midnight may pass meanwhile)
    assert [r.sms_msg_id for r in out["message"].replies] == ["up-old"]  # type: ignore[attr-defined]
    assert out["ids"] == [1, 2, 3, 4] and out["new_event"] == 1
    assert out["message_parts"] == ["message_states_older", "sends_after_optout_older", "sent_messages_older"]
    message = out["message"]
    assert message is not None and (message.state, message.to, message.registered) == ("delivered", "+8613100000000", True)  # type: ignore[attr-defined]
    assert [tuple(r) for r in out["old_state"]] == [("delivered", 2, "message_states_older")]  # type: ignore[attr-defined]


# --- retention by day ---------------------------------------------------------------------------

_RETIRED_TABLES = "SELECT relname::text FROM pg_class WHERE relname LIKE 'retired\\_%' ORDER BY 1"  # detached days not dropped yet


def test_prune_drops_the_days_past_the_cutoff_and_deletes_rows_only_in_the_day_that_straddles_it(
    db_url: str, tmp_path: Path
) -> None:
    """A month of reports 40 to 10 days old, a reply and a refused request on the oldest day;
    `prune --older-than 20d` drops the days before the cutoff's and deletes in its day alone."""
    now = datetime.now(UTC)
    start = datetime(now.year, now.month, now.day, tzinfo=UTC) - timedelta(days=40)

    async def fill() -> None:
        conn = await asyncpg.connect(db_url)
        try:
            app_id = await _app(conn)
            for day in range(31):
                await partitions.create(conn, "status_reports", (start + timedelta(days=day)).date())
            await partitions.create(conn, "uplinks", start.date())
            await partitions.create(conn, "quarantine", start.date())
            at = [start + timedelta(days=d, hours=h) for d in range(31) for h in (1, 23)]
            await store(conn, [_report(app_id, f"d-{i}", t) for i, t in enumerate(at)], HOOKS)
            await store(conn, [_uplink(app_id, "up-old", start + timedelta(hours=2))], HOOKS)
            await conn.execute("UPDATE status_reports SET stored_at = received_at")  # as if stored when received
            await conn.execute(
                "INSERT INTO quarantine (record_id, endpoint, error, raw_body, received_at)"
                " VALUES (gen_random_uuid(), 'uplink', 'bad', '\\x00', $1)", start + timedelta(hours=3)
            )  # fmt: skip
        finally:
            await conn.close()

    run(fill())
    cutoff_day = (now - timedelta(days=20)).date()
    env = service_env(tmp_path, db_url)
    dry = cli("prune", "--older-than", "20d", "--dry-run", env=env)
    done = cli("prune", "--older-than", "20d", env=env)
    left = run(fetch(db_url, "SELECT partition FROM receiver_partitions('status_reports') ORDER BY lower_bound"))
    names = [r["partition"] for r in left]
    assert f"status_reports_{start:%Y%m%d}" not in names
    assert f"status_reports_{cutoff_day - timedelta(days=1):%Y%m%d}" not in names
    assert f"status_reports_{cutoff_day:%Y%m%d}" in names  # straddles the cutoff: its rows went one by one
    kept = run(fetch(db_url, "SELECT min(received_at) AS first, count(*) AS n FROM status_reports"))[0]
    assert kept["first"] >= now - timedelta(days=20)
    dropped_days = (cutoff_day - start.date()).days
    for output in (dry.stdout, done.stdout):
        counted = dict(line.split("\t") for line in output.splitlines()[1:])
        assert int(counted["status_reports"]) + kept["n"] == 62
        assert counted["uplinks"] == counted["reply_links"] == counted["quarantine"] == "1"
    assert f"{dropped_days * 1 + 2} day partitions" in done.stdout  # reports' days, the uplinks' and quarantine's
    assert run(fetch(db_url, "SELECT count(*) FROM reply_links"))[0][0] == 0
    # every message whose reports all went has no state left; the others keep theirs
    states = run(fetch(db_url, "SELECT count(*) FROM message_states"))[0][0]
    assert states == kept["n"]
    assert run(fetch(db_url, _RETIRED_TABLES)) == []  # the days' tables are gone, not only detached


def test_prune_drops_the_old_days_of_sends_and_states_and_keeps_the_newer_ones(db_url: str, tmp_path: Path) -> None:
    """A message sent at noon on each of 40 days, reported a minute later; `prune --older-than
    20d` drops the sends', states' and reports' days before the cutoff's, keeps the newer days
    whole, and in the day that straddles the cutoff deletes only the messages older than it."""
    now = datetime.now(UTC)
    start = datetime(now.year, now.month, now.day, 12, tzinfo=UTC) - timedelta(days=40)
    days = [start + timedelta(days=d) for d in range(40)]

    async def fill() -> None:
        conn = await asyncpg.connect(db_url)
        try:
            app_id = await _app(conn)
            for at in days:
                for table in ("sent_messages", "message_states", "status_reports"):
                    await partitions.create(conn, table, at.date())
                async with conn.transaction():
                    await correlation.register_sent(conn, [_send(f"m{at:%m%d}", at)], "t", window=timedelta(hours=72))
                await store(conn, [_part(app_id, f"m{at:%m%d}", 1, at + timedelta(minutes=1))], HOOKS)
            await conn.execute("UPDATE status_reports SET stored_at = received_at")  # as if stored when received
        finally:
            await conn.close()

    run(fill())
    done = cli("prune", "--older-than", "20d", env=service_env(tmp_path, db_url))
    cutoff = now - timedelta(days=20)
    for table in ("sent_messages", "message_states"):
        left = {r["partition"] for r in run(fetch(db_url, "SELECT partition::text FROM receiver_partitions($1)", table))}
        for at in days:
            assert (f"{table}_{at:%Y%m%d}" in left) == (at.date() >= cutoff.date()), (table, at)
    kept = [f"m{at:%m%d}" for at in days if at >= cutoff]
    assert [tuple(r) for r in run(fetch(db_url, "SELECT sms_msg_id FROM sent_messages ORDER BY create_time"))] == [(m,) for m in kept]
    states = run(fetch(db_url, "SELECT sms_msg_id, state FROM message_states ORDER BY message_at"))
    assert [tuple(r) for r in states] == [(m, "pending") for m in kept]  # one part of two delivered
    counted = dict(line.split("\t") for line in done.stdout.splitlines()[1:])
    assert int(counted["sent_messages"]) == int(counted["message_states"]) == len(days) - len(kept)


def test_a_day_of_replies_goes_with_its_links_whole(db_url: str) -> None:
    """Three old days of replies, each with its link on its day of reply_links, and a fourth
    whose day reply_links has none of (its link in the default partition): the prune detaches
    the links' days in the replies' transaction, takes the stray link with them, and keeps the
    links of the days it keeps."""
    start = datetime.now(UTC).replace(hour=12) - timedelta(days=40)

    async def fill_and_prune() -> tuple[retention.Result, list[asyncpg.Record]]:
        conn = await asyncpg.connect(db_url)
        try:
            app_id = await _app(conn)
            for day in range(4):
                at = start + timedelta(days=day)
                await partitions.create(conn, "uplinks", at.date())
                if day < 3:
                    await partitions.create(conn, "reply_links", at.date())
                await store(conn, [_uplink(app_id, f"up-{day}", at)], HOOKS)
            await store(conn, [_uplink(app_id, "up-kept", datetime.now(UTC))], HOOKS)
            assert await conn.fetchval("SELECT count(*) FROM reply_links_default") == 1
            result = await retention.prune(conn, timedelta(days=20))
            left = await conn.fetch("SELECT u.sms_msg_id FROM reply_links l JOIN uplinks u ON u.id = l.uplink_id")
            return result, left
        finally:
            await conn.close()

    result, left = run(fill_and_prune())
    days = [f"{start + timedelta(days=day):%Y%m%d}" for day in range(4)]
    assert {f"reply_links_{d}" for d in days[:3]} | {f"uplinks_{d}" for d in days} <= set(result.dropped)
    assert result.counts["uplinks"] == result.counts["reply_links"] == 4
    assert set(result.table_seconds) == {"uplinks"}  # one transaction for the replies and their links
    assert [r["sms_msg_id"] for r in left] == ["up-kept"]


def test_prune_tells_the_time_each_table_took_to_drop_its_days(db_url: str) -> None:
    """Three old days of reports and of replies (one linked): the prune times the drop of each
    table that had days to drop, the deletion of the replies' links with it, and no other."""
    start = datetime.now(UTC) - timedelta(days=40)

    async def fill_and_prune() -> retention.Result:
        conn = await asyncpg.connect(db_url)
        try:
            app_id = await _app(conn)
            for day in range(3):
                for table in ("status_reports", "uplinks"):
                    await partitions.create(conn, table, (start + timedelta(days=day)).date())
                await store(conn, [_report(app_id, f"s-{day}", start + timedelta(days=day))], HOOKS)
            await store(conn, [_uplink(app_id, "up-s", start + timedelta(hours=1))], HOOKS)
            return await retention.prune(conn, timedelta(days=20))
        finally:
            await conn.close()

    result = run(fill_and_prune())
    assert len(result.dropped) == 6 and result.counts["reply_links"] == 1
    assert set(result.table_seconds) == {"status_reports", "uplinks"}
    assert all(seconds > 0 for seconds in result.table_seconds.values())
    assert sum(result.table_seconds.values()) == pytest.approx(result.lock_seconds)
    assert result.file_seconds > 0
    assert result.lock_seconds + result.file_seconds <= result.drop_seconds


@pytest.mark.parametrize("table", list(partitions.TABLES))
def test_the_retired_name_of_every_partition_fits_postgresql_s_names(table: str) -> None:
    """PostgreSQL cuts a longer name to 63 bytes: two days could then share one."""
    for partition in (f"{table}_20261205", f"{table}_older"):
        assert len(retention.retired(partition).encode()) <= 63


async def _retire(conn: asyncpg.Connection, table: str, day: datetime) -> str:
    """Detach ``table``'s partition of ``day`` and rename it, as a prune does before it drops the
    day's files: what a prune stopped there (killed, its connection lost) leaves behind."""
    name = f"{table}_{day:%Y%m%d}"
    await conn.execute(f"ALTER TABLE {table} DETACH PARTITION {name}; ALTER TABLE {name} RENAME TO {retention.retired(name)}")
    return retention.retired(name)


def test_a_prune_drops_the_retired_days_a_stopped_prune_left_and_the_day_can_be_made_again(
    db_url: str, tmp_path: Path
) -> None:
    """A prune stopped between detaching its days and dropping them left an old day of reports
    (made again since, with a report) and an empty day of replies ahead retired: the next
    `receiver prune` drops both retired tables, whatever their day, and the old day anew."""
    old = datetime.now(UTC) - timedelta(days=40)
    ahead = datetime.now(UTC) + timedelta(days=3)

    async def leave_retired() -> list[str]:
        conn = await asyncpg.connect(db_url)
        try:
            app_id = await _app(conn)
            await partitions.create(conn, "status_reports", old.date())
            await store(conn, [_report(app_id, "r-old", old)], HOOKS)
            left = [await _retire(conn, "status_reports", old), await _retire(conn, "uplinks", ahead)]
            assert await partitions.create(conn, "status_reports", old.date())  # its name is free
            await store(conn, [_report(app_id, "r-again", old + timedelta(minutes=1))], HOOKS)
            return left
        finally:
            await conn.close()

    left = run(leave_retired())
    assert [r[0] for r in run(fetch(db_url, _RETIRED_TABLES))] == sorted(left)
    done = cli("prune", "--older-than", "20d", env=service_env(tmp_path, db_url))
    assert "1 day partitions whole" in done.stdout  # the day made again
    assert run(fetch(db_url, _RETIRED_TABLES)) == []
    assert run(fetch(db_url, "SELECT count(*) FROM status_reports WHERE sms_msg_id LIKE 'r-%'"))[0][0] == 0


def test_while_a_prune_drops_the_files_of_its_days_the_writer_stores_into_their_table(db_url: str) -> None:
    """The drop of the old days' files is held up (an event trigger on the drop of a table waits
    for a lock another connection holds): meanwhile the writer stores a report into the table
    the days belonged to at once, under a lock timeout of a second. The prune then ends."""

    async def scenario() -> tuple[retention.Result, list[asyncpg.Record]]:
        conn, holder, writer = [await asyncpg.connect(db_url) for _ in range(3)]
        try:
            app_id = await _app(conn)
            start = datetime.now(UTC) - timedelta(days=40)
            for day in range(3):
                await partitions.create(conn, "status_reports", (start + timedelta(days=day)).date())
                await store(conn, [_report(app_id, f"w-{day}", start + timedelta(days=day))], HOOKS)
            await holder.execute("SELECT pg_advisory_lock(4242)")
            await conn.execute("""
                CREATE FUNCTION hold_drop() RETURNS event_trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF EXISTS (SELECT FROM pg_event_trigger_dropped_objects() WHERE object_type = 'table') THEN
                        PERFORM pg_advisory_xact_lock(4242);
                    END IF;
                END $$;
                CREATE EVENT TRIGGER hold_drop ON sql_drop EXECUTE FUNCTION hold_drop();
            """)
            pruning = asyncio.create_task(retention.prune(conn, timedelta(days=20)))
            waiting = "SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242 AND NOT granted)"
            for _ in range(500):
                if await writer.fetchval(waiting):
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the prune never reached the drop")
            await writer.execute("SET lock_timeout = '1s'")
            await store(writer, [_report(app_id, "w-now", datetime.now(UTC))], HOOKS)
            assert not pruning.done()
            await holder.execute("SELECT pg_advisory_unlock(4242)")
            result = await asyncio.wait_for(pruning, 10)
            return result, await writer.fetch("SELECT sms_msg_id FROM status_reports ORDER BY 1")
        finally:
            for c in (conn, holder, writer):
                await c.close()

    result, stored = run(scenario())
    assert len(result.dropped) == 3 and result.counts["status_reports"] == 3
    assert [r[0] for r in stored] == ["w-now"]
    assert run(fetch(db_url, _RETIRED_TABLES)) == []


async def _old_days_of_reports_and_sends_after_optout(conn: asyncpg.Connection) -> list[str]:
    """Two days of reports 40 days old, and the same days of sends after an opt-out (the last
    table a prune detaches), empty: their partitions."""
    app_id = await _app(conn)
    start = datetime.now(UTC) - timedelta(days=40)
    names = []
    for day in range(2):
        at = start + timedelta(days=day)
        for table in ("status_reports", "sends_after_optout"):
            await partitions.create(conn, table, at.date())
            names.append(f"{table}_{at:%Y%m%d}")
        await store(conn, [_report(app_id, f"o-{day}", at)], HOOKS)
    return names


_ATTACHED = "SELECT relname::text FROM pg_class WHERE relname = ANY($1::text[]) AND relispartition ORDER BY 1"


def test_a_table_s_days_are_dropped_while_a_later_table_waits_to_detach_its_own(db_url: str) -> None:
    """A query holds the last table a prune detaches (sends after an opt-out): meanwhile the days of
    reports, detached before, are dropped already, on the prune's other connections; once the
    query ends, the prune detaches and drops the last days too."""

    async def scenario() -> tuple[list[str], list[str], retention.Result]:
        conn, holder = [await asyncpg.connect(db_url) for _ in range(2)]
        try:
            names = await _old_days_of_reports_and_sends_after_optout(conn)
            holding = holder.transaction()
            await holding.start()
            await holder.execute("SELECT count(*) FROM sends_after_optout")
            pruning = asyncio.create_task(retention.prune(conn, timedelta(days=20), connect=lambda: asyncpg.connect(db_url)))
            waiting = ("SELECT EXISTS (SELECT FROM pg_locks WHERE relation = 'sends_after_optout'::regclass"
                       " AND mode = 'AccessExclusiveLock' AND NOT granted)")  # fmt: skip
            for _ in range(500):
                left = await holder.fetch(_ATTACHED, names) + await holder.fetch(_RETIRED_TABLES)
                if await holder.fetchval(waiting) and not any(r[0].startswith(("status", "retired")) for r in left):
                    break
                await asyncio.sleep(0.01)
            assert not pruning.done()
            meanwhile = [r[0] for r in left]
            await holding.rollback()
            result = await asyncio.wait_for(pruning, 10)
            return meanwhile, [r[0] for r in await holder.fetch(_ATTACHED, names)], result
        finally:
            for c in (conn, holder):
                await c.close()

    meanwhile, after, result = run(scenario())
    assert meanwhile == sorted(n for n in result.dropped if n.startswith("sends_after_optout"))
    assert after == [] and len(result.dropped) == 4 and result.counts["status_reports"] == 2
    assert run(fetch(db_url, _RETIRED_TABLES)) == []
    assert 0 < result.file_seconds <= result.drop_seconds and result.lock_seconds <= result.drop_seconds


@pytest.mark.parametrize("with_connections", [True, False])
def test_a_prune_that_cannot_detach_a_later_table_s_days_drops_the_earlier_ones_or_the_next_prune_does(
    db_url: str, monkeypatch: pytest.MonkeyPatch, with_connections: bool
) -> None:
    """A query holds the last table a prune detaches beyond the prune's lock timeout: the prune
    fails, the days of reports it detached before are dropped all the same on its other
    connections (on its one connection alone, they stay retired); the next prune drops what is
    left, and the last table's days."""
    monkeypatch.setattr(retention, "LOCK_TIMEOUT", "200ms")
    connect = (lambda: asyncpg.connect(db_url)) if with_connections else None

    async def scenario() -> tuple[list[str], list[str], list[str]]:
        conn, holder = [await asyncpg.connect(db_url) for _ in range(2)]
        try:
            names = await _old_days_of_reports_and_sends_after_optout(conn)
            async with holder.transaction():
                await holder.execute("SELECT count(*) FROM sends_after_optout")
                with pytest.raises(asyncpg.LockNotAvailableError):
                    await retention.prune(conn, timedelta(days=20), connect=connect)
            failed = [r[0] for r in await conn.fetch(_ATTACHED, names) + await conn.fetch(_RETIRED_TABLES)]
            await retention.prune(conn, timedelta(days=20), connect=connect)
            return names, failed, [r[0] for r in await conn.fetch(_ATTACHED, names) + await conn.fetch(_RETIRED_TABLES)]
        finally:
            for c in (conn, holder):
                await c.close()

    names, failed, after = run(scenario())
    reports, later = sorted(n for n in names if n.startswith("status")), sorted(n for n in names if n.startswith("sends"))
    assert failed == later + ([] if with_connections else [retention.retired(n) for n in reports])
    assert after == []
    assert run(fetch(db_url, "SELECT count(*) FROM status_reports WHERE sms_msg_id LIKE 'o-%'"))[0][0] == 0


# --- ready for Citus ----------------------------------------------------------------------------

# The tables Citus would distribute by sms_msg_id, co-located with the sends (docs/storage.md).
DISTRIBUTED = ("sent_messages", "message_states", "sends_after_optout", "status_reports", "uplinks", "message_index")


def test_every_unique_key_of_the_distributed_tables_holds_sms_msg_id_and_the_partition_column(db_url: str) -> None:
    rows = run(fetch(db_url, """
        SELECT c.conrelid::regclass::text AS t, c.conname,
               array_agg(a.attname::text ORDER BY a.attname) AS columns
        FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey)
        WHERE c.contype IN ('p', 'u') AND c.conrelid = ANY($1::regclass[])
        GROUP BY 1, 2""", list(DISTRIBUTED)))  # fmt: skip
    keys = {(r["t"], r["conname"]): set(r["columns"]) for r in rows}
    assert {t for t, _ in keys} == set(DISTRIBUTED)
    for (table, name), columns in keys.items():
        assert "sms_msg_id" in columns, name
        assert partitions.TABLES[table] in columns, name  # every one is partitioned
    # and no other unique index (one made without a constraint) escapes the rule
    indexes = run(fetch(db_url, """
        SELECT indexrelid::regclass::text AS name FROM pg_index i JOIN pg_attribute a
          ON a.attrelid = i.indrelid AND a.attname = 'sms_msg_id'
        WHERE i.indisunique AND i.indrelid = ANY($1::regclass[]) AND NOT a.attnum = ANY(i.indkey)""",
        list(DISTRIBUTED)))  # fmt: skip
    assert indexes == []


def _citus_steps() -> str:
    """The SQL that distributes the tables, as docs/storage.md gives it."""
    text = (Path(__file__).parent.parent / "docs" / "storage.md").read_text()
    section = text[text.index("\n## Citus\n") :]
    return section[section.index("```sql\n") + 7 : section.index("\n```", section.index("```sql\n"))]


def test_the_documented_citus_steps_leave_no_trigger_and_no_key_citus_refuses(db_url: str) -> None:
    """On Citus a trigger of a distributed table runs on the shards, where the statement's
    transition tables and the event feed are not, and a reference table takes none at all; a
    day partition's key to a reference table cannot be dropped once the day is detached (a prune
    does that before dropping it). So once the steps have run, the tables they distribute and
    reference carry no trigger, and no day-partitioned table a key to a reference table: the rows
    that follow from theirs are written by the service's statements."""
    steps = _citus_steps()
    distributed = set(re.findall(r"create_distributed_table\('(\w+)'", steps))
    reference = set(re.findall(r"create_reference_table\('(\w+)'\)", steps))
    dropped_triggers = set(re.findall(r"DROP TRIGGER (\w+) ON (\w+);", steps))
    dropped_keys = set(re.findall(r"ALTER TABLE (\w+) DROP CONSTRAINT (\w+);", steps))
    assert distributed == {*DISTRIBUTED, "recipient_index"} and "applications" in reference
    assert "FOREIGN KEY" not in steps  # none is added back
    triggers = {(r["tgname"], r["t"]) for r in run(fetch(db_url, """
        SELECT tgname, tgrelid::regclass::text AS t FROM pg_trigger
        WHERE NOT tgisinternal AND tgrelid = ANY($1::regclass[])""", sorted(distributed | reference)))}  # fmt: skip
    keys = {(r["t"], r["conname"]) for r in run(fetch(db_url, """
        SELECT c.conrelid::regclass::text AS t, c.conname FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
        WHERE c.contype = 'f' AND t.relkind = 'p' AND c.confrelid = ANY($1::regclass[])""", sorted(reference)))}  # fmt: skip
    assert dropped_triggers <= triggers and dropped_keys <= keys  # the steps name what is there
    assert (triggers - dropped_triggers, keys - dropped_keys) == (set(), set())
