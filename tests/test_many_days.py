"""Look-ups that do not grow with the days kept (docs/storage.md): with many day partitions, a
message is found by its id alone through message_index, a recipient's messages through
recipient_index, each read from the days that hold them; a page of every send reads a span of
days from its cursor on, not every day; a reply is linked from the days its number was sent to;
the two indexes follow the states and sends whatever the order of the events, and a prune."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import pytest
from support import application, plan_nodes, run

from receiver import partitions, retention, sends
from receiver.api.models import Message
from receiver.config import Settings
from receiver.correlation import links, queries
from receiver.correlation import store as correlation
from receiver.correlation.sent import SentMessage
from receiver.protocol.events import StatusReport, Uplink
from receiver.records import ReportRecord, UplinkRecord
from receiver.writer import store

NOW = datetime.now(UTC).replace(microsecond=0)
TODAY = datetime(NOW.year, NOW.month, NOW.day, tzinfo=UTC)
DAYS = 40  # kept before today, each with its partition in every table
HOOKS = (correlation.after_insert_hook(timedelta(hours=72)),)
WINDOW = timedelta(hours=72)
TO = "+8613100000000"
T = TypeVar("T")


def _send(sms_msg_id: str, at: datetime, to: str = TO) -> SentMessage:
    return SentMessage(sms_msg_id, to, "csms1", "000000", at, "CN", 1, None, None, None, None, {})


def _report(app_id: int, sms_msg_id: str, at: datetime, update_time: datetime | None = None) -> ReportRecord:
    event = StatusReport(sms_msg_id, "DELIVRD", 1, 1, update_time=update_time or at)
    return ReportRecord(app_id, "form", at, "raw", event)


async def _keep_days(conn: asyncpg.Connection) -> None:
    for back in range(1, DAYS + 1):
        for table in partitions.TABLES:
            await partitions.create(conn, table, (TODAY - timedelta(days=back)).date())


async def _register(conn: asyncpg.Connection, *sends: SentMessage) -> None:
    async with conn.transaction():
        await correlation.register_sent(conn, list(sends), "t", window=WINDOW)


def _with(db_url: str, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    async def go() -> T:
        conn = await asyncpg.connect(db_url)
        try:
            await _keep_days(conn)
            return await work(conn)
        finally:
            await conn.close()

    return run(go())


async def _partitions_locked(conn: asyncpg.Connection) -> int:
    """Partitions of the day-partitioned tables this session holds a lock on."""
    count: int = await conn.fetchval(
        """SELECT count(*) FROM pg_locks l JOIN pg_inherits i ON i.inhrelid = l.relation
           WHERE l.pid = pg_backend_pid() AND i.inhparent = ANY($1::regclass[])""",
        [t for t in partitions.TABLES if t not in partitions.MONTHLY],
    )
    return count


# A message on one of the days kept, by how far back; its reports a minute after its send.
FOUND = [("today", 0), ("yesterday", 1), ("a month back", 30), ("the oldest day kept", DAYS)]


@pytest.mark.parametrize(("name", "back"), FOUND, ids=[name for name, _ in FOUND])
def test_a_message_is_found_by_its_id_on_any_day_kept_reading_its_own_day(db_url: str, name: str, back: int) -> None:
    sent_at = NOW - timedelta(days=back, minutes=10)

    async def work(conn: asyncpg.Connection) -> tuple[Message | None, int]:
        app_id = await application(conn, "m", ['csms1'])
        for other in range(0, DAYS, 7):  # other messages on other days
            await _register(conn, _send(f"other-{other}", NOW - timedelta(days=other, minutes=30), "+8613100000009"))
        await _register(conn, _send("m", sent_at))
        await store(conn, [_report(app_id, "m", sent_at + timedelta(minutes=1))], HOOKS)
        async with conn.transaction():  # the look-up's locks stay until this ends
            message = await queries.message(conn, "m")
            locked = await _partitions_locked(conn)
        return message, locked

    message, locked = _with(db_url, work)
    assert message is not None and message.state == "delivered" and message.sent_at == sent_at
    assert [r.received_at for r in message.reports] == [sent_at + timedelta(minutes=1)]
    assert 0 < locked <= 6  # its state, send, opt-out row and reports: one day each (not every day kept)


def test_an_unknown_id_is_not_found_and_reads_no_day(db_url: str) -> None:
    async def work(conn: asyncpg.Connection) -> tuple[Message | None, int]:
        await _register(conn, _send("known", NOW - timedelta(days=3)))
        async with conn.transaction():
            message = await queries.message(conn, "unknown")
            return message, await _partitions_locked(conn)

    assert _with(db_url, work) == (None, 0)


# A message reported before its send is registered: the state is made on the report's day, then
# moves to the send's (the send's createTime before midnight, the reports after it).
ORDERS = [("report", "send", "report"), ("send", "report", "report"), ("report", "report", "send")]


@pytest.mark.parametrize("order", ORDERS, ids=["-".join(o) for o in ORDERS])
def test_the_index_follows_a_state_that_moves_to_its_send_s_day(db_url: str, order: tuple[str, ...]) -> None:
    sent_at = TODAY - timedelta(days=2, seconds=30)  # 30 s before a midnight
    received = iter([TODAY - timedelta(days=2) + timedelta(seconds=20), TODAY - timedelta(days=1, hours=-2)])

    async def work(conn: asyncpg.Connection) -> tuple[list[datetime], Message | None]:
        app_id = await application(conn, "m", ['csms1'])
        for event in order:
            if event == "send":
                await _register(conn, _send("moved", sent_at))
            else:
                at = next(received)
                await store(conn, [_report(app_id, "moved", at, update_time=at)], HOOKS)
        index = await conn.fetch("SELECT message_at FROM message_index WHERE sms_msg_id = 'moved'")
        return [r["message_at"] for r in index], await queries.message(conn, "moved")

    index, message = _with(db_url, work)
    assert index == [sent_at]  # one row, on the state's day
    assert message is not None and message.sent_at == sent_at and len(message.reports) == 2


def test_a_reply_to_an_old_message_is_read_from_its_own_day(db_url: str) -> None:
    sent_at = NOW - timedelta(days=20)

    async def work(conn: asyncpg.Connection) -> Message | None:
        app_id = await application(conn, "m", ['csms1'])
        await _register(conn, _send("asked", sent_at))
        reply = UplinkRecord(app_id, sent_at + timedelta(hours=1), "raw", Uplink("r-1", TO, "csms1", "yes"))
        await store(conn, [reply], HOOKS)
        return await queries.message(conn, "asked")

    message = _with(db_url, work)
    assert message is not None and [r["sms_msg_id"] for r in message.model_dump()["replies"]] == ["r-1"]


async def _scans(conn: asyncpg.Connection, table: str) -> dict[str, int]:
    """Scans of each partition of ``table`` by this session that are not yet in the shared
    statistics (whole, or by one of its indexes): a transaction's are among them."""
    rows = await conn.fetch(
        """SELECT c.relname, pg_stat_get_xact_numscans(c.oid)
                  + (SELECT coalesce(sum(pg_stat_get_xact_numscans(x.indexrelid)), 0) FROM pg_index x
                     WHERE x.indrelid = c.oid) AS scans
           FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = $1::regclass""",
        table,
    )  # fmt: skip
    return {row["relname"]: row["scans"] for row in rows}


async def _partitions_read(conn: asyncpg.Connection, table: str, work: Awaitable[object]) -> list[str]:
    """The partitions of ``table`` that ``work`` reads, in this transaction."""
    before = await _scans(conn, table)
    await work
    after = await _scans(conn, table)
    return sorted(name for name, scans in after.items() if scans > before.get(name, 0))


async def _links(conn: asyncpg.Connection) -> dict[str, tuple[str | None, int]]:
    rows = await conn.fetch("SELECT u.sms_msg_id, l.sms_msg_id AS reply_to, l.candidates"
                            " FROM reply_links l JOIN uplinks u ON u.id = l.uplink_id")  # fmt: skip
    return {row["sms_msg_id"]: (row["reply_to"], row["candidates"]) for row in rows}


def test_a_reply_is_linked_from_the_days_its_number_was_sent_to(db_url: str) -> None:
    """Sent to on a day, a run of three days, and the day before the reply's and its own (after
    the reply: no candidate); read from those days alone."""
    number, sent_on = "+8613100000077", [30, 10, 9, 8, 1]
    reply_at = TODAY + (NOW - TODAY) / 2

    async def work(conn: asyncpg.Connection) -> tuple[list[str], dict[str, tuple[str | None, int]]]:
        app_id = await application(conn, "linking", ["csms1"])
        await _register(conn, *(_send(f"to-{back}", NOW - timedelta(days=back), number) for back in sent_on),
                        _send("after", NOW, number),
                        *(_send(f"other-{back}", NOW - timedelta(days=back)) for back in range(DAYS + 1)))  # fmt: skip
        reply = UplinkRecord(app_id, reply_at, "raw", Uplink("r-days", number, "csms1", "yes"))
        async with conn.transaction():
            read = await _partitions_read(conn, "sent_messages", store(conn, [reply], HOOKS))
        return read, await _links(conn)

    read, links = _with(db_url, work)
    assert links["r-days"] == ("to-1", 5)  # the latest of its five sends before it, out of five
    assert read == sorted(partitions.name("sent_messages", (NOW - timedelta(days=back)).date()) for back in [*sent_on, 0])


def test_a_send_registered_late_relinks_the_replies_of_its_days_on(db_url: str) -> None:
    number, late_at = "+8613100000078", NOW - timedelta(days=5)

    async def work(conn: asyncpg.Connection) -> tuple[list[str], dict[str, tuple[str | None, int]]]:
        app_id = await application(conn, "relinking", ["csms1"])
        await _register(conn, _send("first", NOW - timedelta(days=30), number))
        replies = [UplinkRecord(app_id, NOW - timedelta(days=back), "raw", Uplink(f"r-{back}", number, "csms1", "ok"))
                   for back in (20, 3, 0)]  # fmt: skip
        await store(conn, replies, HOOKS)
        async with conn.transaction():
            late = correlation.register_sent(conn, [_send("late", late_at, number)], "t", window=WINDOW)
            read = await _partitions_read(conn, "uplinks", late)
        return read, await _links(conn)

    read, links = _with(db_url, work)
    assert links == {"r-20": ("first", 1), "r-3": ("late", 2), "r-0": ("late", 2)}
    # the replies that may answer it were looked for from its createTime less the clocks' window on
    assert read[0] == partitions.name("uplinks", (late_at - partitions.WINDOW).date())


def test_a_blacklist_code_reported_before_its_send_is_read_from_the_days_near_it(db_url: str) -> None:
    number, sent_at = "+8613100000079", NOW - timedelta(days=6)

    async def work(conn: asyncpg.Connection) -> tuple[list[str], list[str]]:
        app_id = await application(conn, "codes", ["csms1"])
        coded = StatusReport("coded", "SC:0016", 1, 1, update_time=sent_at + timedelta(minutes=1))
        await store(conn, [ReportRecord(app_id, "form", sent_at + timedelta(minutes=1), "raw", coded)], HOOKS)
        settings = Settings(database_url=db_url)
        async with conn.transaction():
            read = await _partitions_read(conn, "status_reports",
                                          sends.register(conn, [_send("coded", sent_at, number)], "t", settings))  # fmt: skip
        return read, [row["number"] for row in await conn.fetch("SELECT number FROM blacklist")]

    read, blacklisted = _with(db_url, work)
    assert blacklisted == [number]  # the code applied once its send named the number
    assert read[0] == partitions.name("status_reports", (sent_at - partitions.WINDOW).date())


def test_a_link_that_names_another_day_still_announces_its_reply(db_url: str) -> None:
    """A link changed by someone else's SQL may name a time that is not its reply's: the reply's
    event is then read from every day."""
    at = NOW - timedelta(days=DAYS)

    async def work(conn: asyncpg.Connection) -> list[asyncpg.Record]:
        app_id = await application(conn, "moved", ["csms1"])
        await _register(conn, _send("asked", NOW - timedelta(days=3)))
        await store(conn, [UplinkRecord(app_id, NOW - timedelta(days=2), "raw", Uplink("r-moved", TO, "csms1", "hi"))],
                    HOOKS)  # fmt: skip
        await conn.execute("UPDATE reply_links SET match = 'number', uplink_received_at = $1", at)
        return await conn.fetch("SELECT sms_msg_id, data ->> 'match' AS match FROM events WHERE kind = 'reply' ORDER BY id")

    events = _with(db_url, work)
    assert [(e["sms_msg_id"], e["match"]) for e in events] == [("r-moved", "channel"), ("r-moved", "number")]


def test_a_message_s_replies_are_read_from_the_days_they_came(db_url: str) -> None:
    """A message sent 30 days back, replied to 20 days back (and another message's reply between):
    its links are read from the day of its reply (reply_index), not from every day since."""
    replied = NOW - timedelta(days=20)

    async def work(conn: asyncpg.Connection) -> tuple[list[str], Message | None]:
        app_id = await application(conn, "m", ["csms1"])
        await _register(conn, _send("asked", NOW - timedelta(days=30)),
                        _send("other", NOW - timedelta(days=16), "+8613100000001"))  # fmt: skip
        await store(conn, [UplinkRecord(app_id, replied, "raw", Uplink("r-asked", TO, "csms1", "yes"))], HOOKS)
        await store(conn, [UplinkRecord(app_id, NOW - timedelta(days=15), "raw",
                                        Uplink("r-other", "+8613100000001", "csms1", "no"))], HOOKS)  # fmt: skip
        async with conn.transaction():
            message: list[Message | None] = []

            async def look_up() -> None:
                message.append(await queries.message(conn, "asked"))

            read = await _partitions_read(conn, "reply_links", look_up())
        return read, message[0]

    read, message = _with(db_url, work)
    assert message is not None and [r.sms_msg_id for r in message.replies] == ["r-asked"]
    assert read == [partitions.name("reply_links", replied.date())]


# A recipient sent to on a few of the days kept (two sends on one of them), days apart; pages
# of every size give every send once, in send order, and a time range its own.
SENT_ON = [DAYS, DAYS - 1, 25, 25, 9, 1, 0]
PAGES = [1, 2, 3, 50]


@pytest.mark.parametrize("limit", PAGES)
def test_a_recipient_s_messages_page_through_the_days_it_was_sent_to(db_url: str, limit: int) -> None:
    sends = [_send(f"to-{n}", NOW - timedelta(days=back, minutes=n), TO) for n, back in enumerate(SENT_ON)]

    async def work(conn: asyncpg.Connection) -> tuple[list[str], list[str]]:
        await _register(conn, *sends, _send("elsewhere", NOW - timedelta(days=25), "+8613100000001"))
        listed: list[str] = []
        cursor = None
        for _ in range(len(sends) + 1):
            page, cursor = await queries.messages(
                conn, to=TO, state=None, since=None, until=None, cursor=cursor, limit=limit
            )
            if not page:
                break
            listed += [m.sms_msg_id for m in page]
        ranged, _ = await queries.messages(
            conn, to=TO, state=None, since=TODAY - timedelta(days=26), until=TODAY - timedelta(days=1), cursor=None,
            limit=limit,
        )  # fmt: skip
        return listed, [m.sms_msg_id for m in ranged]

    listed, ranged = _with(db_url, work)
    in_order = [s.sms_msg_id for s in sorted(sends, key=lambda s: (s.create_time, s.sms_msg_id))]
    assert listed == in_order
    since, until = TODAY - timedelta(days=26), TODAY - timedelta(days=1)
    assert ranged == [s.sms_msg_id for s in sorted(sends, key=lambda s: (s.create_time, s.sms_msg_id))
                      if s.create_time is not None and since <= s.create_time < until][:limit]  # fmt: skip


# Sends on days of every kind, to several recipients: before the oldest day kept (no partition of
# its own: the default partition), the oldest, a run of days longer than the first span read,
# two at one time on one day, at the midnights where spans meet (from the oldest day: 32 and
# 16 days back; from SINCE: 29 and 13), today, and past the days made ahead (the default
# partition again).
SENT_AT = [
    NOW - timedelta(days=DAYS + 20),
    *(NOW - timedelta(days=back, hours=1) for back in range(DAYS, DAYS - 14, -1)),
    NOW - timedelta(days=20),
    NOW - timedelta(days=20),
    *(TODAY - timedelta(days=back) for back in (32, 29, 16, 13)),
    NOW - timedelta(minutes=5),
    NOW + timedelta(days=30),
]
SINCE = NOW - timedelta(days=DAYS - 3, hours=1)  # a send's own time


async def _page_through(conn: asyncpg.Connection, limit: int, **filters: Any) -> list[str]:
    listed: list[str] = []
    cursor = None
    for _ in range(len(SENT_AT) + 1):
        page, cursor = await queries.messages(conn, **{"to": None, "state": None, "since": None, "until": None,
                                                       "cursor": cursor, "limit": limit, **filters})  # fmt: skip
        if not page:
            break
        listed += [m.sms_msg_id for m in page]
    return listed


@pytest.mark.parametrize("limit", PAGES)
def test_every_send_pages_through_the_days_in_send_order(db_url: str, limit: int) -> None:
    sends = [_send(f"s-{n:02}", at, f"+86131000001{n:02}") for n, at in enumerate(SENT_AT)]
    since, until = SINCE, NOW

    async def work(conn: asyncpg.Connection) -> tuple[list[str], list[str], list[str]]:
        await _register(conn, *sends)
        ranged = await _page_through(conn, limit, since=since, until=until)
        return await _page_through(conn, limit), ranged, await _page_through(conn, limit, state="delivered")

    listed, ranged, delivered = _with(db_url, work)
    in_order = sorted(sends, key=lambda s: (s.create_time, s.sms_msg_id))
    assert listed == [s.sms_msg_id for s in in_order]
    assert ranged == [s.sms_msg_id for s in in_order if s.create_time is not None and since <= s.create_time < until]
    assert delivered == []  # none reported


def test_a_page_of_every_send_reads_the_days_it_needs_not_every_day_kept(db_url: str) -> None:
    async def work(conn: asyncpg.Connection) -> tuple[list[str], int, list[str], int]:
        await _register(conn, *(_send(f"d-{back:02}", NOW - timedelta(days=back)) for back in range(DAYS, -1, -1)))
        async with conn.transaction():  # the listing's locks stay until this ends
            first, _ = await queries.messages(conn, to=None, state=None, since=None, until=None, cursor=None, limit=3)
            locked_first = await _partitions_locked(conn)
        async with conn.transaction():
            recent, _ = await queries.messages(
                conn, to=None, state=None, since=NOW - timedelta(days=2), until=None, cursor=None, limit=2
            )
            locked_recent = await _partitions_locked(conn)
        return [m.sms_msg_id for m in first], locked_first, [m.sms_msg_id for m in recent], locked_recent

    first, locked_first, recent, locked_recent = _with(db_url, work)
    assert first == [f"d-{back:02}" for back in (DAYS, DAYS - 1, DAYS - 2)]
    assert recent == ["d-02", "d-01"]
    # sends, states and opt-out rows of a span of queries.DAYS_A_QUERY days and the default
    # partitions; every day kept would be more than three times as many
    for locked in (locked_first, locked_recent):
        assert 0 < locked <= 3 * (queries.DAYS_A_QUERY + 2)


def test_the_days_of_a_table_are_its_partitions_of_one_day(db_url: str) -> None:
    async def work(conn: asyncpg.Connection) -> tuple[list[datetime], list[datetime]]:
        return await partitions.days(conn, "sent_messages"), await partitions.days(conn, "applications")

    days, none = _with(db_url, work)
    assert none == []  # not partitioned
    assert days == sorted(days) and days[0] == TODAY - timedelta(days=DAYS)
    assert [TODAY - timedelta(days=back) for back in range(DAYS, -1, -1)] == [d for d in days if d <= TODAY]


D0 = datetime(2026, 1, 1, tzinfo=UTC)
TEN = [D0 + timedelta(days=n) for n in range(10)] + [D0 + timedelta(days=n) for n in range(20, 40)]


@pytest.mark.parametrize(
    ("lo", "hi", "first", "days_a_span"),
    [
        (None, None, 3, [3, 6, 12, 9]),
        (D0 + timedelta(hours=30), None, 3, [3, 6, 12, 8]),  # from inside the second day
        (None, D0 + timedelta(days=25), 4, [4, 8, 3]),
        (D0 - timedelta(days=9), D0 - timedelta(days=1), 3, [0]),  # no day: one span, the default partition's
        (None, None, 100, [30]),
    ],
)
def test_spans_cover_the_time_whole_each_twice_the_days_of_the_one_before(
    lo: datetime | None, hi: datetime | None, first: int, days_a_span: list[int]
) -> None:
    spans = partitions.runs(TEN, lo, hi, first)
    assert spans[0][0] == lo and spans[-1][1] == hi
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))  # no gap, no overlap
    meets = [
        sum(1 for d in TEN if (a is None or d + partitions.DAY > a) and (b is None or d < b)) for a, b in spans
    ]
    assert meets == days_a_span


def test_a_pruned_message_is_not_found_whether_its_day_was_dropped_or_its_rows_deleted(db_url: str) -> None:
    """Days past the cutoff are dropped whole (their index rows stay until their month goes, and
    lead to no state); the day that straddles it loses its rows one by one, as here, and their
    index rows with them. Either way the message is not found; a kept one is."""

    async def work(conn: asyncpg.Connection) -> list[object]:
        app_id = await application(conn, "m", ['csms1'])
        for name, back in (("dropped", 35), ("deleted", 20), ("kept", 20)):
            at = TODAY - timedelta(days=back, hours=-1)
            await _register(conn, _send(name, at))
            await store(conn, [_report(app_id, name, at + timedelta(minutes=1))], HOOKS)
        await retention.prune(conn, NOW - (TODAY - timedelta(days=30)))
        for table in ("sent_messages", "message_states", "status_reports"):
            await conn.execute(f"DELETE FROM {table} WHERE sms_msg_id = 'deleted'")
        found = [await queries.message(conn, name) is not None for name in ("dropped", "deleted", "kept")]
        left = await conn.fetchval("SELECT count(*) FROM message_index WHERE sms_msg_id = 'deleted'")
        return [*found, left]

    assert _with(db_url, work) == [False, False, True, 0]


def test_a_send_kept_by_its_reply_stays_a_candidate_once_its_month_of_recipient_index_is_pruned(db_url: str) -> None:
    """A send on a day without a partition of its own (the default partition) in a month that has
    some, kept by a prune because a recent reply is linked to it, after its month of
    recipient_index went whole: linking the replies again still finds it."""
    number, old_day = "+8613100000080", (TODAY - timedelta(days=100)).date()
    sent_at = datetime(old_day.year, old_day.month, old_day.day, 1, tzinfo=UTC) + timedelta(days=1)

    async def work(conn: asyncpg.Connection) -> tuple[list[str], dict[str, tuple[str | None, int]]]:
        app_id = await application(conn, "kept", ["csms1"])
        for table in partitions.TABLES:  # the month's partitions, not the send's day
            await partitions.create(conn, table, old_day)
        await _register(conn, _send("old-send", sent_at, number))
        await store(conn, [UplinkRecord(app_id, NOW, "raw", Uplink("r-kept", number, "csms1", "yes"))], HOOKS)
        await retention.prune(conn, timedelta(days=60))
        kept = [row["sms_msg_id"] for row in await conn.fetch("SELECT sms_msg_id FROM sent_messages")]
        await links.relink(conn, WINDOW)
        return kept, await _links(conn)

    kept, linked = _with(db_url, work)
    assert kept == ["old-send"]
    assert linked == {"r-kept": ("old-send", 1)}


def test_a_batchs_refresh_reads_big_days_by_the_messages_ids(db_url: str) -> None:
    """The refresh joins each table it reads to the batch's messages; with days of tens of
    thousands of states and sends, PostgreSQL would answer a join alone, or a look-up of a few
    thousand ids, with a scan of every row of the days in the batch's span (at 250,000 a day it
    halved the writer's rate). Each table is read by the ids of at most correlation.CHUNK
    messages (an index probe per message and day) instead; a writer's batch grows past that."""
    days = [TODAY - timedelta(days=1), TODAY]

    async def work(conn: asyncpg.Connection) -> list[str]:
        app_id = await application(conn, "m", ['csms1'])
        await conn.execute("SET session_replication_role = replica")  # history: no feed, no index rows
        for day in days:
            await conn.execute(
                """INSERT INTO sent_messages (sms_msg_id, "to", "from", status, create_time, raw)
                   SELECT 'big-' || $1 || '-' || i, '+86131' || lpad(i::text, 8, '0'), 'csms1', '000000',
                          $2::timestamptz + i * interval '2 seconds', '{}'
                   FROM generate_series(1, 40000) AS i""",
                f"{day:%Y%m%d}", day,
            )  # fmt: skip
            await conn.execute(
                """INSERT INTO message_states (sms_msg_id, message_at, state, status, parts_total, parts_delivered,
                                               reports, sent, sent_at)
                   SELECT sms_msg_id, create_time, 'pending', '000000', 1, 0, 0, true, create_time
                   FROM sent_messages WHERE create_time >= $1 AND create_time < $1 + interval '1 day'""",
                day,
            )  # fmt: skip
        await conn.execute("RESET session_replication_role")
        await conn.execute("ANALYZE sent_messages, message_states, status_reports")
        batch = [_report(app_id, f"new-{i}", NOW, NOW) for i in range(2500)]  # messages not sent: every day searched
        statements: list[tuple[str, tuple[object, ...]]] = []
        fetch, execute = asyncpg.Connection.fetch, asyncpg.Connection.execute

        def capturing(method: Any) -> Any:
            async def call(self: asyncpg.Connection, sql: str, *args: object, **kw: object) -> object:
                if sql in (correlation._FIND_STATES, correlation._REFRESH_STATES):
                    statements.append((sql, args))
                return await method(self, sql, *args, **kw)

            return call

        asyncpg.Connection.fetch = capturing(fetch)  # type: ignore[method-assign]
        asyncpg.Connection.execute = capturing(execute)  # type: ignore[method-assign]
        try:
            await store(conn, batch, HOOKS)
        finally:
            asyncpg.Connection.fetch, asyncpg.Connection.execute = fetch, execute  # type: ignore[method-assign]
        assert [sql for sql, _ in statements] == [correlation._FIND_STATES, correlation._REFRESH_STATES] * 3
        scanned = []
        async with conn.transaction():
            await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")  # as the refresh plans them
            for sql, args in statements:
                nodes = await plan_nodes(conn, sql, *args)
                scanned += [n["Relation Name"] for n in nodes if n["Node Type"] == "Seq Scan"
                            and any(n["Relation Name"].endswith(f"_{day:%Y%m%d}") for day in days)]  # fmt: skip
        return scanned

    assert _with(db_url, work) == []
