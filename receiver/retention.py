"""Retention (``receiver prune``): delete stored events older than a cutoff, in small transactions.

What goes, once older than the cutoff:

- **Messages, each as a whole**: a message's send (``sent_messages``), what is derived from it
  (``message_states``, ``sends_after_optout``) and all of its ``status_reports`` go together, once the send's
  ``create_time``, every report's ``received_at`` and the ``received_at`` of every reply linked
  to it are older than the cutoff. A message with one recent event keeps all of them, so no
  state is ever left that its remaining reports would not give. A message without a registered
  send goes the same way, by its reports alone.
- **Tables with a time column** (:data:`RULES`): uplinks by ``received_at`` with their
  ``reply_links``, the quarantine by ``received_at``.

What stays, whatever its age: applications, API keys, push keys, and the blacklist
(``blacklist``, ``blacklist_signals``, ``blacklist_history``): a rebuild keeps the signals of
events pruned away (``receiver.blacklist.store.rebuild``), so pruning never changes the list.

**Whole days first.** The event tables and the tables of one row per message are partitioned by
UTC day (:mod:`receiver.partitions`): every partition that ends at or before the cutoff goes
whole, whatever it holds, in two steps. Each table in one short transaction (the event feed's
first, then reports, replies with their ``reply_links``, refused requests, sends, states, sends
after an opt-out): its old days are detached, renamed :data:`RETIRED` ``<day>`` and lose their
foreign keys, a change of the catalog alone, so the table's lock is held for a moment, as long
for a day of ten reports as for a day of ten million. Then its retired tables are dropped, with
no lock of the service's tables held, while the next table's days are detached: their files go
(a time that grows with their bytes) while the writer and the API go on. A prune stopped
between the two leaves retired tables, which no query reads; the next prune drops them before
anything else. The rules above then apply, row by row, only to what is left older than the
cutoff: the day that straddles it (and the table as it was before partitioning, until its last
day is past the cutoff). A message whose events lie on both sides of a dropped day loses those
of that day with it: its reports of the day, or its send and state when they are on it
(docs/storage.md).

Each batch is one transaction of at most ``batch_size`` candidates, so a large prune holds no
long lock and can run while the service ingests. A message batch takes the same per-message
locks as the writer's state refresh, and re-checks its rule under them: a report stored at the
same moment either keeps its message or finds it gone and starts a new one, never a state
that misses it. One prune at a time (a session advisory lock); a dry run takes no lock.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import asyncpg
import structlog

from . import partitions
from .blacklist import store as blacklist_store
from .correlation import store as correlation_store

log = structlog.get_logger("receiver.retention")

_LOCK_PRUNE = 0x50524E31  # session advisory lock: one prune at a time
LOCK_TIMEOUT = "10s"  # detaching a day waits this long for the queries reading its table
DROP_CONNECTIONS = 3  # connections dropping retired tables at once, when prune is given a way to connect
DROP_DAYS = 10  # retired tables one drop transaction takes at most: the connections share a big table's days

Connect = Callable[[], Awaitable[asyncpg.Connection]]


@dataclass(frozen=True)
class Rule:
    """Rows of ``table`` go once ``column`` is older than the cutoff; with them, the rows of each
    child table whose column refers to their ``key``."""

    table: str
    column: str
    # (child table, its column holding our key, its column holding our ``column``)
    children: tuple[tuple[str, str, str], ...] = ()
    key: str = "id"
    # False for a column with a BRIN index (no order to walk): each batch takes any old rows
    ordered: bool = True
    # The columns (and their types) that name a row of a table Citus may distribute: its rows
    # are deleted by them, not by their place in their partition (a ctid of a shard's row, on
    # another server, names nothing here).
    row: tuple[tuple[str, str], ...] = ()


# Tables pruned by their own time column alone. Adding one is one line here (its column should
# be indexed). Messages (MESSAGE_TABLES) have their own rule.
# The event feed goes first: a "report" event outliving its report would read as null.
EVENT_FEED = Rule("events", "at", ordered=False)
RULES: tuple[Rule, ...] = (
    EVENT_FEED,
    Rule("uplinks", "received_at", children=(("reply_links", "uplink_id", "uplink_received_at"),),
         row=(("sms_msg_id", "text"), ("id", "bigint"))),
    Rule("quarantine", "received_at"),
    Rule("quarantine_counts", "hour"),
)

MESSAGE_TABLES = ("sent_messages", "message_states", "status_reports", "sends_after_optout")


# --- durations --------------------------------------------------------------------------------

_DURATION = re.compile(r"([0-9]+)([hdw])")
_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}
_LONGEST = timedelta(days=365 * 1000)


def parse_duration(text: str) -> timedelta:
    """``12h``, ``180d``, ``26w``: a whole, positive number of hours, days or weeks."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is no duration: a whole number of hours, days or weeks, like 12h, 180d or 26w")
    count, unit = int(match[1]), match[2]
    if count == 0:
        raise ValueError(f"{text!r} would delete everything up to now: give a duration above zero")
    if count > _LONGEST // _UNITS[unit]:
        raise ValueError(f"{text!r} is longer than 1000 years")
    return count * _UNITS[unit]


# --- pruning ----------------------------------------------------------------------------------


class Busy(Exception):
    """Another prune holds the lock."""


@dataclass
class Result:
    cutoff: datetime
    dry_run: bool
    counts: dict[str, int] = field(default_factory=dict)  # table: rows deleted (or that would be)
    dropped: list[str] = field(default_factory=list)  # partitions dropped whole (or that would be)
    # A dry run's rows of the days it would drop: the rules row by row leave them out, as they
    # would not see them after a real drop.
    gone: list[int] = field(default_factory=list)  # partitions' oids
    drop_seconds: float = 0.0  # the time the whole days took, from the first look-up to the last drop's end
    lock_seconds: float = 0.0  # of it, the days' tables locked: detaching the days (their child rows' DELETEs with it)
    table_seconds: dict[str, float] = field(default_factory=dict)  # lock_seconds, each table's
    # Of it, dropping the detached days (their files), no table of the service's locked: from the
    # first drop's start to the last one's end (and the same for the retired tables a stopped prune
    # left, dropped before). It overlaps lock_seconds: a table's days go while the next are detached.
    file_seconds: float = 0.0

    def add(self, table: str, n: int) -> None:
        self.counts[table] = self.counts.get(table, 0) + n


def tables() -> list[str]:
    """Every table a prune deletes from, in the order it reports them."""
    names = list(MESSAGE_TABLES)
    for rule in RULES:
        names += [rule.table, *(child for child, _, _ in rule.children)]
    return names


async def prune(
    conn: asyncpg.Connection,
    older_than: timedelta,
    *,
    dry_run: bool = False,
    batch_size: int = 10_000,
    connect: Connect | None = None,
) -> Result:
    """Delete (``dry_run``: count) what is older than ``older_than``, by the database's clock.

    Outside a transaction: each batch commits on its own. ``connect`` opens a connection to the
    same database: the detached days are then dropped on :data:`DROP_CONNECTIONS` at once, the
    first of them while ``conn`` detaches the next tables (closed when done), else one table after
    the other on ``conn`` once every table's days are detached. Raises :class:`Busy` when
    another prune is running."""
    cutoff = await conn.fetchval("SELECT now() - $1::interval", older_than)
    result = Result(cutoff, dry_run, {name: 0 for name in tables()})
    if dry_run:
        await _run(conn, result, batch_size, connect)
        return result
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1::bigint)", _LOCK_PRUNE):
        raise Busy("another prune is running")
    try:
        await _run(conn, result, batch_size, connect)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1::bigint)", _LOCK_PRUNE)
    log.info("prune.done", cutoff=cutoff.isoformat(), **result.counts)
    return result


async def _run(conn: asyncpg.Connection, result: Result, batch_size: int, connect: Connect | None) -> None:
    await _drop_days(conn, result, connect)
    await _table(conn, EVENT_FEED, result, batch_size)
    await _sent_messages(conn, result, batch_size)
    await _unsent_messages(conn, result, batch_size)
    await _states_without_reports(conn, result, batch_size)
    for rule in RULES:
        if rule is not EVENT_FEED:
            await _table(conn, rule, result, batch_size)
    if not result.dry_run:
        await conn.execute(_FORGET_UPLINK_DAYS, result.cutoff)
        await conn.execute(_KEEP_RECIPIENT_DAYS, result.cutoff)


# The days whose replies are all gone (sql/027_uplink_days.sql).
_FORGET_UPLINK_DAYS = "DELETE FROM uplink_days WHERE day < date_trunc('day', $1::timestamptz, 'UTC')"

# The days of the sends a recent event kept in a month whose recipient_index went whole: written
# again (into its default partition), so that they stay candidates for linking a reply. Only the
# sends left before the cutoff's month are read: those of the days not dropped whole.
_KEEP_RECIPIENT_DAYS = """
INSERT INTO recipient_index ("to", day)
SELECT DISTINCT "to", date_trunc('day', create_time, 'UTC') FROM sent_messages
WHERE create_time < date_trunc('month', $1::timestamptz, 'UTC')
ON CONFLICT DO NOTHING
"""


# --- whole days ----------------------------------------------------------------------------------

# A dropped day's rows are counted from the statistics once PostgreSQL has gathered them (a big
# day: counting it would take longer than dropping it); a day without them is counted.
_ROWS = "SELECT CASE WHEN reltuples >= 0 THEN reltuples::bigint END FROM pg_class WHERE oid = $1::regclass"

# Tables whose days leave with another table's, in its transaction: a rule's children, partitioned
# as it is (a day's reply links with the day's replies: a link lies on its reply's day,
# sql/029_reply_link_days.sql), so that no query sees a reply without its link, nor a link
# without its reply.
_WITH = {rule.table: tuple(child for child, _, _ in rule.children) for rule in RULES if rule.children}
_FOLLOWING = frozenset(following for tables in _WITH.values() for following in tables)


def _strays(table: str, partition: str) -> str:
    """The rows of ``partition`` of the follower ``table`` on the days from $1 to $2 (the dropped
    days of the table it follows; all before $3): rows of those dates off the follower's own days
    of them (in its default partition, or the table it was before partitioning)."""
    col = partitions.TABLES[table]
    return (f"FROM {partition} r WHERE r.{col} < $3 AND EXISTS (SELECT FROM unnest($1::timestamptz[], $2::timestamptz[])"
            f" AS d(lo, hi) WHERE r.{col} >= d.lo AND r.{col} < d.hi)")


# A day detached from its table is renamed with this prefix until it is dropped: no query of the
# service reads it, no day partition is named so (the day can be made again), and a prune that
# stopped before dropping it finds it by name. ``retired_sends_after_optout_YYYYMMDD``, the
# longest, is 35 characters (PostgreSQL's limit is 63).
RETIRED = "retired_"

# The retired tables of each partitioned table, in its schema.
_RETIRED_TABLES = """
SELECT t.parent, c.relname::text AS name
FROM unnest($1::text[]) WITH ORDINALITY AS t(parent, n)
JOIN pg_class p ON p.oid = to_regclass(t.parent)
JOIN pg_class c ON c.relnamespace = p.relnamespace AND c.relkind = 'r' AND NOT c.relispartition
                AND starts_with(c.relname, $2 || t.parent || '_')
ORDER BY t.n, c.relname
"""


_FOREIGN_KEYS = """
SELECT conrelid::regclass::text AS t, quote_ident(conname) AS c FROM pg_constraint
WHERE contype = 'f' AND conrelid = ANY($1::regclass[])
"""


def retired(partition: str) -> str:
    """The name of ``partition`` once detached, until it is dropped."""
    return RETIRED + partition


async def _drop_days(conn: asyncpg.Connection, result: Result, connect: Connect | None) -> None:
    """Every day past the cutoff, each table's in one short transaction: detached and renamed as
    retired (its table's lock held for the catalog alone), then, with no lock of the service's
    tables held, the retired tables dropped (the files go then). A table's days are dropped as
    soon as they are detached, on connections of their own while ``conn`` detaches the next
    table's, and on ``conn`` too once it has detached them all. Retired tables a prune left
    behind (stopped between the two) are dropped first: a day made again since is retired under
    the same name."""
    started = time.perf_counter()
    droppers = _Droppers(conn, connect, result)
    try:
        if not result.dry_run and (left := await droppers.drop_left()):
            log.info("prune.retired_left", tables=left)  # by a prune stopped before its drops
        await _detach_each_day(conn, result, droppers.hand_over)
        await droppers.drain()
    finally:
        await droppers.close()
        result.drop_seconds = time.perf_counter() - started
    if result.dropped and not result.dry_run:
        log.info("prune.dropped", partitions=len(result.dropped), locked_seconds=round(result.lock_seconds, 3),
                 file_seconds=round(result.file_seconds, 3), seconds=round(result.drop_seconds, 3))  # fmt: skip


async def _detach_each_day(conn: asyncpg.Connection, result: Result, retire: Callable[[list[str]], None]) -> None:
    """Detach each table's days past the cutoff in a transaction of its own (with the days of the
    tables that follow it, :data:`_WITH`); ``retire`` is handed the retired tables once their
    transaction has committed."""
    for table in partitions.TABLES:
        if table in _FOLLOWING:
            continue
        followers = _WITH.get(table, ())
        kept = {t: await partitions.partitions(conn, t) for t in (table, *followers)}
        old = {t: [p for p in parts if p.upper is not None and p.upper <= result.cutoff] for t, parts in kept.items()}
        days = [(t, p.name) for t, parts in old.items() for p in parts]
        if not days:
            continue
        lows = [p.lower or partitions.EARLIEST for p in old[table]]
        highs = [p.upper for p in old[table] if p.upper is not None]
        spans = (lows, highs, max(highs, default=partitions.EARLIEST))
        strays = [
            (t, p.name) for t in followers for p in kept[t]
            if highs and p not in old[t] and (p.lower is None or p.lower < max(highs)) and (p.upper is None or p.upper > min(lows))
        ]  # fmt: skip
        if result.dry_run:
            for t, day in days:
                result.add(t, await _rows(conn, day))
                result.gone.append(await conn.fetchval("SELECT $1::regclass::oid", day))
            result.dropped += [day for _, day in days]
            for t, partition in strays:
                result.add(t, await conn.fetchval(f"SELECT count(*) {_strays(t, partition)}", *spans))
            continue
        # One transaction per table, its lock taken once: the days leave the table, their files
        # stay (dropped once the lock is released).
        started = time.perf_counter()
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            await blacklist_store.keep_out_bulk_work(conn)  # a rebuild reads all of a day's replies, or none
            rows = [(t, await _rows(conn, day)) for t, day in days]
            # The followers' strays go first, each partition locked alone: the service goes on
            # meanwhile (right after 029, the table it was holds every link of a whole day); then
            # again once the days are detached, for any written in between.
            for t, partition in strays:
                rows.append((t, _count(await conn.execute(f"DELETE {_strays(t, partition)}", *spans))))
            await conn.execute(_at_once(f"ALTER TABLE {t} DETACH PARTITION {day}; ALTER TABLE {day} RENAME TO {retired(day)}"
                                        for t, day in days))  # fmt: skip
            for t, partition in strays:
                rows.append((t, _count(await conn.execute(f"DELETE {_strays(t, partition)}", *spans))))
            # Their foreign keys go now: dropped with the tables, they would lock the tables they refer to
            # (applications) for as long as the files take.
            keys = await conn.fetch(_FOREIGN_KEYS, [retired(day) for _, day in days])
            if keys:
                await conn.execute(_at_once(f"ALTER TABLE {k['t']} DROP CONSTRAINT {k['c']}" for k in keys))
        result.table_seconds[table] = seconds = time.perf_counter() - started
        result.lock_seconds += seconds
        for t, n in rows:
            result.add(t, n)
        result.dropped += [day for _, day in days]
        log.info("prune.detached", table=table, partitions=len(days), rows=sum(n for _, n in rows), seconds=round(seconds, 3))
        retire([retired(day) for _, day in days])


def _at_once(commands: Iterable[str]) -> str:
    """These commands as one (a round trip, whatever their number): a DO block, as Citus runs
    no string of several commands on a distributed table."""
    return "DO $commands$BEGIN " + "".join(f"{command}; " for command in commands) + "END$commands$"


class _Droppers:
    """Drops retired tables, a table's days in transactions of at most :data:`DROP_DAYS`, in the
    order they are handed over: with ``connect``, on up to :data:`DROP_CONNECTIONS` - 1
    connections of their own (opened as the first drops are handed over) while ``conn`` goes on,
    and on ``conn`` in :meth:`drain`; without, on ``conn`` in :meth:`drain` alone. A connection that cannot be
    opened leaves its share to the others; one whose drop fails stops, its error raised by
    :meth:`drain` once the others are done. What was handed over is dropped even when ``conn``
    fails before :meth:`drain` (by the connections of their own; on ``conn`` alone, it stays
    retired until the next prune). ``result.file_seconds`` grows by the time from the first drop's
    start to the last one's end, in each of the two calls of :meth:`drain`."""

    def __init__(self, conn: asyncpg.Connection, connect: Connect | None, result: Result) -> None:
        self._conn = conn
        self._connect = connect
        self._result = result
        self._queue: asyncio.Queue[list[str]] = asyncio.Queue()  # an empty list: no more
        self._workers: list[asyncio.Task[None]] = []
        self._first: float | None = None  # the first drop's start since the last drain
        self._last = 0.0  # the last drop's end

    def hand_over(self, names: list[str]) -> None:
        for at in range(0, len(names), DROP_DAYS):
            self._queue.put_nowait(names[at : at + DROP_DAYS])
            if self._connect is not None and len(self._workers) < DROP_CONNECTIONS - 1:
                self._workers.append(asyncio.create_task(self._work(self._connect)))

    async def drop_left(self) -> int:
        """Drop the retired tables there are (a stopped prune's); how many."""
        rows = await self._conn.fetch(_RETIRED_TABLES, list(partitions.TABLES), RETIRED)
        by_table: dict[str, list[str]] = {}
        for row in rows:
            by_table.setdefault(row["parent"], []).append(row["name"])
        for names in by_table.values():
            self.hand_over(names)
        await self.drain()
        return len(rows)

    async def drain(self) -> None:
        """Drop on ``conn`` what is still waiting, then wait for the other connections' drops."""
        try:
            while not self._queue.empty():
                names = self._queue.get_nowait()
                try:
                    await self._drop(self._conn, names)
                finally:
                    self._queue.task_done()
            await self._queue.join()
            if failed := [e for task in self._workers if task.done() and not task.cancelled() and (e := task.exception())]:
                raise failed[0]
        finally:
            self._settle()

    async def close(self) -> None:
        """Let the other connections drop what is still waiting, then close them."""
        for _ in self._workers:
            self._queue.put_nowait([])
        await asyncio.gather(*self._workers, return_exceptions=True)  # their errors: raised by drain()
        self._settle()

    def _settle(self) -> None:
        if self._first is not None:
            self._result.file_seconds += self._last - self._first
            self._first = None

    async def _work(self, connect: Connect) -> None:
        try:
            db = await connect()
        except (OSError, TimeoutError, asyncpg.PostgresError) as error:
            log.warning("prune.connect_failed", error=type(error).__name__)
            return
        try:
            while names := await self._queue.get():
                try:
                    await self._drop(db, names)  # an error ends this connection's share: drain() raises it
                finally:
                    self._queue.task_done()
        finally:
            await db.close()

    async def _drop(self, db: asyncpg.Connection, names: list[str]) -> None:
        if self._first is None:
            self._first = time.perf_counter()
        try:
            await _drop(db, names)
        finally:
            self._last = time.perf_counter()


async def _drop(conn: asyncpg.Connection, names: list[str]) -> None:
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        await conn.execute(f"DROP TABLE {', '.join(names)}")


async def _rows(conn: asyncpg.Connection, name: str) -> int:
    estimate: int | None = await conn.fetchval(_ROWS, name)
    if estimate is None:
        estimate = await conn.fetchval(f"SELECT count(*) FROM {name}")
    return int(estimate or 0)


# Messages: candidates come from old sends, then from old reports of messages never sent; each
# batch keeps those with anything recent. A report batch ends at a (received_at, id) key: a
# message goes in the batch that holds its last report, so a dry run counts it once. Keys start
# at NULL (before everything).
_OLD_SENDS = """
SELECT sms_msg_id, create_time FROM sent_messages
WHERE create_time < $1
  AND (create_time, sms_msg_id) > (coalesce($2::timestamptz, '-infinity'), coalesce($3::text, ''))
ORDER BY create_time, sms_msg_id LIMIT $4
"""

_OLD_REPORTS = """
SELECT id, received_at, update_time, sms_msg_id FROM status_reports
WHERE received_at < $1 AND received_at >= coalesce($2::timestamptz, '-infinity')
  AND (received_at, id) > (coalesce($2::timestamptz, '-infinity'), coalesce($3::bigint, 0))
  AND tableoid <> ALL($5::oid[])
ORDER BY received_at, id LIMIT $4
"""

# Each candidate's window: partitions.WINDOW ($w) around the times near which its rows are
# ($t: its send's createTime, an old report's receipt or updateTime, its state's message_at;
# NULL: not known, anywhere).
_WINDOWS = """
WITH i AS (
    SELECT sms_msg_id,
           CASE WHEN bool_or(at IS NULL) THEN '-infinity' ELSE min(at) - {w}::interval END AS lo,
           CASE WHEN bool_or(at IS NULL) THEN 'infinity' ELSE max(at) + {w}::interval END AS hi
    FROM unnest($1::text[], {t}::timestamptz[]) AS c(sms_msg_id, at) GROUP BY 1
)"""

# The candidates' ($1) stored states within their windows ($4, $5: the span of the windows):
# where their reports are (store._REFRESH_STATES).
_CANDIDATE_STATES = _WINDOWS.format(t="$2", w="$3") + """
SELECT DISTINCT ON (i.sms_msg_id) i.sms_msg_id, m.reports_from, m.reports_until
FROM i JOIN message_states m ON m.sms_msg_id = i.sms_msg_id AND m.message_at BETWEEN i.lo AND i.hi
WHERE m.sms_msg_id = ANY($1::text[]) AND m.message_at BETWEEN $4 AND $5
ORDER BY i.sms_msg_id, m.message_at DESC
"""

# Of the candidates ($1, their times $7), the messages that go: no send ($3: none at all; else
# none from the cutoff $2 on), no report from the cutoff on or after the batch's last key ($4,
# $5; NULL: none), no reply from the cutoff on linked to them. A report received before the
# cutoff but stored after it (it waited in the journal) keeps its message too: its event is
# dated by the storing transaction, kept by the event feed's rule, and would read as null
# without its report. A message's send is searched within its window ($8; $9, $10: their span),
# its reports between its state's bounds ($11 to $13, _CANDIDATE_STATES), else within the
# window ($14, $15: the span of both): a few days, not every day kept. Each table is read for
# the candidates' ids (= ANY($1): an index probe per message and day) and joined on them alone
# (so Citus runs each join on the shards of those ids); a reply link names its reply's receipt,
# and is read from the days reply_index gives for the candidates (not from every day since the
# cutoff's: a probe of each day's index for each candidate).
_DOOMED = _WINDOWS.format(t="$7", w="$8") + """,
m AS (
    SELECT * FROM unnest($11::text[], $12::timestamptz[], $13::timestamptz[]) AS m(sms_msg_id, reports_from, reports_until)
),
sent AS (
    SELECT s.sms_msg_id
    FROM i JOIN sent_messages s ON s.sms_msg_id = i.sms_msg_id AND s.create_time BETWEEN i.lo AND i.hi
    WHERE s.sms_msg_id = ANY($1::text[]) AND s.create_time BETWEEN $9 AND $10 AND ($3::boolean OR s.create_time >= $2)
),
reported AS (
    SELECT r.sms_msg_id
    FROM i LEFT JOIN m USING (sms_msg_id)
    JOIN status_reports r ON r.sms_msg_id = i.sms_msg_id
                         AND r.received_at BETWEEN coalesce(m.reports_from, i.lo) AND coalesce(m.reports_until, i.hi)
    WHERE r.sms_msg_id = ANY($1::text[]) AND r.received_at BETWEEN $14 AND $15 AND r.tableoid <> ALL($6::oid[])
      AND (r.received_at >= $2 OR r.stored_at >= $2 OR (r.received_at, r.id) > ($4::timestamptz, $5::bigint))
),
replied AS (
    SELECT x.sms_msg_id
    FROM reply_index x
    JOIN reply_links l ON l.sms_msg_id = x.sms_msg_id
                      AND l.uplink_received_at >= x.day AND l.uplink_received_at < x.day + interval '1 day'
    WHERE x.sms_msg_id = ANY($1::text[]) AND x.day >= date_trunc('day', $2::timestamptz, 'UTC')
      AND l.uplink_received_at >= $2
)
SELECT sms_msg_id FROM i
EXCEPT SELECT sms_msg_id FROM sent
EXCEPT SELECT sms_msg_id FROM reported
EXCEPT SELECT sms_msg_id FROM replied
"""


async def _doomed(
    conn: asyncpg.Connection,
    result: Result,
    candidates: list[tuple[str, datetime | None]],
    unsent_only: bool,
    last: tuple[datetime | None, int | None],
) -> list[str]:
    """The candidates that go (:data:`_DOOMED`), looked up :data:`correlation_store.CHUNK`
    messages at a time (a day's index probed for each, not the day read whole)."""
    by_id: dict[str, list[datetime | None]] = {}
    for sms_msg_id, at in candidates:
        by_id.setdefault(sms_msg_id, []).append(at)
    ordered = sorted(by_id)
    doomed = []
    for start in range(0, len(ordered), correlation_store.CHUNK):
        times = {sms_msg_id: by_id[sms_msg_id] for sms_msg_id in ordered[start : start + correlation_store.CHUNK]}
        doomed += await _doomed_of(conn, result, times, unsent_only, last)
    return doomed


async def _doomed_of(
    conn: asyncpg.Connection,
    result: Result,
    times: dict[str, list[datetime | None]],  # each candidate's times
    unsent_only: bool,
    last: tuple[datetime | None, int | None],
) -> list[str]:
    ids = [sms_msg_id for sms_msg_id, at in times.items() for _ in at]
    ats = [t for at in times.values() for t in at]
    lo, hi = partitions.span(ats)
    states = await conn.fetch(_CANDIDATE_STATES, ids, ats, partitions.WINDOW, lo, hi)
    # where their reports may be: each state's bounds, else its message's window
    bounds = {sms_msg_id: partitions.span(at) for sms_msg_id, at in times.items()}
    for row in states:
        window = bounds[row["sms_msg_id"]]
        bounds[row["sms_msg_id"]] = (row["reports_from"] or window[0], row["reports_until"] or window[1])
    reports = (min(b[0] for b in bounds.values()), max(b[1] for b in bounds.values()))
    columns = ([row[k] for row in states] for k in ("sms_msg_id", "reports_from", "reports_until"))
    rows = await conn.fetch(
        _DOOMED, ids, result.cutoff, unsent_only, *last, result.gone, ats, partitions.WINDOW, lo, hi, *columns,
        *reports,
    )  # fmt: skip
    return [row[0] for row in rows]


# A doomed message's rows: its send, state and send-after-opt-out within the window of the batch
# ($2, $3), its reports older than the cutoff ($2 there).
_MESSAGE_ROWS = {table: f"sms_msg_id = ANY($1::text[]) AND {column} BETWEEN $2 AND $3"
                 for table, column in partitions.TABLES.items() if table in MESSAGE_TABLES}  # fmt: skip
_MESSAGE_ROWS["status_reports"] = "sms_msg_id = ANY($1::text[]) AND received_at < $2"
# A state goes with its row of message_index (sql/024_statements_write_derived_rows.sql), in the
# same window.
_DELETE_STATES = f"""
WITH gone AS (DELETE FROM message_states WHERE {_MESSAGE_ROWS["message_states"]} RETURNING sms_msg_id, message_at),
unindexed AS (
    DELETE FROM message_index i USING gone
    WHERE i.sms_msg_id = gone.sms_msg_id AND i.message_at = gone.message_at AND i.message_at BETWEEN $2 AND $3
)
SELECT count(*) FROM gone
"""


async def _sent_messages(conn: asyncpg.Connection, result: Result, batch_size: int) -> None:
    after: tuple[datetime | None, str | None] = (None, None)
    while rows := await conn.fetch(_OLD_SENDS, result.cutoff, *after, batch_size):
        after = (rows[-1]["create_time"], rows[-1]["sms_msg_id"])
        await _messages(conn, result, [(r["sms_msg_id"], r["create_time"]) for r in rows], unsent_only=False,
                        last=(None, None))  # fmt: skip


async def _unsent_messages(conn: asyncpg.Connection, result: Result, batch_size: int) -> None:
    after: tuple[datetime | None, int | None] = (None, None)
    while rows := await conn.fetch(_OLD_REPORTS, result.cutoff, *after, batch_size, result.gone):
        after = (rows[-1]["received_at"], rows[-1]["id"])
        near = [(r["sms_msg_id"], at) for r in rows for at in correlation_store.report_times(r)]
        await _messages(conn, result, near, unsent_only=True, last=after)


# States of messages never sent whose reports all went with their days (a state stands for a send or
# reports): the message rule decides on them as on others. Such a state's message_at is its first
# report's receipt, older than the cutoff: the days before it only.
_STATES_WITHOUT_REPORTS = """
SELECT sms_msg_id, message_at FROM message_states m
WHERE message_at < $4 AND sent_at IS NULL AND NOT sent AND sms_msg_id > coalesce($1::text, '')
  AND NOT EXISTS (SELECT FROM status_reports r
                  WHERE r.sms_msg_id = m.sms_msg_id AND r.tableoid <> ALL($3::oid[])
                    AND r.received_at BETWEEN coalesce(m.reports_from, '-infinity')
                                          AND coalesce(m.reports_until, 'infinity'))
ORDER BY sms_msg_id LIMIT $2
"""


async def _states_without_reports(conn: asyncpg.Connection, result: Result, batch_size: int) -> None:
    if not result.dropped:
        return
    after: str | None = None
    while rows := await conn.fetch(_STATES_WITHOUT_REPORTS, after, batch_size, result.gone, result.cutoff):
        after = rows[-1]["sms_msg_id"]
        await _messages(conn, result, [(r["sms_msg_id"], r["message_at"]) for r in rows], unsent_only=True,
                        last=(None, None))  # fmt: skip


async def _messages(
    conn: asyncpg.Connection,
    result: Result,
    candidates: list[tuple[str, datetime | None]],  # a message and a time near its rows (None: not known)
    *,
    unsent_only: bool,
    last: tuple[datetime | None, int | None],
) -> None:
    ids = sorted({sms_msg_id for sms_msg_id, _ in candidates})
    times = [at for _, at in candidates]
    lo, hi = partitions.span(times)
    if result.dry_run:
        doomed = await _doomed(conn, result, candidates, unsent_only, last)
        for table in MESSAGE_TABLES:
            bounds = _bounds(table, result.cutoff, lo, hi)
            sql = f"SELECT count(*) FROM {table} WHERE {_MESSAGE_ROWS[table]} AND tableoid <> ALL(${len(bounds) + 2}::oid[])"
            result.add(table, await conn.fetchval(sql, doomed, *bounds, result.gone))
        return
    async with conn.transaction():
        # The writer's order: the messages' locks, then the blacklist's shared one. Under them,
        # the rule is checked again (a new statement sees what committed meanwhile).
        await correlation_store.lock_messages(conn, ids)
        await blacklist_store.keep_out_bulk_work(conn)
        doomed = await _doomed(conn, result, candidates, unsent_only, last)
        deleted = {table: 0 for table in MESSAGE_TABLES}
        if doomed:
            for table in MESSAGE_TABLES:
                bounds = _bounds(table, result.cutoff, lo, hi)
                if table == "message_states":
                    deleted[table] = await conn.fetchval(_DELETE_STATES, doomed, *bounds)
                else:
                    sql = f"DELETE FROM {table} WHERE {_MESSAGE_ROWS[table]}"
                    deleted[table] = _count(await conn.execute(sql, doomed, *bounds))
    for table, n in deleted.items():
        result.add(table, n)
    log.debug("prune.batch", **deleted)


def _bounds(table: str, cutoff: datetime, lo: datetime, hi: datetime) -> tuple[datetime, ...]:
    return (cutoff,) if table == "status_reports" else (lo, hi)


async def _table(conn: asyncpg.Connection, rule: Rule, result: Result, batch_size: int) -> None:
    t, col = rule.table, rule.column
    if result.dry_run:
        sql = f"SELECT count(*) FROM {t} WHERE {col} < $1 AND tableoid <> ALL($2::oid[])"
        result.add(t, await conn.fetchval(sql, result.cutoff, result.gone))
        for child, ref, at in rule.children:
            sql = (f"SELECT count(*) FROM {child} c JOIN {t} p ON c.{ref} = p.{rule.key} AND c.{at} = p.{col}"
                   f" WHERE p.{col} < $1 AND p.tableoid <> ALL($2::oid[]) AND c.tableoid <> ALL($2::oid[])")  # fmt: skip
            result.add(child, await conn.fetchval(sql, result.cutoff, result.gone))
        return
    key = f", {rule.key} AS key" if rule.children else ""
    names = ", ".join(name for name, _ in rule.row) if rule.row else "tableoid::regclass::text AS part, ctid"
    if rule.ordered:
        select = f"""SELECT {names}, {col} AS at{key} FROM {t}
                     WHERE {col} < $1 AND {col} >= coalesce($2::timestamptz, '-infinity')
                     ORDER BY {col} LIMIT $3"""
    else:  # nothing to walk in order: each batch takes any old rows, until none are left
        select = f"SELECT {names}, {col} AS at{key} FROM {t} WHERE {col} < $1 AND $2::timestamptz IS NULL LIMIT $3"
    after: datetime | None = None
    while True:
        async with conn.transaction():
            await blacklist_store.keep_out_bulk_work(conn)  # a rebuild reads all of a batch of replies, or none
            rows = await conn.fetch(select, result.cutoff, after, batch_size)
            if not rows:
                return
            deleted = {}
            for child, ref, at in rule.children:  # from the days of these rows
                sql = f"DELETE FROM {child} WHERE {ref} = ANY($1) AND {at} BETWEEN $2 AND $3"
                times = [r["at"] for r in rows]
                deleted[child] = _count(await conn.execute(sql, [r["key"] for r in rows], min(times), max(times)))
            deleted[t] = await _delete_rows(conn, rule, rows, result.cutoff)
        after = rows[-1]["at"] if rule.ordered else None
        for table, n in deleted.items():
            result.add(table, n)
        log.debug("prune.batch", **deleted)


async def _delete_rows(conn: asyncpg.Connection, rule: Rule, rows: list[asyncpg.Record], cutoff: datetime) -> int:
    """Delete these rows of ``rule.table`` (found older than ``cutoff``) if they still are."""
    col = rule.column
    if rule.row:
        arrays = ", ".join(f"${n}::{kind}[]" for n, (_, kind) in enumerate(rule.row, 1))
        names = ", ".join(name for name, _ in rule.row)
        sql = (f"DELETE FROM {rule.table} WHERE ({names}) IN (SELECT * FROM unnest({arrays}))"
               f" AND {col} >= ${len(rule.row) + 1} AND {col} < ${len(rule.row) + 2}")  # fmt: skip
        columns = [[r[name] for r in rows] for name, _ in rule.row]
        return _count(await conn.execute(sql, *columns, min(r["at"] for r in rows), cutoff))
    # By ctid in its partition (a ctid is unique only there), and old still: a row moved by an
    # update meanwhile leaves its slot to another
    deleted = 0
    for part in sorted({r["part"] for r in rows}):
        sql = f"DELETE FROM {part} WHERE ctid = ANY($1::tid[]) AND {col} < $2"
        slots = [r["ctid"] for r in rows if r["part"] == part]
        deleted += _count(await conn.execute(sql, slots, cutoff))
    return deleted


def _count(status: str) -> int:
    """The row count of a command tag such as ``DELETE 42``."""
    return int(status.rsplit(" ", 1)[-1])
