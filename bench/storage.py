"""Growth: the same ingest rate, query latency and retention time at 1 M, 10 M and 50 M stored reports.

    .venv/bin/python -m bench.storage [--sizes 1M,10M,50M] [--rate 250k] [--spread] [--ahead 0] [--database-url URL]

One database grows through the sizes by days, at a fixed daily rate: at each size it holds that
many status reports, ``--rate`` a UTC day (one partition each) over as many of the last days as
that takes (at 250k a day: 4 days at 1 M, 40 at 10 M, 200 at 50 M), with a send, a message state
per message, a reply every 50 messages (linked to it) and the event feed's rows the service writes
for them (a state event at the send and at the settlement, one a report, one a reply), generated
straight into PostgreSQL with set-based SQL (``generate_series``, no HTTP). The ids have the
platform's shape (a UUID and a part number, in no order: the indexes keyed by them take random
inserts) and the raw bodies are the platform's (a report's and a reply's form, the send API's
result item), so that a row takes the room it takes at a service. A day holds the same at every
size, as a service at a steady rate keeps more and more days. Each day's messages go to the same
numbers (every recipient sent to every day), or with ``--spread`` to the next numbers of 5 million
(at 250k a day a number is sent to every 25 days; at 5k, once in 200). ``--ahead N`` makes N empty
day partitions ahead of today as well (every table), to see what many partitions cost a look-up
without a time. Then, once the fill is written out (a checkpoint, then the kernel's dirty pages)
and the database's files are in the page cache as a service that wrote its days in order would have
them (the newest days in memory; a size's fill writes them first: ``as_written``), one at a time:

- **ingest**: batches of the writer's size (1,000 reports of new messages, received now, ids and
  bodies as the platform's) through the writer's own ``store`` with its own after-insert steps
  (states, reply links, blacklist), in reports per second; and batches of 100 replies from numbers
  sent to yesterday, each linked to its number's latest send (every send to the number is a
  candidate), in replies per second;
- **queries**, in-process, one at a time: ``GET /v1/messages/{id}`` (a stored message, and an
  unknown id, which searches every day), ``GET /v1/messages?to=``, a page of every send from a
  point of the day (``?since=``) and the first page of the failed ones (``?state=failed``, from
  the oldest day kept; the API's own query functions), the blacklist check of 500 numbers, the dashboard views over 24 hours, a page of
  100 events from a point of the last day and the feed's head (``GET /v1/events``), a page of the
  replies' listing from the newest day filled (``GET /v1/uplinks``); p50 / p99
  in milliseconds, and what the machine read from its disks meanwhile (days no longer in
  memory); and the first ``GET /v1/messages/{id}`` of a new connection (planned over every
  partition, the plan not cached yet). The look-ups of a day and the dashboards read a day of
  the whole history, at random: once the history outgrows the machine's memory, mostly a day
  read from the disk. Each round also asks for a message of the last three days (the platform
  pushes a message's reports within 72 hours: what a service asks about most) and a page from
  a point of such a day, and reads the dashboards over yesterday, the newest day
  (``(the last 3 days)``, ``(yesterday)``);
- **retention**: ``receiver prune --older-than``, which drops the oldest 30 days (fewer when
  fewer are kept; the cutoff an hour into the next day) of every partitioned table whole; the
  time of the drops (the tables locked while their days are detached, and the drop of the
  detached days' files, from the first table's on: the two overlap), and of the whole prune (which also deletes, row by row, the hour
  of the day that straddles the cutoff).

The next size refills the days the prune emptied. Prints one table; check ``df -h`` first
(about 2.05 GB per million reports with their sends, states and events: it stops before a fill the
file system has no room for, unless the file system compresses). The embedded database goes to
``$TMPDIR``. The file system of the database's files (when PostgreSQL runs on this machine) is
printed first: where it is mounted with online ``discard`` (ext4, XFS), the drops wait for the
disk to discard each freed extent, and that, not PostgreSQL, is most of a month's drop (see
docs/storage.md, "Where a month's drop waits").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg

from receiver import logs, partitions, retention
from receiver.blacklist import store as blacklist_store
from receiver.config import Settings
from receiver.correlation import queries
from receiver.db import migrate
from receiver.events import feed
from receiver.protocol.events import StatusReport, Uplink
from receiver.records import Record, ReportRecord, UplinkRecord
from receiver.simulate.scenario import form
from receiver.writer import store
from receiver.writer_process import hooks

from .support import start_embedded, world_readable_tmpdir

# One day's messages $3 .. $4, sent through the day $2 to the numbers from the $7th of 5 million
# on; about 1.25 reports a message (every 4th has an ACCEPTD before its DELIVRD, every 13th
# fails). Their ids have the platform's shape (a UUID and a part number, in no order: the indexes
# keyed by them take random inserts, as a service's do), made from $1 and the message's number;
# the raw bodies are what the platform sends (a report's form, a reply's form, the send API's
# result item), and as long.
FILL_DAY = """
WITH i AS (SELECT i, at, number, md5($1 || i)::uuid::text || '_' || (1 + i % 9999) AS id,
                  CASE WHEN i % 50 = 0 THEN md5('u' || $1 || i)::uuid::text || '_0' END AS reply_id,
                  to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS created
           FROM (SELECT i, $2::timestamptz + (i - $3) * ($5::float8 / ($4 - $3 + 1)) * interval '1 second' AS at,
                        '+86131' || lpad(((i + $7) % 5000000)::text, 8, '0') AS number  -- the recipient, who also replies
                 FROM generate_series($3::bigint, $4::bigint) AS i) AS n),
sends AS (
    INSERT INTO sent_messages (sms_msg_id, "to", "from", status, create_time, country_id, total, raw)
    SELECT id, number, 'csms' || (i % 10), '000000', at, 'CN', 1,
           jsonb_build_object('originTo', number, 'createTime', created, 'from', 'csms' || (i % 10), 'smsMsgId', id,
                              'status', '000000', 'countryId', 'CN', 'total', 1)
    FROM i
),
states AS (
    INSERT INTO message_states (sms_msg_id, message_at, state, status, parts_total, parts_delivered, reports, sent,
                                sent_at, delivered_at, latency, reports_from, reports_until)
    SELECT id, at, CASE WHEN i % 13 = 0 THEN 'failed' ELSE 'delivered' END,
           CASE WHEN i % 13 = 0 THEN 'UNDELIV' ELSE 'DELIVRD' END, 1, (i % 13 <> 0)::int, 1 + (i % 4 = 0)::int,
           true, at, CASE WHEN i % 13 <> 0 THEN at + interval '6 seconds' END,
           CASE WHEN i % 13 <> 0 THEN interval '6 seconds' END,
           at + CASE WHEN i % 4 = 0 THEN interval '2 seconds' ELSE interval '6 seconds' END, at + interval '6 seconds'
    FROM i
),
indexed AS (
    INSERT INTO message_index (sms_msg_id, message_at) SELECT id, at FROM i
),
recipients AS (
    INSERT INTO recipient_index ("to", day)
    SELECT DISTINCT number, date_trunc('day', at, 'UTC') FROM i
    ON CONFLICT DO NOTHING
),
replies AS (
    INSERT INTO uplinks (application_id, sms_msg_id, "from", "to", body, raw_body, received_at, from_e164)
    SELECT $6, reply_id, number, 'csms' || (i % 10), 'ok',
           'smsMsgId=' || reply_id || '&from=' || replace(number, '+', '%2B') || '&to=csms' || (i % 10)
           || '&body=ok&createTime=' || replace(to_char((at + interval '1 minute') AT TIME ZONE 'UTC',
                                                        'YYYY-MM-DD"T"HH24:MI:SS"Z"'), ':', '%3A'),
           at + interval '1 minute', number
    FROM i WHERE reply_id IS NOT NULL
    RETURNING id, sms_msg_id, received_at, txid, reply_hour
),
reply_days AS (
    INSERT INTO uplink_days AS d (day, last_txid)
    SELECT date_trunc('day', received_at, 'UTC'), max(txid) FROM replies GROUP BY 1
    ON CONFLICT (day) DO UPDATE SET last_txid = greatest(d.last_txid, excluded.last_txid)
),
links AS (  -- each reply answers the message it follows
    INSERT INTO reply_links (uplink_id, sms_msg_id, candidates, match, uplink_received_at, reply_hour)
    SELECT r.id, i.id, 1, 'channel', r.received_at, r.reply_hour FROM replies r JOIN i ON i.reply_id = r.sms_msg_id
    ORDER BY r.received_at  -- in the order of time, as a service writes them
),
reply_days_of_messages AS (
    INSERT INTO reply_index (sms_msg_id, day)
    SELECT i.id, date_trunc('day', r.received_at, 'UTC') FROM replies r JOIN i ON i.reply_id = r.sms_msg_id
    ORDER BY r.received_at
    ON CONFLICT DO NOTHING
),
reports AS (
    INSERT INTO status_reports (application_id, sms_msg_id, status, total, sequence, source, update_time, raw_body,
                                via, received_at, stored_at, dedupe_key)
    SELECT $6, id, s.status, 1, 1, '2', at + s.after,
           'sequence=1&total=1&orgCode=' || CASE WHEN s.status = 'UNDELIV' THEN 'E200027' ELSE '000000' END
           || '&updateTime=' || replace(to_char((at + s.after) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), ':', '%3A')
           || '&source=2&smsMsgId=' || id || '&status=' || s.status,
           'form', at + s.after, at + s.after, decode(md5(id || s.status), 'hex')
    FROM i CROSS JOIN LATERAL (VALUES (interval '2 seconds', 'ACCEPTD'),
                                      (interval '6 seconds', CASE WHEN i % 13 = 0 THEN 'UNDELIV' ELSE 'DELIVRD' END))
         AS s(after, status)
    WHERE s.status <> 'ACCEPTD' OR i % 4 = 0
    RETURNING id, sms_msg_id, received_at
)
-- The event feed, as the service writes it: a state event when the send is registered (pending)
-- and when the message is settled, an event a report (its data read from the report) and a reply.
INSERT INTO events (kind, sms_msg_id, number, report_id, report_received_at, data, state, previous, status,
                    parts_total, parts_delivered, registered, sent_at, delivered_at, latency, at)
SELECT 'state', id, number, NULL::bigint, NULL::timestamptz,
       NULL::jsonb, 'pending', NULL::text, '000000', 1, 0, true, at, NULL::timestamptz, NULL::interval, at
FROM i
UNION ALL
SELECT 'report', sms_msg_id, NULL, id, received_at, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       received_at
FROM reports
UNION ALL
SELECT 'state', id, number, NULL, NULL, NULL,
       CASE WHEN i % 13 = 0 THEN 'failed' ELSE 'delivered' END, 'pending',
       CASE WHEN i % 13 = 0 THEN 'UNDELIV' ELSE 'DELIVRD' END, 1, (i % 13 <> 0)::int, true, at,
       CASE WHEN i % 13 <> 0 THEN at + interval '6 seconds' END, CASE WHEN i % 13 <> 0 THEN interval '6 seconds' END,
       at + interval '6 seconds'
FROM i
UNION ALL
(SELECT 'reply', r.sms_msg_id, number, NULL, NULL,
       jsonb_build_object('to', 'csms' || (i % 10), 'body', 'ok', 'from', number,
                          'match', 'channel', 'reply_to', i.id, 'ambiguous', false, 'candidates', 1,
                          'application', 'bench', 'create_time', at, 'received_at', r.received_at,
                          'unlinked_reason', NULL),
       NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, r.received_at
 FROM i JOIN replies r ON r.sms_msg_id = i.reply_id ORDER BY r.received_at)
"""

_SIZES = {"k": 1_000, "M": 1_000_000}


def parse_size(text: str) -> int:
    return int(float(text[:-1]) * _SIZES[text[-1]]) if text[-1] in _SIZES else int(text)


async def fill(conn: asyncpg.Connection, reports: int, days: int, spread: bool = False) -> float:
    """Bring every one of the last ``days`` days up to ``reports / days`` reports, and make their
    partitions; seconds taken. Each day's messages go to the same numbers, or with ``spread`` to
    the next ones of 5 million (a number sent to every 5 million / messages a day days)."""
    t0 = time.perf_counter()
    app_id = await conn.fetchval(
        "INSERT INTO applications (name, token_hash) VALUES ('bench', '\\x00') ON CONFLICT (name)"
        " DO UPDATE SET name = 'bench' RETURNING id"
    )
    today = datetime.now(UTC).date()
    # History, not news: no event feed rows, no foreign key checks (the rows are made consistent).
    await conn.execute("SET session_replication_role = replica")
    messages_per_day = int(reports / days / 1.25)
    run = random.getrandbits(24)  # this fill's messages, whatever an earlier one left
    for back in range(days, 0, -1):
        day = today - timedelta(days=back)
        for table in partitions.TABLES:
            await partitions.create(conn, table, day)
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        have = int(await conn.fetchval(  # messages with reports that day (a prune may have left sends)
            "SELECT count(*) / 1.25 FROM status_reports WHERE received_at >= $1 AND received_at < $2",
            start, start + timedelta(days=1),
        ))  # fmt: skip
        if have >= messages_per_day:
            continue
        # Each stage's messages of the day have their own prefix; they are sent in between the others.
        prefix = f"d{day:%Y%m%d}-{reports}-{run}-"
        # The day's events are written after the service's partition job would have closed it: open
        # it again, and close it once written, as the job does the day after (and it closes the
        # days one after the other, so that a closed day bounds the txids it holds).
        await conn.execute("DELETE FROM events_closed_days WHERE part = to_regclass($1)", partitions.name("events", day))
        first = (day.toordinal() * messages_per_day) % 5_000_000 if spread else 0
        await conn.execute(FILL_DAY, prefix, start, 1, messages_per_day - have, 86_000.0, app_id, first)
        await conn.execute("SELECT receiver_events_close($1)", start + timedelta(days=1))
    await conn.execute("RESET session_replication_role")
    await conn.execute("VACUUM ANALYZE")
    return time.perf_counter() - t0


async def settle(conn: asyncpg.Connection) -> float:
    """Write the fill out before measuring (a checkpoint, then the kernel's dirty pages): gigabytes
    just generated would otherwise still be going to the disk under the measured queries, which
    a service that keeps its days does not do. Seconds taken."""
    t0 = time.perf_counter()
    await conn.execute("CHECKPOINT")
    await asyncio.to_thread(os.sync)
    return time.perf_counter() - t0


# The files of each relation named ($1, in order): its heap, its TOAST table and their indexes.
_FILES = """
WITH named AS (SELECT rel, n FROM unnest($1::regclass[]) WITH ORDINALITY AS u(rel, n)),
rels AS (
    SELECT rel, n FROM named
    UNION ALL SELECT c.reltoastrelid, n FROM named JOIN pg_class c ON c.oid = rel WHERE c.reltoastrelid <> 0
), every AS (
    SELECT rel, n FROM rels UNION ALL SELECT x.indexrelid, n FROM rels JOIN pg_index x ON x.indrelid = rel
)
SELECT pg_relation_filepath(rel) AS path FROM every ORDER BY n
"""
# The tables that are not partitions, and their indexes (applications, the blacklist: what a
# service reads all the time).
_OTHER_FILES = """
SELECT pg_relation_filepath(c.oid) AS path FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i') AND NOT c.relispartition
"""


async def as_written(conn: asyncpg.Connection, data: str) -> tuple[float, float]:
    """Leave the database's files in the page cache as a service that wrote its days in order
    would have them: its newest days in memory, as much of the older ones as memory holds after
    them. A size's fill writes the days older than those an earlier size left, so after it the
    newest days would be the furthest from memory. Each file's pages are first dropped from the
    cache (``POSIX_FADV_DONTNEED``; the fill is written out, so they are clean), then every
    partition's files read once, oldest first by where their time range ends (the monthly
    indexes' current month after the days before it), the other tables' last. Gigabytes read and
    seconds taken."""
    t0 = time.perf_counter()
    kept = [part for table in await partitions.partitioned(conn) for part in await partitions.partitions(conn, table)]
    kept.sort(key=lambda part: (part.upper is not None, part.upper))  # the defaults (no time) first
    rows = [*await conn.fetch(_FILES, [part.name for part in kept]), *await conn.fetch(_OTHER_FILES)]
    files = [os.path.join(data, row["path"]) for row in rows if row["path"]]
    read = await asyncio.to_thread(_read_in_order, files)
    return read / 1e9, time.perf_counter() - t0


def _segments(path: str) -> list[str]:
    """A relation's files: the first, then its 1 GB segments (``.1``, ``.2``...)."""
    found, n = [], 0
    while os.path.exists(name := path if n == 0 else f"{path}.{n}"):
        found.append(name)
        n += 1
    return found


def _read_in_order(paths: list[str]) -> int:
    """Drop every file's pages from the page cache, then read the files in order; bytes read. A
    file that is gone (dropped meanwhile) or not readable (a server of another user's) is left."""
    segments = [segment for path in paths for segment in _segments(path)]
    for segment in segments:
        if (fd := _open(segment)) >= 0:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
    buffer, read = bytearray(1 << 20), 0
    for segment in segments:
        if (fd := _open(segment)) < 0:
            continue
        try:
            while chunk := os.readv(fd, [buffer]):
                read += chunk
        finally:
            os.close(fd)
    return read


def _open(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY)
    except (FileNotFoundError, PermissionError):
        return -1


def platform_id() -> str:
    """A message id of the platform's shape: a UUID and a part number (``..._6``), at random."""
    return f"{uuid.UUID(int=random.getrandbits(128), version=4)}_{random.randrange(1, 10_000)}"


async def _through_writer(conn: asyncpg.Connection, batches: int, batch: Callable[[int, int], list[Record]]) -> float:
    """Records per second through the writer's own ``store`` and after-insert steps, ``batches``
    batches made by ``batch(app_id, b)``."""
    steps = hooks(Settings(database_url="postgresql://unused"))
    app_id = await conn.fetchval("SELECT id FROM applications WHERE name = 'bench'")
    stored, elapsed = 0, 0.0
    for b in range(batches):
        records = batch(app_id, b)
        t0 = time.perf_counter()
        await store(conn, records, steps)
        elapsed += time.perf_counter() - t0
        stored += len(records)
    return stored / elapsed


async def ingest(conn: asyncpg.Connection, batches: int, size: int = 1000) -> float:
    """Reports per second through the writer's store, batches of ``size`` new reports."""

    def batch(app_id: int, b: int) -> list[Record]:
        now = datetime.now(UTC)
        updated = f"{now:%Y-%m-%dT%H:%M:%SZ}"
        ids = [platform_id() for _ in range(size)]
        return [ReportRecord(app_id, "form", now,
                             form([("sequence", "1"), ("total", "1"), ("orgCode", "000000"), ("updateTime", updated),
                                   ("source", "2"), ("smsMsgId", sms_msg_id), ("status", "DELIVRD")]).decode(),
                             StatusReport(sms_msg_id, "DELIVRD", 1, 1, update_time=now, source="2"))
                for sms_msg_id in ids]  # fmt: skip

    return await _through_writer(conn, batches, batch)


async def ingest_replies(conn: asyncpg.Connection, batches: int, size: int = 100) -> float:
    """Replies per second through the writer's store, batches of ``size`` replies (received now)
    from numbers sent to yesterday, each linked to its number's latest send."""
    yesterday = datetime.now(UTC) - timedelta(days=1)
    numbers = [row["to"] for row in await conn.fetch(
        'SELECT "to" FROM sent_messages WHERE create_time >= $1 AND create_time < $2 LIMIT $3',
        yesterday - timedelta(hours=1), yesterday, batches * size,
    )]  # fmt: skip
    if not numbers:
        return 0.0

    def batch(app_id: int, b: int) -> list[Record]:
        now = datetime.now(UTC)
        created = f"{now:%Y-%m-%dT%H:%M:%SZ}"
        replies = [(platform_id(), numbers[(b * size + i) % len(numbers)]) for i in range(size)]
        return [UplinkRecord(app_id, now,
                             form([("smsMsgId", sms_msg_id), ("from", number), ("to", "csms1"), ("body", "ok"),
                                   ("createTime", created)]).decode(),
                             Uplink(sms_msg_id, number, "csms1", "ok"))
                for sms_msg_id, number in replies]  # fmt: skip

    return await _through_writer(conn, batches, batch)


async def query_latencies(conn: asyncpg.Connection, days: int, rounds: int) -> dict[str, list[float]]:
    today = datetime.now(UTC).date()
    results: dict[str, list[float]] = {}

    def timed(name: str, started: float) -> None:
        results.setdefault(name, []).append((time.perf_counter() - started) * 1000)

    views = ("dashboard_delivery_hourly", "dashboard_failures_hourly", "dashboard_reports_hourly",
             "dashboard_replies_hourly")  # fmt: skip
    # The event feed: a follower a little behind reads a page from some point of the last day
    # (the day's events, the fill's, share a transaction); one that has caught up reads its head.
    yesterday = partitions.name("events", today - timedelta(days=1))
    behind = await conn.fetchrow(f"SELECT txid::text AS txid, min(id) AS lo, max(id) AS hi FROM {yesterday}"
                                 " GROUP BY txid ORDER BY count(*) DESC LIMIT 1")  # fmt: skip
    # The replies' listing, a follower a day behind: from the replies of the newest day filled. It
    # pages by transaction, and the fill is not in the order of time: it writes the days oldest
    # first, a transaction each, and a size's fill the days older than those an earlier size left,
    # so yesterday's replies may have been stored before most days'.
    replies_behind = await conn.fetchrow(
        "SELECT txid::text AS txid, min(id) AS id FROM uplinks WHERE txid = (SELECT max(txid) FROM uplinks) GROUP BY txid"
    )

    async def a_day(day: date, recent: str = "") -> str | None:
        """A stored message of ``day`` asked for, then a page of the sends from a point of it; the
        message's recipient, None when the day has none."""
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        # The first message sent after a point of the day, or the day's first when none is.
        ids = await conn.fetch(_MESSAGE_OF_A_DAY, start + timedelta(seconds=random.randrange(86_000)), start + ONE_DAY)
        ids = ids or await conn.fetch(_MESSAGE_OF_A_DAY, start, start + ONE_DAY)
        if not ids:
            return None
        sms_msg_id, to = ids[0]
        t0 = time.perf_counter()
        await queries.message(conn, sms_msg_id)
        timed("GET /v1/messages/{id}" + recent, t0)
        t0 = time.perf_counter()
        await queries.messages(conn, to=None, state=None, since=start + timedelta(seconds=random.randrange(86_000)),
                               until=None, cursor=None, limit=20)  # fmt: skip
        timed("GET /v1/messages?since=" + recent, t0)
        return str(to)

    async def dashboards(day: date, which: str) -> None:
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        for view in views:
            t0 = time.perf_counter()
            await conn.fetch(f"SELECT * FROM {view} WHERE bucket >= $1 AND bucket < $2", start, start + ONE_DAY)
            timed(f"{view} ({which})", t0)

    for _ in range(rounds):
        # What a history costs: a day of any of those kept, most of them no longer in memory once
        # the history outgrows it. What a service asks most: its messages of the last days (the
        # platform pushes a message's reports within 72 hours), the dashboards' newest day.
        day = today - timedelta(days=random.randint(1, days))
        to = await a_day(day)
        if to is None:
            continue
        await a_day(today - timedelta(days=random.randint(1, min(days, RECENT_DAYS))), RECENT)
        t0 = time.perf_counter()
        await queries.message(conn, f"unknown-{random.getrandbits(32)}")
        timed("GET /v1/messages/{unknown id}", t0)
        t0 = time.perf_counter()
        await queries.messages(conn, to=to, state=None, since=None, until=None, cursor=None, limit=20)
        timed("GET /v1/messages?to=", t0)
        t0 = time.perf_counter()
        await queries.messages(conn, to=None, state="failed", since=None, until=None, cursor=None, limit=20)
        timed("GET /v1/messages?state=failed (the first page)", t0)
        numbers = [f"+86131{random.randrange(5_000_000):08d}" for _ in range(500)]
        t0 = time.perf_counter()
        await blacklist_store.blacklisted(conn, numbers)
        timed("blacklist check, 500 numbers", t0)
        await dashboards(day, "24 h")
        await dashboards(today - timedelta(days=1), "yesterday")
        if behind is not None:
            t0 = time.perf_counter()
            await feed.page(conn, feed.Position(behind["txid"], random.randint(behind["lo"], behind["hi"])), limit=100)
            timed("event feed, a page of 100", t0)
        t0 = time.perf_counter()
        await feed.page(conn, await feed.now(conn), limit=100)
        timed("event feed at its head", t0)
        if replies_behind is not None:
            t0 = time.perf_counter()
            await queries.uplinks(conn, cursor=queries.encode_cursor(replies_behind["txid"], replies_behind["id"]),
                                  limit=100)  # fmt: skip
            timed("GET /v1/uplinks, a page of 100", t0)
    return results


async def first_query(url: str, rounds: int = 5) -> float:
    """Milliseconds of the first ``GET /v1/messages/{id}`` on a new connection (median of ``rounds``):
    planned over every partition, nothing cached yet."""
    samples = []
    for _ in range(rounds):
        conn = await asyncpg.connect(url)
        try:
            sms_msg_id = await conn.fetchval("SELECT sms_msg_id FROM sent_messages ORDER BY create_time DESC LIMIT 1")
            t0 = time.perf_counter()
            await queries.message(conn, sms_msg_id)
            samples.append((time.perf_counter() - t0) * 1000)
        finally:
            await conn.close()
    return statistics.median(samples)


async def make_ahead(conn: asyncpg.Connection, ahead: int) -> None:
    """Empty day partitions of every table, ``ahead`` days beyond the week the service keeps."""
    today = datetime.now(UTC).date()
    for offset in range(partitions.DAYS_AHEAD + 1, partitions.DAYS_AHEAD + 1 + ahead):
        for table in partitions.TABLES:
            await partitions.create(conn, table, today + timedelta(days=offset))


async def partition_count(conn: asyncpg.Connection) -> int:
    """Partitions of ``status_reports`` (every partitioned table has as many)."""
    return int(await conn.fetchval("SELECT count(*) FROM receiver_partitions('status_reports')"))


async def prune_month(conn: asyncpg.Connection, url: str, days: int) -> retention.Result:
    """Prune the oldest 30 days, or all but the newest when fewer are kept, as ``receiver prune``
    does (its drops on connections of their own); the result's ``drop_seconds`` is the time of the
    drops, ``lock_seconds`` and ``file_seconds`` its two steps (which overlap)."""
    first_kept = datetime.now(UTC).date() - timedelta(days=days - min(30, days - 1))  # the days filled end yesterday
    cutoff = datetime(first_kept.year, first_kept.month, first_kept.day, tzinfo=UTC) + timedelta(hours=1)
    return await retention.prune(conn, datetime.now(UTC) - cutoff, connect=lambda: asyncpg.connect(url))


def _mount(path: str, mounts_text: str | None = None) -> tuple[str, str, dict[str, str]] | None:
    """The mount point, file system and options (``name`` -> ``value``, ``""`` for a flag) of
    the longest mount point above ``path`` (Linux's ``/proc/self/mounts``); None where unknown."""
    try:
        if mounts_text is None:
            mounts_text = Path("/proc/self/mounts").read_text()
    except OSError:
        return None
    mounts = [line.split()[1:4] for line in mounts_text.splitlines()]
    target = Path(path).resolve()
    found = max((m for m in mounts if target.is_relative_to(m[0])), key=lambda m: len(m[0]), default=None)
    if found is None:
        return None
    point, kind, options = found
    return point, kind, dict(option.partition("=")[::2] for option in options.split(","))


def compression(path: str, mounts_text: str | None = None) -> str | None:
    """How the file system holding ``path`` compresses what it writes (btrfs's ``compress`` or
    ``compress-force``), or None."""
    mount = _mount(path, mounts_text)
    return _compression(mount[2]) if mount else None


def _compression(flags: dict[str, str]) -> str | None:
    found = flags.get("compress-force") or flags.get("compress")
    return found if found and found != "no" else None


def file_system(path: str, mounts_text: str | None = None) -> str:
    """The file system holding ``path``, whether it discards freed blocks online (and waits for
    the discards: ext4's and XFS's ``discard``; btrfs's ``discard=async`` queues them), and
    whether it compresses what it writes."""
    mount = _mount(path, mounts_text)
    if mount is None:
        return "unknown"
    point, kind, flags = mount
    if "discard" not in flags:
        notes = ["no online discard"]
    elif flags["discard"] == "async":
        notes = ["online discard, queued"]
    else:
        notes = ["online discard"]
    compressed = _compression(flags)
    if compressed:
        notes.append(f"compressed: {compressed}; a GB of the database takes less on the disk")
    return f"{kind} at {point} ({', '.join(notes)})"


ONE_DAY = timedelta(days=1)
_MESSAGE_OF_A_DAY = """
SELECT sms_msg_id, "to" FROM sent_messages WHERE create_time >= $1 AND create_time < $2 ORDER BY create_time LIMIT 1
"""
RECENT_DAYS = 3  # the platform pushes a message's reports within 72 hours
RECENT = f" (the last {RECENT_DAYS} days)"
BYTES_PER_REPORT = 2_050  # a report with its share of sends, states, replies, links and events (2.05 GB a million)


def space_needed(stored: int, reports: int) -> int:
    """Bytes a fill from ``stored`` to ``reports`` reports writes, at ``BYTES_PER_REPORT``."""
    return max(0, reports - stored) * BYTES_PER_REPORT


def disk_reads(vmstat: Path = Path("/proc/vmstat")) -> int:
    """Bytes this machine has read from its block devices (Linux's ``pgpgin``, in KiB), 0 where
    it does not say: a query's p99 that grows with the history is its days read from the disk."""
    try:
        for line in vmstat.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "pgpgin":
                return int(value) * 1024
    except (OSError, ValueError):
        pass
    return 0


def p50_p99(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def stage(
    url: str, reports: int, days: int, rounds: int, batches: int, ahead: int, spread: bool = False
) -> dict[str, object]:
    conn = await asyncpg.connect(url)
    try:
        await migrate.apply(conn)
        await partitions.ensure(conn)
        await make_ahead(conn, ahead)
        try:
            data = await conn.fetchval("SHOW data_directory")
        except asyncpg.InsufficientPrivilegeError:  # a role without pg_read_all_settings
            data = None
        local = data is not None and os.path.isdir(data)  # PostgreSQL on this machine
        where = file_system(data) if local else "unknown"
        buffers = await conn.fetchval("SHOW shared_buffers")
        print(f"  database files: {where}; shared_buffers {buffers}", flush=True)
        if local:
            needed = space_needed(await conn.fetchval("SELECT count(*) FROM status_reports"), reports)
            free = shutil.disk_usage(data).free
            if needed > free and not compression(data):
                raise SystemExit(
                    f"the fill to {reports:,} reports needs about {needed / 1e9:.0f} GB, and {data} has"
                    f" {free / 1e9:.0f} GB free: free space, or put the database elsewhere (TMPDIR, --database-url)"
                )  # fmt: skip
            used_before = shutil.disk_usage(data).used
        filled = await fill(conn, reports, days, spread)
        settled = await settle(conn)
        stored = await conn.fetchval("SELECT count(*) FROM status_reports")
        size = await conn.fetchval("SELECT pg_database_size(current_database())")
        parts = await partition_count(conn)
        on_disk = f", the file system {(shutil.disk_usage(data).used - used_before) / 1e9:+.1f} GB" if local else ""
        print(f"  {stored:,} reports stored over {days} days ({size / 1e9:.1f} GB{on_disk}, {parts} partitions a"
              f" table), filled in {filled:.0f} s, written out in {settled:.0f} s", flush=True)  # fmt: skip
        if local:
            gigabytes, seconds = await as_written(conn, data)
            print(f"  the page cache as written: {gigabytes:.1f} GB read in order, {seconds:.0f} s", flush=True)
        rate = await ingest(conn, batches)
        print(f"  ingest {rate:,.0f} reports/s", flush=True)
        replies = await ingest_replies(conn, batches)
        print(f"  ingest {replies:,.0f} replies/s", flush=True)
        read_before = disk_reads()
        latencies = await query_latencies(conn, days, rounds)
        read = disk_reads() - read_before
        if local and read_before:
            print(f"  read from the disks during the queries: {read / 1e9:.2f} GB (the kernel's pgpgin)", flush=True)
        first = await first_query(url)
        print(f"  first GET /v1/messages/{{id}} of a new connection {first:.1f} ms", flush=True)
        t0 = time.perf_counter()
        pruned = await prune_month(conn, url, days)
        whole = time.perf_counter() - t0
        by_table = ", ".join(f"{table} {seconds:.2f}" for table, seconds in pruned.table_seconds.items())
        print(f"  prune: {len(pruned.dropped)} partitions dropped in {pruned.drop_seconds:.2f} s: tables locked"
              f" {pruned.lock_seconds:.2f} s ({by_table}), files {pruned.file_seconds:.2f} s;"
              f" whole prune {whole:.1f} s", flush=True)  # fmt: skip
        return {"reports": stored, "days": days, "partitions": parts, "ingest": rate, "replies": replies,
                "latencies": latencies,
                "first": first, "drop": pruned.drop_seconds, "locked": pruned.lock_seconds,
                "files": pruned.file_seconds, "prune": whole, "dropped": len(pruned.dropped),
                "gone": pruned.counts["status_reports"]}  # fmt: skip
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1M,10M,50M", help="stored reports at each stage (default 1M,10M,50M)")
    parser.add_argument("--rate", default="250k", help="stored reports a day (default 250k: 40 days at 10M)")
    parser.add_argument("--ahead", type=int, default=0, help="empty day partitions beyond the week ahead")
    parser.add_argument("--rounds", type=int, default=300, help="query rounds at each stage")
    parser.add_argument("--batches", type=int, default=20, help="ingest batches of 1,000 at each stage")
    parser.add_argument("--database-url", help="grow this database instead of a new embedded one")
    parser.add_argument("--keep", action="store_true", help="keep the embedded database's folder")
    parser.add_argument("--spread", action="store_true",
                        help="each day's messages to the next numbers of 5 million, not the same ones every day")  # fmt: skip
    args = parser.parse_args()
    logs.configure("warning", "console")
    base = server = None
    url = args.database_url
    if url is None:
        base = world_readable_tmpdir("receiver-bench-storage-")
        server = start_embedded(base)
        url = server.url
    results = []
    try:
        rate = parse_size(args.rate)
        for text in args.sizes.split(","):
            days = max(1, round(parse_size(text) / rate))
            print(f"growing to {text} reports, {args.rate} a day: {days} days ...", flush=True)
            results.append(asyncio.run(stage(url, days * rate, days, args.rounds, args.batches, args.ahead, args.spread)))
    finally:
        if server is not None:
            server.stop()
        if base is not None and not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    names = list(results[0]["latencies"])  # type: ignore[call-overload]
    print()
    print("| stored reports | days | partitions a table | ingest reports/s | ingest replies/s | "
          + " | ".join(f"{n} p50 / p99 ms" for n in names)
          + " | first query of a new connection ms | drop the oldest days' partitions | whole prune |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|" + "---:|" * len(names) + "---:|---:|---:|")
    for r in results:
        cells = [f"{p50:.2f} / {p99:.2f}" for p50, p99 in (p50_p99(r["latencies"][n]) for n in names)]  # type: ignore[index]
        print(f"| {r['reports']:,} | {r['days']} | {r['partitions']} | {r['ingest']:,.0f} | {r['replies']:,.0f} | "
              + " | ".join(cells)
              + f" | {r['first']:.1f} | {r['dropped']} partitions, {r['drop']:.2f} s"
              + f" (tables locked {r['locked']:.2f} s, files {r['files']:.2f} s) | {r['prune']:.1f} s |")  # fmt: skip


if __name__ == "__main__":
    main()
