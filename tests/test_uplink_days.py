"""The replies' listing (``GET /v1/uplinks``) pages by transaction and reads only the days of
receipt that a transaction at or after its cursor's wrote into (sql/027_uplink_days.sql): a
follower near the head reads a day or two whatever the days kept; a reply stored late into a
past day (a journal replayed after an outage) still comes after the cursor; replies another
writer inserts or moves count too; the migration fills the days of the replies already stored."""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import asyncpg
import pytest
from support import application, run

from receiver import partitions, retention
from receiver.correlation import queries
from receiver.db import migrate
from receiver.protocol.events import Uplink
from receiver.records import UplinkRecord
from receiver.writer import store

SQL = Path(__file__).resolve().parent.parent / "sql"
NOW = datetime.now(UTC).replace(microsecond=0)
TODAY = datetime(NOW.year, NOW.month, NOW.day, tzinfo=UTC)
DAYS = 30
T = TypeVar("T")


async def _keep_days(conn: asyncpg.Connection) -> None:
    for back in range(1, DAYS + 1):
        await partitions.create(conn, "uplinks", (TODAY - timedelta(days=back)).date())


async def _reply(conn: asyncpg.Connection, app_id: int, sms_msg_id: str, received_at: datetime) -> None:
    """A reply stored by the writer, in a transaction of its own."""
    await store(conn, [UplinkRecord(app_id, received_at, "raw", Uplink(sms_msg_id, "+8613100000000", "csms1", "T"))])


def _with(db_url: str, work: Callable[[asyncpg.Connection, int], Awaitable[T]]) -> T:
    """``work(conn, app_id)`` on a connection to a database keeping DAYS days of replies."""

    async def go() -> T:
        conn = await asyncpg.connect(db_url)
        try:
            await _keep_days(conn)
            return await work(conn, await application(conn, "u"))
        finally:
            await conn.close()

    return run(go())


async def _days(conn: asyncpg.Connection) -> list[datetime]:
    return [row["day"] for row in await conn.fetch("SELECT day FROM uplink_days ORDER BY day")]


async def _page(conn: asyncpg.Connection, cursor: str | None, limit: int = 100) -> tuple[list[str], str]:
    page, cursor = await queries.uplinks(conn, cursor=cursor, limit=limit)
    return [u.sms_msg_id for u in page], cursor


async def _days_locked(conn: asyncpg.Connection) -> int:
    """Partitions of uplinks this session holds a lock on."""
    locked: int = await conn.fetchval(
        """SELECT count(*) FROM pg_locks l JOIN pg_inherits i ON i.inhrelid = l.relation
           WHERE l.pid = pg_backend_pid() AND i.inhparent = 'uplinks'::regclass"""
    )
    return locked


def test_a_page_reads_the_days_written_after_its_cursor_and_a_late_reply_still_follows_it(db_url: str) -> None:
    async def work(conn: asyncpg.Connection, app_id: int) -> tuple[list[str], list[str], int, list[str], list[str]]:
        for back in range(DAYS, 0, -1):  # a reply a day, the oldest first, each its own transaction
            await _reply(conn, app_id, f"r-{back:02}", TODAY - timedelta(days=back, hours=-12))
        everything, cursor = [], None
        for _ in range(DAYS):
            page, cursor = await _page(conn, cursor, limit=7)
            if not page:
                break
            everything += page
        _, behind = await _page(conn, None, limit=DAYS - 2)  # a follower two replies behind
        async with conn.transaction():  # the listing's locks stay until this ends
            near_head, _ = await _page(conn, behind)
            locked = await _days_locked(conn)
        # A journal replayed after an outage: a reply received 20 days ago, stored now.
        await _reply(conn, app_id, "late", TODAY - timedelta(days=20, hours=-1))
        await _reply(conn, app_id, "today", NOW)
        after, _ = await _page(conn, behind)
        whole, _ = await _page(conn, None, limit=1000)
        return everything, near_head, locked, after, whole

    everything, near_head, locked, after, whole = _with(db_url, work)
    assert everything == [f"r-{back:02}" for back in range(DAYS, 0, -1)]
    assert near_head == ["r-02", "r-01"]
    # their two days and the day of the cursor's transaction (it may hold more), not the thirty kept
    assert locked == 3
    assert after == ["r-02", "r-01", "late", "today"]
    assert whole == [*everything, "late", "today"]


def test_a_reply_another_writer_inserts_or_moves_counts_its_day(db_url: str) -> None:
    async def work(conn: asyncpg.Connection, app_id: int) -> tuple[list[str], list[datetime], list[str]]:
        await _reply(conn, app_id, "by-the-writer", NOW)
        _, head = await _page(conn, None)
        # An operator's insert, or a release before this one still running (a rolling upgrade).
        await conn.execute(
            """INSERT INTO uplinks (application_id, sms_msg_id, "from", "to", body, raw_body, received_at)
               VALUES ($1, 'by-hand', '+8613100000001', 'csms1', 'T', 'raw', $2)""",
            app_id, TODAY - timedelta(days=10, hours=-3),
        )  # fmt: skip
        page, _ = await _page(conn, head)
        # ... or moves one to another day (its txid stays)
        await conn.execute("UPDATE uplinks SET received_at = $1 WHERE sms_msg_id = 'by-the-writer'",
                           TODAY - timedelta(days=5, hours=-1))  # fmt: skip
        days = await _days(conn)
        everything, _ = await _page(conn, None)
        return page, days, everything

    page, days, everything = _with(db_url, work)
    assert page == ["by-hand"]
    assert days == [TODAY - timedelta(days=10), TODAY - timedelta(days=5), TODAY]
    assert everything == ["by-the-writer", "by-hand"]


def test_a_prune_forgets_the_days_whose_replies_are_all_gone(db_url: str) -> None:
    async def work(conn: asyncpg.Connection, app_id: int) -> tuple[list[datetime], list[datetime], list[str]]:
        for back in (20, 12, 10, 2):
            await _reply(conn, app_id, f"p-{back}", TODAY - timedelta(days=back, hours=-6))
        dry = await retention.prune(conn, NOW - (TODAY - timedelta(days=10)), dry_run=True)
        assert dry.dry_run
        before = await _days(conn)
        await retention.prune(conn, NOW - (TODAY - timedelta(days=10)))
        after = await _days(conn)
        page, _ = await _page(conn, None)
        return before, after, page

    before, after, page = _with(db_url, work)
    assert before == [TODAY - timedelta(days=back) for back in (20, 12, 10, 2)]  # a dry run forgets nothing
    assert after == [TODAY - timedelta(days=back) for back in (10, 2)]
    assert page == ["p-10", "p-2"]


@pytest.fixture
def older_sql(tmp_path: Path) -> Path:
    folder = tmp_path / "sql"
    shutil.copytree(SQL, folder, ignore=shutil.ignore_patterns("__init__.py", "__pycache__", "027_*"))
    return folder


def test_the_migration_fills_the_days_of_the_replies_already_stored(empty_db_url: str, older_sql: Path) -> None:
    async def go() -> tuple[list[str], list[tuple[datetime, bool]]]:
        conn = await asyncpg.connect(empty_db_url)
        try:
            await migrate.apply(conn, older_sql)
            await _keep_days(conn)
            app_id = await application(conn, "u")
            for back in (5, 3, 3):
                await conn.execute(
                    """INSERT INTO uplinks (application_id, sms_msg_id, "from", "to", body, raw_body, received_at)
                       VALUES ($1, $2, '+8613100000002', 'csms1', 'T', 'raw', $3)""",
                    app_id, f"old-{back}-{await conn.fetchval('SELECT count(*) FROM uplinks')}",
                    TODAY - timedelta(days=back),
                )  # fmt: skip
            await migrate.apply(conn)
            page, _ = await _page(conn, None)
            newest = await conn.fetch(
                """SELECT d.day, d.last_txid = (SELECT max(txid) FROM uplinks u
                                                 WHERE date_trunc('day', u.received_at, 'UTC') = d.day) AS newest
                   FROM uplink_days d ORDER BY d.day"""
            )
            return page, [(row["day"], row["newest"]) for row in newest]
        finally:
            await conn.close()

    page, days = run(go())
    assert page == ["old-5-0", "old-3-1", "old-3-2"]
    assert days == [(TODAY - timedelta(days=5), True), (TODAY - timedelta(days=3), True)]
