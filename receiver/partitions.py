"""Day partitions (``sql/016_time_partitions.sql``, ``sql/018_message_partitions.sql``, docs/storage.md).

``status_reports``, ``uplinks`` and ``quarantine`` are partitioned by ``received_at``, a reply's
link (``reply_links``) by its reply's (``uplink_received_at``), the event feed (``events``) by
``at``, the tables of one row per message by the message's time (the send's ``create_time``,
``message_states.message_at``, ``sends_after_optout.sent_at``): one partition per UTC day, named
``<table>_YYYYMMDD``, plus the table as it was before partitioning (``<table>_older``) and a
default partition. The three indexes
(``message_index``: a message's day by its id, ``recipient_index``: a recipient's days,
``sql/019_message_index.sql``; ``reply_index``: the days of a message's replies,
``sql/029_reply_link_days.sql``) have one partition per UTC month, ``<table>_YYYYMM``:
:func:`create` of a day makes its month. The writer
process keeps :data:`DAYS_AHEAD` days ahead (at start, then every :data:`INTERVAL_SECONDS`, when
it also closes the event feed's days that nothing can add to any more), so
the default partition normally stays empty; a row whose day has no partition (a clock far off,
a journal replayed from long ago) lands there and never fails an insert, and moves into its
day's partition when that day is made.

Creating a partition locks its parent for a moment: each is made in a transaction of its own
under a short ``lock_timeout``, and one that cannot get its lock (a long query on the table) is
left for the next round, days before it is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import asyncpg
import structlog

from . import db

log = structlog.get_logger("receiver.partitions")

# Partitioned tables and their partition column; the event feed first (retention drops it first).
TABLES: dict[str, str] = {"events": "at", "status_reports": "received_at", "uplinks": "received_at",
                          "reply_links": "uplink_received_at", "quarantine": "received_at", "sent_messages": "create_time",
                          "message_states": "message_at", "sends_after_optout": "sent_at",
                          "message_index": "message_at", "recipient_index": "day", "reply_index": "day"}  # fmt: skip
# Tables with one partition per UTC month instead of per day (receiver_partition_create knows them too).
MONTHLY = frozenset({"message_index", "recipient_index", "reply_index"})
DAYS_AHEAD = 7
INTERVAL_SECONDS = 3600.0
LOCK_TIMEOUT = "2s"

# How far apart in time the rows of one message can be: the platform pushes a report (again)
# within 72 hours of its send, so a message's send, state, reports and the copies of a report lie
# within this of each other. A unique key of a partitioned table holds its partition column and
# cannot see a row of the same message on another day: the statements that write look for it
# themselves, within this window of the times they know, which bounds the search to a few days
# whatever the number kept.
WINDOW = timedelta(days=4)
DAY = timedelta(days=1)


EARLIEST = datetime.min.replace(tzinfo=UTC)
LATEST = datetime.max.replace(tzinfo=UTC)


def span(times: Iterable[datetime | None]) -> tuple[datetime, datetime]:
    """Where rows of the messages of events at ``times`` may be: their span widened by
    :data:`WINDOW`; anywhere when one of them is not known (None), or none is given."""
    known = list(times)
    if not known or None in known:
        return EARLIEST, LATEST
    dated = [at for at in known if at is not None]
    return min(dated) - WINDOW, max(dated) + WINDOW


def name(table: str, day: date) -> str:
    """The name of ``table``'s partition that holds ``day``."""
    return f"{table}_{day:%Y%m}" if table in MONTHLY else f"{table}_{day:%Y%m%d}"


@dataclass(frozen=True)
class Partition:
    table: str  # the parent
    name: str
    lower: datetime | None  # None: from the beginning (the table as it was before partitioning)
    upper: datetime | None  # None: the default partition


async def partitions(conn: db.Connection, table: str) -> list[Partition]:
    """The partitions of ``table``, oldest first, the default last."""
    rows = await conn.fetch(
        "SELECT partition::text AS name, lower_bound, upper_bound FROM receiver_partitions($1::regclass)"
        " ORDER BY is_default, upper_bound",
        table,
    )
    return [Partition(table, row["name"], row["lower_bound"], row["upper_bound"]) for row in rows]


async def days(conn: db.Connection, table: str) -> list[datetime]:
    """The UTC days that have a partition of their own in ``table``, oldest first; none when the
    table is not partitioned. Read from the partitions' names, in one array (their bounds are
    expressions to parse, which costs about 0.1 ms a partition: as much as a page of a listing)."""
    names = await conn.fetchval(
        "SELECT array_agg(inhrelid::regclass::text) FROM pg_inherits WHERE inhparent = to_regclass($1)", table
    )
    named = re.compile(rf"(?:.+\.)?{re.escape(table)}_(\d{{4}})(\d\d)(\d\d)")
    found = (named.fullmatch(name) for name in names or ())
    return sorted(datetime(int(m[1]), int(m[2]), int(m[3]), tzinfo=UTC) for m in found if m)


Span = tuple[datetime | None, datetime | None]


def runs(days: Iterable[datetime], lo: datetime | None, hi: datetime | None, first: int) -> list[Span]:
    """The time from ``lo`` to ``hi`` (None: open) cut into consecutive spans, oldest first: the
    first meets at most ``first`` of the day partitions that start at ``days`` (sorted), each
    next one twice as many as the one before, so that a page the first span fills reads few
    days, and a walk through days without the rows it wants takes a handful of statements. They
    cover the time whole whatever the partitions are: a time in no day's partition (the table
    as it was before partitioning, the default partition) is in the span around it."""
    inside = [day for day in days if (lo is None or day + DAY > lo) and (hi is None or day < hi)]
    bounds: list[datetime | None] = [lo]
    at, size = first, first
    while at < len(inside):
        bounds.append(inside[at])
        size *= 2
        at += size
    bounds.append(hi)
    return list(itertools.pairwise(bounds))


async def create(conn: db.Connection, table: str, day: date) -> bool:
    """Make ``table``'s partition for ``day`` (UTC; of a :data:`MONTHLY` table: its month) unless it exists;
    True if made now. False as well when the table is too busy to lock within :data:`LOCK_TIMEOUT`."""
    try:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            made: bool = await conn.fetchval("SELECT receiver_partition_create($1::regclass, $2)", table, day)
    except asyncpg.LockNotAvailableError:
        log.warning("partitions.busy", table=table, day=day.isoformat())
        return False
    return made


async def ensure(conn: db.Connection, days_ahead: int = DAYS_AHEAD) -> int:
    """Partitions from yesterday to ``days_ahead`` days ahead, by the database's clock, for every
    partitioned table; returns how many were made now."""
    if not await conn.fetchval("SELECT to_regproc('receiver_partition_create') IS NOT NULL"):
        return 0  # migrations that do not partition (an older set, RECEIVER_MIGRATIONS_DIR)
    today: date = await conn.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")
    made = 0
    for table in await partitioned(conn):
        existing = {(p.lower, p.upper) for p in await partitions(conn, table)}
        for offset in range(-1, days_ahead + 1):
            day = today + timedelta(days=offset)
            if not _covered(existing, day) and await create(conn, table, day):
                made += 1
    if made:
        log.info("partitions.created", partitions=made)
    return made


async def close_event_days(conn: db.Connection) -> int:
    """Record the days of the event feed that no transaction can add to any more
    (``sql/025_event_feed_closed_days.sql``): a page of the feed reads none of them that closed
    before its cursor. Returns how many were recorded now."""
    if not await conn.fetchval("SELECT to_regproc('receiver_events_close') IS NOT NULL"):
        return 0  # an older set of migrations
    closed: int = await conn.fetchval("SELECT receiver_events_close()")
    return closed


async def partitioned(conn: db.Connection) -> list[str]:
    """The tables of :data:`TABLES` that are partitioned in this database (an older set of
    migrations partitions fewer)."""
    rows = await conn.fetch(
        "SELECT t FROM unnest($1::text[]) WITH ORDINALITY AS u(t, n)"
        " WHERE EXISTS (SELECT FROM pg_partitioned_table WHERE partrelid = to_regclass(t)) ORDER BY n",
        list(TABLES),
    )
    return [row["t"] for row in rows]


def _covered(bounds: set[tuple[datetime | None, datetime | None]], day: date) -> bool:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return any(upper is not None and (lower is None or lower <= start) and upper > start for lower, upper in bounds)


async def run(pool: asyncpg.Pool, interval: float = INTERVAL_SECONDS) -> None:
    """Keep partitions ahead, now and every ``interval`` seconds, until cancelled; a failure
    (PostgreSQL away) only skips a round."""
    while True:
        try:
            async with pool.acquire(timeout=5) as conn:
                await ensure(conn)
                await close_event_days(conn)
        except Exception as error:  # noqa: BLE001 - the next round tries again
            log.warning("partitions.failed", error=type(error).__name__)
        await asyncio.sleep(interval)


def start(pool: asyncpg.Pool, interval: float = INTERVAL_SECONDS) -> asyncio.Task[None]:
    return asyncio.create_task(run(pool, interval), name="receiver-partitions")


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
