"""Moves journal records into PostgreSQL, in batches, idempotently.

Each batch is one transaction of ``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING``
per table, so a replayed or duplicated event is a no-op. While PostgreSQL is unreachable the
writer backs off and retries the same batch; the journal keeps acknowledging meanwhile. A record
PostgreSQL refuses for its data (a poison record) goes to the quarantine table instead of
blocking the ones behind it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog

from . import db, metrics, numbers, partitions, records
from .correlation.store import lock_messages
from .journal.reader import JournalReader
from .pacing import Pacing
from .records import QuarantineRecord, Record, ReportRecord, UplinkRecord

log = structlog.get_logger(__name__)

Connect = Callable[[], Awaitable[asyncpg.Connection]]

# A copy the platform pushed again is received later than the first, possibly in the next day's
# partition, where no unique key can see the first (a key of a partitioned table holds the
# partition column). So each insert looks for stored copies itself: rows of the same messages with
# the same key received within REPEAT_WINDOW of the new one ($lo, $hi: the batch's span widened
# by it), under the messages' advisory locks, taken before (another writer storing the same
# message commits first, and this statement sees its rows). In a batch, the first copy (by
# receipt time) goes in. The unique keys catch a journal record stored twice (same receipt time).
# The platform pushes again within 72 hours (docs/storage.md).
REPEAT_WINDOW = partitions.WINDOW

_INSERT_REPORTS = """
WITH n AS (
    SELECT * FROM unnest($1::integer[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::text[],
        $7::smallint[], $8::smallint[], $9::text[], $10::text[], $11::timestamptz[], $12::text[], $13::text[],
        $14::text[], $15::jsonb[], $16::bytea[]) WITH ORDINALITY
        AS n(application_id, via, received_at, raw_body, sms_msg_id, status, total, sequence, status_desc, source,
             update_time, extend, "to", org_code, extra, dedupe_key, ord)
),
stored AS (
    SELECT dedupe_key, received_at FROM status_reports
    WHERE sms_msg_id = ANY($5::text[]) AND dedupe_key = ANY($16::bytea[]) AND received_at BETWEEN $17 AND $18
),
first AS (SELECT DISTINCT ON (dedupe_key) * FROM n ORDER BY dedupe_key, received_at, ord),
inserted AS (
    INSERT INTO status_reports (application_id, via, received_at, raw_body, sms_msg_id, status, total,
        sequence, status_desc, source, update_time, extend, "to", org_code, extra, dedupe_key)
    SELECT application_id, via, received_at, raw_body, sms_msg_id, status, total, sequence, status_desc, source,
           update_time, extend, "to", org_code, extra, dedupe_key
    FROM first f
    WHERE NOT EXISTS (SELECT FROM stored s WHERE s.dedupe_key = f.dedupe_key
                      AND s.received_at BETWEEN f.received_at - $19::interval AND f.received_at + $19::interval)
    ORDER BY ord
    ON CONFLICT (sms_msg_id, dedupe_key, received_at) DO NOTHING
    RETURNING id, application_id, sms_msg_id, status, "to", update_time, received_at
),
-- each report stored now is announced on the event feed (a reference: the feed reads the report)
announced AS (
    INSERT INTO events (kind, sms_msg_id, report_id, report_received_at)
    SELECT 'report', sms_msg_id, id, received_at FROM inserted ORDER BY id
)
SELECT * FROM inserted
"""

_INSERT_UPLINKS = """
WITH n AS (
    SELECT * FROM unnest($1::integer[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[],
        $7::text[], $8::timestamptz[], $9::jsonb[], $10::text[]) WITH ORDINALITY
        AS n(application_id, received_at, raw_body, sms_msg_id, "from", "to", body, create_time, extra, from_e164,
             ord)
),
stored AS (
    SELECT application_id, sms_msg_id, received_at FROM uplinks
    WHERE sms_msg_id = ANY($4::text[]) AND received_at BETWEEN $11 AND $12
),
first AS (SELECT DISTINCT ON (application_id, sms_msg_id) * FROM n ORDER BY application_id, sms_msg_id, received_at, ord),
inserted AS (
    INSERT INTO uplinks (application_id, received_at, raw_body, sms_msg_id, "from", "to", body, create_time, extra,
        from_e164)
    SELECT application_id, received_at, raw_body, sms_msg_id, "from", "to", body, create_time, extra, from_e164
    FROM first f
    WHERE NOT EXISTS (SELECT FROM stored s WHERE s.application_id = f.application_id AND s.sms_msg_id = f.sms_msg_id
                      AND s.received_at BETWEEN f.received_at - $13::interval AND f.received_at + $13::interval)
    ORDER BY ord
    ON CONFLICT (sms_msg_id, application_id, received_at) DO NOTHING
    RETURNING id, application_id, sms_msg_id, "from", "to", body, received_at, txid::text AS txid
)
SELECT * FROM inserted ORDER BY id
"""

# The newest transaction of each day of receipt of the replies stored now (sql/027_uplink_days.sql),
# in the days' order. The transaction's last statement: a day's row stays locked only while it
# commits, so a concurrent writer that waits for the row never holds what this one waits for.
_UPLINK_DAYS = """
INSERT INTO uplink_days AS d (day, last_txid)
SELECT date_trunc('day', received_at, 'UTC'), max(txid::xid8)
FROM unnest($1::timestamptz[], $2::text[]) AS n(received_at, txid)
GROUP BY 1 ORDER BY 1
ON CONFLICT (day) DO UPDATE SET last_txid = greatest(d.last_txid, excluded.last_txid)
"""

_INSERT_QUARANTINE = """
INSERT INTO quarantine (record_id, application_id, endpoint, received_at, error, detail, content_type, raw_body,
    body_bytes, occurrences)
SELECT * FROM unnest($1::uuid[], $2::integer[], $3::text[], $4::timestamptz[], $5::text[], $6::jsonb[],
    $7::text[], $8::bytea[], $9::integer[], $10::integer[])
ON CONFLICT (record_id, received_at) DO NOTHING
RETURNING record_id
"""

# Only records inserted now are counted: a replayed record (same record_id) counts nothing.
# Rows come sorted by key, so concurrent writers lock counters in one order.
_COUNT_QUARANTINE = """
INSERT INTO quarantine_counts AS c (application_id, endpoint, error, hour, refusals, first_at, last_at)
SELECT * FROM unnest($1::integer[], $2::text[], $3::text[], $4::timestamptz[], $5::bigint[], $6::timestamptz[],
    $7::timestamptz[])
ON CONFLICT ((coalesce(application_id, 0)), endpoint, error, hour) DO UPDATE
SET refusals = c.refusals + excluded.refusals,
    first_at = least(c.first_at, excluded.first_at),
    last_at = greatest(c.last_at, excluded.last_at)
"""

# The newest ``$1`` rows stay; older ones go, at most 10,000 per call. One writer at a time.
_TRIM_QUARANTINE = """
DELETE FROM quarantine
WHERE id IN (
    SELECT id FROM quarantine
    WHERE id < (SELECT id FROM quarantine ORDER BY id DESC OFFSET $1 - 1 LIMIT 1)
    ORDER BY id LIMIT 10000
)
"""
_TRIM_LOCK = 0x5154_524D  # "QTRM"


# What follows from new events (delivery state, opt-outs) happens in the same transaction, and
# only for rows inserted now: a duplicate or a replay changes nothing downstream either.
AfterInsert = Callable[[asyncpg.Connection, list[asyncpg.Record], list[asyncpg.Record]], Awaitable[None]]


async def store(conn: asyncpg.Connection, batch: Sequence[Record], after_insert: Sequence[AfterInsert] = ()) -> int:
    """Insert a batch in one transaction; events already stored are left as they are. Returns the
    number of quarantine rows inserted."""
    reports = [r for r in batch if isinstance(r, ReportRecord)]
    uplinks = [r for r in batch if isinstance(r, UplinkRecord)]
    refused = [r for r in batch if isinstance(r, QuarantineRecord)]
    async with conn.transaction():
        new_reports: list[asyncpg.Record] = []
        new_uplinks: list[asyncpg.Record] = []
        if reports or uplinks:
            await lock_messages(conn, [r.event.sms_msg_id for r in reports] + [r.event.sms_msg_id for r in uplinks])
            await db.plan_each_time(conn)  # the look-ups of stored copies read the days of their span
            if reports:
                await _check_applications(conn, {r.application_id for r in reports})
                span = _span(r.received_at for r in reports)
                new_reports = await conn.fetch(_INSERT_REPORTS, *_columns(_report_row(r) for r in reports), *span)
            if uplinks:
                span = _span(r.received_at for r in uplinks)
                new_uplinks = await conn.fetch(_INSERT_UPLINKS, *_columns(_uplink_row(r) for r in uplinks), *span)
            await db.plan_as_usual(conn)
        if new_reports or new_uplinks:
            for hook in after_insert:
                await hook(conn, new_reports, new_uplinks)
        quarantined = 0
        if refused:
            inserted = await conn.fetch(_INSERT_QUARANTINE, *_columns(_quarantine_row(r) for r in refused))
            if inserted:
                new = {row["record_id"] for row in inserted}
                await _count_quarantined(conn, [r for r in refused if r.record_id in new])
                quarantined = len(inserted)
        if new_uplinks:
            await conn.execute(_UPLINK_DAYS, [r["received_at"] for r in new_uplinks], [r["txid"] for r in new_uplinks])
    return quarantined


# The applications a batch of reports names, each locked as a foreign key would lock it (no one
# deletes it until the batch is stored); sql/021_report_applications.sql says why the reports'
# foreign key is checked here, once a batch, instead.
_LOCK_APPLICATIONS = "SELECT id FROM applications WHERE id = ANY($1::integer[]) FOR KEY SHARE"


async def _check_applications(conn: asyncpg.Connection, ids: set[int]) -> None:
    """Refuse a batch that names an application that is not there, as the foreign key did."""
    missing = ids - {row["id"] for row in await conn.fetch(_LOCK_APPLICATIONS, list(ids))}
    if missing:
        raise asyncpg.ForeignKeyViolationError(f"no application with id {', '.join(map(str, sorted(missing)))}")


async def _count_quarantined(conn: asyncpg.Connection, refused: list[QuarantineRecord]) -> None:
    counts: dict[tuple[int | None, str, str, datetime], list[Any]] = {}
    for r in refused:
        hour = r.received_at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        first = r.first_at or r.received_at
        count = counts.get((r.application_id, r.endpoint, r.error, hour))
        if count is None:
            counts[(r.application_id, r.endpoint, r.error, hour)] = [r.occurrences, first, r.received_at]
        else:
            count[0] += r.occurrences
            count[1] = min(count[1], first)
            count[2] = max(count[2], r.received_at)
    keys = sorted(counts, key=lambda k: (k[0] or 0, k[1], k[2], k[3]))
    rows = [(*key, *counts[key]) for key in keys]
    await conn.execute(_COUNT_QUARANTINE, *_columns(rows))
    by_label = collections.Counter[tuple[str, str]]()
    for r in refused:
        by_label[(r.endpoint, r.error)] += r.occurrences

    def update() -> None:
        for (endpoint, error), n in by_label.items():
            metrics.QUARANTINED.labels(endpoint, error).inc(n)

    metrics.later(update)


async def trim_quarantine(conn: asyncpg.Connection, max_rows: int) -> int:
    """Keep the newest ``max_rows`` quarantine rows (their counts stay); returns the rows deleted.
    Another writer trimming at the same time makes this one a no-op."""
    async with conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _TRIM_LOCK):
            return 0
        if max_rows <= 0:
            status = await conn.execute("DELETE FROM quarantine")
        else:
            status = await conn.execute(_TRIM_QUARANTINE, max_rows)
    return int(status.split()[-1])


def _span(times: Iterable[datetime]) -> tuple[datetime, datetime, timedelta]:
    """Where stored copies of a batch's events may be: its receipt times widened by the window."""
    return *partitions.span(times), REPEAT_WINDOW


def _columns(rows: Iterable[Iterable[object]]) -> list[list[object]]:
    return [list(column) for column in zip(*rows, strict=True)]


def _report_row(r: ReportRecord) -> tuple[object, ...]:
    e = r.event
    return (
        r.application_id, r.via, r.received_at, r.raw, e.sms_msg_id, e.status, e.total, e.sequence,
        e.status_desc, e.source, e.update_time, e.extend, e.to, e.org_code,
        json.dumps(e.extra, ensure_ascii=False), e.dedupe_key(r.application_id),
    )  # fmt: skip


def _uplink_row(r: UplinkRecord) -> tuple[object, ...]:
    e = r.event
    return (
        r.application_id, r.received_at, r.raw, e.sms_msg_id, e.from_, e.to, e.body, e.create_time,
        json.dumps(e.extra, ensure_ascii=False), numbers.e164(e.from_),
    )  # fmt: skip


def _quarantine_row(r: QuarantineRecord) -> tuple[object, ...]:
    return (
        r.record_id, r.application_id, r.endpoint, r.received_at, r.error,
        json.dumps(r.detail, ensure_ascii=False), r.content_type, r.raw, r.body_bytes, r.occurrences,
    )  # fmt: skip


def _is_poison(error: BaseException) -> bool:
    """PostgreSQL refused the data itself (class 22 data exception, 23 integrity): retrying won't help."""
    return isinstance(error, asyncpg.PostgresError) and str(getattr(error, "sqlstate", ""))[:2] in {"22", "23"}


MAX_GROWTH = 8
# step_down() waits this long for the store in flight before it cuts it short (the journal keeps
# it: the next writer stores it again, and a batch costs little next to the wait of a writer that
# steps down because it gets no CPU).
STEP_DOWN_SECONDS = 5.0
# While resting (receiver/pacing.py) the writer reads the journal again this often: its backlog
# may end the rest, and its status must stay well within writer_process.STALE_AFTER.
REST_SLICE = 1.0


class Writer:
    """The drain loop: journal to PostgreSQL, batch after batch, for as long as it runs.

    One writer reads a journal root at a time (the reader's ``writer.lock``); a second one waits
    for the lock. It runs in a process of its own under ``receiver serve``, or as a task beside
    the application (``RECEIVER_WRITER=inline``, and the tests)."""

    def __init__(
        self,
        reader: JournalReader,
        connect: Connect,
        *,
        batch_size: int = 1000,
        interval: float = 0.0,
        after_insert: Sequence[AfterInsert] = (),
        quarantine_max_rows: int | None = None,
        idle_poll: float = 1.0,
        on_status: Callable[[Writer], None] | None = None,
        pacing: Pacing | None = None,
    ) -> None:
        self.reader = reader
        # The quarantine table is trimmed to its newest ``quarantine_max_rows`` rows after every
        # ``_trim_every`` rows this writer inserted (and after the first): a range delete on the
        # primary key every so often, never a cost per insert.
        self.quarantine_max_rows = quarantine_max_rows
        self._trim_every = max(1, min(1000, (quarantine_max_rows or 0) // 100))
        self._inserted_since_trim = self._trim_every
        # A store costs about the same whether it carries 1 record or 100: during a burst, let
        # records gather for up to ``interval`` seconds (less when a full batch is there), so
        # PostgreSQL gets a few large transactions.
        self.interval = interval
        self._last_store = float("-inf")
        # During a burst that keeps the CPUs busy, rest after each store (receiver/pacing.py).
        self.pacing = pacing
        self._rest_until = float("-inf")
        self.after_insert = tuple(after_insert)
        self.connect = connect
        self.batch_size = batch_size
        # Batches grow with the backlog (doubling while each read comes back full, up to
        # MAX_GROWTH times the size) and shrink back as it drains: a transaction's fixed costs
        # (planning, the state refresh's setup, the commit) are shared by more reports when
        # there are many waiting.
        self._limit = batch_size
        # With nobody to wake it (a process of its own), the writer looks at the journal this often.
        self.idle_poll = idle_poll
        self.on_status = on_status
        self.last_error: str | None = None
        self.stored_events = 0
        self.last_store_at: float | None = None
        self.locked = False
        self._conn: asyncpg.Connection | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._draining = False  # stop() stores what is left: no rest
        self._idle = asyncio.Event()
        self._ended = asyncio.Event()  # run() has returned

    def wake(self) -> None:
        self._wake.set()

    @property
    def database_ok(self) -> bool:
        return self.last_error is None

    async def _wait(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    async def run(self) -> None:
        try:
            await self._drain()
        finally:
            self._ended.set()

    async def _drain(self) -> None:
        while not self._stopping and not self.reader.try_lock():
            await self._wait(1.0)  # another writer drains this journal: take over when it stops
        self.locked = True
        backoff = 0.05
        while not self._stopping:
            batch = self.reader.read(self._limit)
            metrics.journal_state(self.reader, batch)
            self._status()
            if not batch.payloads:
                self._idle.set()
                await self._wait(self.idle_poll)
                continue
            if self._idle.is_set() and self.pacing is not None:
                self.pacing.burst_begins()
            self._idle.clear()
            rest = self._rest_left()
            if rest > 0:
                # A slice at a time, the journal read again after each: a backlog grown past the
                # pacing's bound ends the rest, and the metrics and the status stay current (a
                # status older than STALE_AFTER says the writer is not running). stop() wakes it.
                resting = time.monotonic()
                await self._wait(min(rest, REST_SLICE))
                metrics.WRITER_RESTED.inc(time.monotonic() - resting)
                continue
            wait = self._last_store + self.interval - time.monotonic()
            if wait > 0 and len(batch.payloads) < self._limit and not self._stopping:
                await asyncio.sleep(wait)
                batch = self.reader.read(self._limit)
            full = len(batch.payloads) >= self._limit
            self._limit = min(self._limit * 2, self.batch_size * MAX_GROWTH) if full else self.batch_size
            if self.pacing is not None and not self._draining:  # contended: small stores, short waits for the workers
                self._limit = self.pacing.batch_limit(self._limit, self.reader.backlog_bytes)
            started = time.monotonic()
            try:
                quarantined = await self._store(batch.payloads)
            except Exception as error:  # noqa: BLE001 - every failure here means "retry later"
                await self._disconnect()
                if self._stopping and not self._draining:
                    break  # stepping down (its store cut short, say): the next writer stores the batch again
                metrics.DATABASE_ERRORS.labels("writer").inc()
                if self.last_error is None:
                    log.warning("writer.database_unavailable", error=_describe(error))
                self.last_error = _describe(error)
                self._status()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if self.last_error is not None:
                log.info("writer.database_back")
            self.last_error = None
            backoff = 0.05
            # Counted before the journal says "drained": whoever waits for that sees the figures.
            metrics.batch_stored(batch.payloads)
            self.stored_events += len(batch.payloads)
            self.last_store_at = time.time()
            self.reader.commit(batch)
            await self._trim(quarantined)
            self._last_store = time.monotonic()
            if self.pacing is not None:
                self._rest_until = self._last_store + self.pacing.rest(
                    self._last_store - started, self.reader.backlog_bytes
                )

    def _rest_left(self) -> float:
        """Seconds the writer still rests before its next store (receiver/pacing.py): none while
        stop() drains, nor with a backlog past the pacing's bound."""
        if self.pacing is None or self._draining or not self.pacing.may_rest(self.reader.backlog_bytes):
            return 0.0
        return self._rest_until - time.monotonic()

    def _status(self) -> None:
        if self.on_status is not None:
            self.on_status(self)

    async def _store(self, payloads: list[bytes]) -> int:
        """Store the batch; returns the number of quarantine rows inserted."""
        if self._conn is None or self._conn.is_closed():
            self._conn = await self.connect()
        # Decoding a batch takes milliseconds of pure Python: on a thread, so that the event loop
        # can take the GIL back every switch interval and acknowledge meanwhile.
        pairs = await asyncio.to_thread(_decode, payloads) if len(payloads) > 50 else _decode(payloads)
        quarantined = 0
        try:
            with metrics.on_commit():  # counts what the transaction stored, once it has committed
                quarantined = await store(self._conn, [record for _, record in pairs], self.after_insert)
        except Exception as error:
            if not _is_poison(error):
                raise
            for payload, record in pairs:  # find the poison: store the others one by one
                try:
                    with metrics.on_commit():
                        quarantined += await store(self._conn, [record], self.after_insert)
                except Exception as single:
                    if not _is_poison(single):
                        raise
                    log.error("writer.poison_record", error=_describe(single))
                    metrics.DATABASE_ERRORS.labels("poison").inc()
                    with metrics.on_commit():
                        quarantined += await store(self._conn, [_unstorable(payload, single)])
        return quarantined

    async def _trim(self, quarantined: int) -> None:
        """After a batch is committed, and only every so often. Best effort: a failure is logged and
        retried after the next rows, never fails a batch."""
        self._inserted_since_trim += quarantined
        if self.quarantine_max_rows is None or not quarantined or self._inserted_since_trim < self._trim_every:
            return
        if self._conn is None or self._conn.is_closed():
            return
        try:
            deleted = await trim_quarantine(self._conn, self.quarantine_max_rows)
        except Exception as error:  # noqa: BLE001
            log.warning("writer.quarantine_trim_failed", error=_describe(error))
            return
        self._inserted_since_trim = 0
        if deleted:
            metrics.QUARANTINE_TRIMMED.inc(deleted)

    async def _disconnect(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.terminate()
            self._conn = None

    async def step_down(self) -> bool:
        """Stop once the store in flight is committed, without draining: another writer takes
        over. True if nothing was left to store."""
        self._stopping = True
        self.wake()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ended.wait(), timeout=STEP_DOWN_SECONDS)
        await self._disconnect()
        self._status()
        return self.reader.drained()

    async def stop(self, drain_timeout: float) -> bool:
        """Store what the journal holds (for up to ``drain_timeout`` s), then stop. True if all was stored."""
        deadline = time.monotonic() + drain_timeout
        self._draining = True
        self.locked = self.locked or self.reader.try_lock()  # run() may not have started yet
        while self.locked and time.monotonic() < deadline and not self.reader.drained():
            self.wake()
            await asyncio.sleep(0.02)
        self._stopping = True
        self.wake()
        await self._disconnect()
        if not self.locked:
            return False
        drained = self.reader.drained()
        if drained:
            self.reader.retire_gone()
        self._status()
        return drained


def _decode(payloads: list[bytes]) -> list[tuple[bytes, Record]]:
    """Each payload's records (a batch holds many, a batch whose items were all refused none)."""
    pairs: list[tuple[bytes, Record]] = []
    for payload in payloads:
        try:
            pairs.extend((payload, record) for record in records.decode(payload))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
            pairs.append((payload, _unstorable(payload, error)))
    return pairs


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:300]


def _unstorable(payload: bytes, error: BaseException) -> QuarantineRecord:
    """A journal record PostgreSQL will not take, kept whole in the quarantine."""
    return QuarantineRecord(
        record_id=uuid.uuid5(uuid.NAMESPACE_OID, payload.hex()),
        application_id=None,
        endpoint="writer",
        received_at=datetime.now(UTC),
        error="unstorable",
        detail={"reason": _describe(error)},
        content_type="application/json",
        raw=payload,
    )
