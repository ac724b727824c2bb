"""The event feed reads only the days that can hold what comes after a cursor
(sql/025_event_feed_closed_days.sql, docs/storage.md "The event feed's days").

A day of ``events`` is closed by the partition job once nothing can be written into it any more,
with a txid after every transaction that wrote into it; a page reads the days still open and the
days closed after its cursor's transaction, and sees every event exactly once all the same.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from support import run

from receiver import partitions
from receiver.db import migrate
from receiver.events import feed

_NOW = datetime.now(UTC)
TODAY = datetime(_NOW.year, _NOW.month, _NOW.day, tzinfo=UTC)
DAYS = 30
SQL = Path(migrate.__file__).resolve().parents[2] / "sql"


def _day(back: int) -> datetime:
    return TODAY - timedelta(days=back)


async def _history(conn: asyncpg.Connection, days: int = DAYS, per_day: int = 3) -> None:
    """``days`` past days of events, each written in a transaction of its own and closed the
    day after, as the partition job does; oldest first."""
    for back in range(days, 0, -1):
        await partitions.create(conn, "events", _day(back).date())
        async with conn.transaction():
            for i in range(per_day):
                await conn.execute(
                    "INSERT INTO events (kind, sms_msg_id, number, data, at) VALUES ('optout', $1, $2, '{}', $3)",
                    f"d{back}-{i}", f"+861310000{back:04d}", _day(back) + timedelta(hours=10, minutes=i),
                )  # fmt: skip
        await conn.execute("SELECT receiver_events_close($1)", _day(back) + timedelta(days=1))


async def _everything(conn: asyncpg.Connection) -> list[str]:
    """Every committed event, in the feed's order, read without the feed."""
    rows = await conn.fetch(
        "SELECT txid::text AS txid, id FROM events WHERE txid < pg_snapshot_xmin(pg_current_snapshot())"
        " ORDER BY txid, id"
    )
    return [feed.Position(row["txid"], row["id"]).cursor() for row in rows]


async def _days_read(conn: asyncpg.Connection, after: feed.Position) -> list[str]:
    """The partitions of events a page after ``after`` opens (the locks its transaction took)."""
    async with conn.transaction():
        await feed.page(conn, after, limit=2)
        rows = await conn.fetch(
            """SELECT c.relname FROM pg_locks l JOIN pg_inherits i ON i.inhrelid = l.relation
               JOIN pg_class c ON c.oid = i.inhrelid
               WHERE l.pid = pg_backend_pid() AND i.inhparent = 'events'::regclass ORDER BY 1"""
        )
    return [row["relname"] for row in rows]


def _open_days() -> set[str]:
    """The days of events the job cannot close yet: those that ended less than two hours ago,
    and the days ahead (made by the migrations: up to a week)."""
    first = TODAY if datetime.now(UTC) - timedelta(hours=2) >= TODAY else TODAY - timedelta(days=1)
    return {partitions.name("events", (first + timedelta(days=n)).date()) for n in range(9)}


def test_a_page_reads_the_days_from_its_cursor_on_not_every_day_kept(db_url: str) -> None:
    async def go() -> tuple[list[str], feed.Position, list[str], set[str], dict[str, list[str]]]:
        conn = await asyncpg.connect(db_url)
        try:
            await _history(conn)
            everything = await _everything(conn)
            five_days_ago = await conn.fetchrow(
                f"SELECT txid::text AS txid, min(id) AS id FROM {partitions.name('events', _day(5).date())} GROUP BY txid"
            )
            assert five_days_ago is not None
            after = feed.Position(five_days_ago["txid"], five_days_ago["id"])
            page = await feed.page(conn, after, limit=4)
            kept = {p.name for p in await partitions.partitions(conn, "events")}
            read = {"behind": await _days_read(conn, after), "head": await _days_read(conn, await feed.now(conn)),
                    "start": await _days_read(conn, feed.START)}  # fmt: skip
            return everything, after, [e.id for e in page.events], kept, read
        finally:
            await conn.close()

    everything, after, page, kept, read = run(go())
    at = everything.index(after.cursor())
    assert page == everything[at + 1 : at + 5]  # the next four, across the day's end
    days_from_the_cursor = {partitions.name("events", _day(back).date()) for back in range(1, 6)}
    # The five days from the cursor's on, the days still open and the default partition: not the
    # 25 days before the cursor's.
    assert set(read["behind"]) == (days_from_the_cursor | _open_days() | {"events_default"}) & kept
    assert set(read["head"]) == (_open_days() | {"events_default"}) & kept
    assert set(read["start"]) == kept  # from the start: every day


def test_paging_from_the_start_sees_every_event_once_in_order(db_url: str) -> None:
    async def go() -> tuple[list[str], list[str]]:
        conn = await asyncpg.connect(db_url)
        try:
            await _history(conn, days=8)
            await conn.execute("INSERT INTO events (kind, sms_msg_id, data) VALUES ('optout', 'today', '{}')")
            seen: list[str] = []
            after = feed.START
            while True:
                page = await feed.page(conn, after, limit=5)
                seen += [e.id for e in page.events]
                if not page.more:
                    break
                after = page.next
            return await _everything(conn), seen
        finally:
            await conn.close()

    everything, seen = run(go())
    assert len(everything) == 8 * 3 + 1
    assert seen == everything


def test_a_day_closed_while_a_transaction_still_writes_into_it_keeps_that_transactions_events(db_url: str) -> None:
    """The txid a day is closed at is after every transaction that wrote into it, even one that
    has not committed yet: a follower whose cursor is before it still reads that day."""

    async def go() -> tuple[list[str], bool]:
        conn = await asyncpg.connect(db_url)
        slow = await asyncpg.connect(db_url)
        try:
            await partitions.create(conn, "events", _day(3).date())
            transaction = slow.transaction()
            await transaction.start()
            await slow.execute(
                "INSERT INTO events (kind, sms_msg_id, data, at) VALUES ('optout', 'slow', '{}', $1)",
                _day(3) + timedelta(hours=23, minutes=59),
            )
            start = await feed.now(conn)  # before the slow transaction: its events are ahead
            await conn.execute("SELECT receiver_events_close($1)", _day(2))
            closed = bool(await conn.fetchval(
                "SELECT EXISTS (SELECT FROM events_closed_days WHERE part = to_regclass($1))",
                partitions.name("events", _day(3).date()),
            ))  # fmt: skip
            await transaction.commit()
            page = await feed.page(conn, start, limit=10)
            return [e.sms_msg_id or "" for e in page.events], closed
        finally:
            await slow.close()
            await conn.close()

    events, closed = run(go())
    assert closed
    assert events == ["slow"]


def test_the_job_closes_days_two_hours_after_their_end_and_forgets_dropped_ones(db_url: str) -> None:
    async def go() -> tuple[set[str], set[str], datetime, datetime]:
        conn = await asyncpg.connect(db_url)
        try:
            for back in (3, 2, 1):
                await partitions.create(conn, "events", _day(back).date())
            await partitions.close_event_days(conn)
            closed = await _closed(conn)
            await conn.execute(f"DROP TABLE {partitions.name('events', _day(3).date())}")
            await partitions.close_event_days(conn)
            bound = await conn.fetchval("SELECT receiver_events_from(pg_current_xact_id())")
            forgotten = await _closed(conn)
            # A closed day's row counts for that table under its name only.
            await conn.execute(f"ALTER TABLE {partitions.name('events', _day(2).date())} RENAME TO events_renamed")
            renamed = await conn.fetchval("SELECT receiver_events_from(pg_current_xact_id())")
            return closed, forgotten, bound, renamed
        finally:
            await conn.close()

    closed, after_drop, bound, renamed = run(go())
    past = {partitions.name("events", _day(back).date()) for back in (3, 2, 1)}
    assert past - _open_days() <= closed
    assert not closed & _open_days()
    assert after_drop == closed - {partitions.name("events", _day(3).date())}
    # A follower at the head reads from the first day still open.
    assert bound == (TODAY if datetime.now(UTC) - timedelta(hours=2) >= TODAY else TODAY - timedelta(days=1))
    assert renamed == _day(2)


async def _closed(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch("SELECT part::regclass::text AS name FROM events_closed_days")
    return {row["name"] for row in rows}


@pytest.fixture
def older_sql(tmp_path: Path) -> Path:
    folder = tmp_path / "sql"
    shutil.copytree(SQL, folder, ignore=shutil.ignore_patterns("__init__.py", "__pycache__", "025_*"))
    return folder


def test_the_migration_closes_the_days_already_past_and_pages_stay_the_same(
    empty_db_url: str, older_sql: Path
) -> None:
    async def go() -> tuple[list[str], list[str], set[str]]:
        conn = await asyncpg.connect(empty_db_url)
        try:
            await migrate.apply(conn, older_sql)
            for back in range(6, 0, -1):
                await partitions.create(conn, "events", _day(back).date())
                await conn.execute(
                    "INSERT INTO events (kind, sms_msg_id, data, at) VALUES ('optout', $1, '{}', $2)",
                    f"d{back}", _day(back) + timedelta(hours=12),
                )  # fmt: skip
            before = await _everything(conn)
            await migrate.apply(conn)
            third = feed.parse_cursor(before[2])
            page = await feed.page(conn, third, limit=10)
            return before, [e.id for e in page.events], await _closed(conn)
        finally:
            await conn.close()

    before, page, closed = run(go())
    assert page == before[3:]
    assert {partitions.name("events", _day(back).date()) for back in range(6, 1, -1)} <= closed
    assert not closed & _open_days()


def test_the_position_after_the_last_id_of_a_transaction_is_the_next_transaction() -> None:
    assert feed.Position("41", 7).following() == ("41", 8)
    assert feed.Position("41", (1 << 63) - 1).following() == ("42", 0)


def test_the_days_before_partitioning_are_read_from_the_beginning(db_url: str) -> None:
    """A database partitioned after it held events keeps them in a partition open below
    (``events_older``): its bound is ``-infinity``, read from the start and skipped once closed
    before the cursor."""

    async def go() -> tuple[list[str], list[str], datetime, list[str]]:
        conn = await asyncpg.connect(db_url)
        try:
            first = min(p.lower for p in await partitions.partitions(conn, "events") if p.lower is not None)
            await conn.execute(f"CREATE TABLE events_older PARTITION OF events FOR VALUES FROM (MINVALUE) TO ('{first.isoformat()}')")
            await conn.execute("INSERT INTO events (kind, sms_msg_id, data, at) VALUES ('optout', 'old', '{}', '2020-01-01')")
            await partitions.close_event_days(conn)
            await conn.execute("INSERT INTO events (kind, sms_msg_id, data) VALUES ('optout', 'new', '{}')")
            from_start = [e.sms_msg_id or "" for e in (await feed.page(conn, feed.START, limit=10)).events]
            old = await conn.fetchrow("SELECT txid::text AS txid, id FROM events WHERE sms_msg_id = 'old'")
            assert old is not None
            after_old = [e.sms_msg_id or "" for e in (await feed.page(conn, feed.Position(old["txid"], old["id"]), limit=10)).events]
            bound = await conn.fetchval("SELECT receiver_events_from('0')")
            return from_start, after_old, bound, await _days_read(conn, await feed.now(conn))
        finally:
            await conn.close()

    from_start, after_old, bound, head = run(go())
    assert from_start == ["old", "new"]
    assert after_old == ["new"]
    assert "events_older" not in head
    assert bound == datetime.min  # asyncpg's -infinity, and handed back as one


def test_an_event_in_the_default_partition_is_not_skipped(db_url: str) -> None:
    """A row whose day has no partition lands in the default partition, with an ``at`` before
    the days a follower reads: it is read all the same."""

    async def go() -> list[str]:
        conn = await asyncpg.connect(db_url)
        try:
            await _history(conn, days=3)
            start = await feed.now(conn)
            await conn.execute(
                "INSERT INTO events (kind, sms_msg_id, data, at) VALUES ('optout', 'dayless', '{}', $1)", _day(10)
            )
            return [e.sms_msg_id or "" for e in (await feed.page(conn, start, limit=10)).events]
        finally:
            await conn.close()

    assert run(go()) == ["dayless"]
