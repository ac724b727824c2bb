"""SQL side of correlation: derived delivery states and reply links, kept in step with the events.

Reply links themselves are made in :mod:`receiver.correlation.links`.

``message_states`` is the SQL of the rule in :mod:`receiver.correlation.state` (the tests hold
the two equal on random report sets). It is recomputed from all of a message's reports each
time one of them arrives, under an advisory lock taken in its own statement, so two
workers storing reports of one message at once cannot leave a state that misses either.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta

import asyncpg

from .. import db, partitions
from . import links
from .sent import SentMessage

AfterInsert = Callable[[asyncpg.Connection, list[asyncpg.Record], list[asyncpg.Record]], Awaitable[None]]

# Messages map onto 256 lock buckets: a transaction takes at most 256 advisory locks, whatever
# its size (PostgreSQL's lock table is small), always in the same order (no deadlock).
_LOCK_MESSAGES = """
SELECT pg_advisory_xact_lock(7, k)
FROM (SELECT DISTINCT (hashtext(id) & 255) AS k FROM unnest($1::text[]) AS id ORDER BY 1) AS buckets
"""

# Where a message's rows are (docs/storage.md): its stored state within partitions.WINDOW of the
# times known of it (the receipt and updateTime of the reports stored now, the createTime and
# registration of the sends registered now; none known: anywhere), newest first; its send
# likewise; its reports between the state's bounds (reports_from, reports_until) and the receipt
# times of the reports stored now. One or two day partitions each, not every day kept. A message
# given without a time is searched in every day; so are the reports of a state from before the
# bounds existed (reports, no bounds).
#
# Two statements, so that each reads its days by values known when it is planned (db.plan_each_time):
# _FIND_STATES finds the stored states ($5, $6: the span of the messages' windows); the refresh
# is given them ($7 to $11, $18) and, for each table it reads, the span of the days it needs ($12
# to $17), computed from them. Per message, the rows are still looked up within its own bounds:
# joins on (sms_msg_id, time range), each table read for the batch's ids (= ANY($1): an index
# probe per message and day, where a join alone would be answered by a scan of every row of the
# span's days once they are big), which Citus pushes down to the shards of those ids
# (docs/storage.md, "Citus").
#
# message_at, the partition key, follows from the events: the send's createTime, else the first
# report's receipt. A state whose message_at changes (a send registered after its reports, a
# report received earlier than the first stored) is updated where it is and moves to its new day;
# the others are written with ON CONFLICT on (sms_msg_id, message_at). The same statement writes
# what follows from the states it changes (sql/024_statements_write_derived_rows.sql): a row of
# message_index where a state is made or moved to (none left where it moved from), and a state
# event for each state that is new or differs from the one found. What is found is what is
# stored: every writer of message_states holds the messages' locks (lock_messages), taken before.
_STATE_COLUMNS = """
    state = {new}.state,
    status = {new}.status, parts_total = {new}.parts_total,
    parts_delivered = {new}.parts_delivered, reports = {new}.reports, sent = {new}.sent,
    sent_at = {new}.sent_at, delivered_at = {new}.delivered_at, latency = {new}.latency,
    updated_at = {new}.updated_at, reports_from = {new}.reports_from, reports_until = {new}.reports_until
"""

_NEAR = """
WITH ids AS (SELECT DISTINCT unnest($1::text[]) AS sms_msg_id),
near AS (
    SELECT ids.sms_msg_id,
           CASE WHEN bool_or(k.at IS NULL) THEN '-infinity' ELSE min(k.at) - $4::interval END AS lo,
           CASE WHEN bool_or(k.at IS NULL) THEN 'infinity' ELSE max(k.at) + $4::interval END AS hi
    FROM ids LEFT JOIN unnest($2::text[], $3::timestamptz[]) AS k(sms_msg_id, at) USING (sms_msg_id)
    GROUP BY ids.sms_msg_id
)"""
_FIND_STATES = _NEAR + """
SELECT DISTINCT ON (near.sms_msg_id) near.sms_msg_id, m.message_at, m.state, m.reports, m.reports_from,
       m.reports_until
FROM near JOIN message_states m ON m.sms_msg_id = near.sms_msg_id AND m.message_at BETWEEN near.lo AND near.hi
WHERE m.sms_msg_id = ANY($1::text[]) AND m.message_at BETWEEN $5 AND $6
ORDER BY near.sms_msg_id, m.message_at DESC
"""
_REFRESH_STATES = _NEAR + """,
new AS (
    SELECT sms_msg_id, min(received_at) AS first, max(received_at) AS last
    FROM unnest($5::text[], $6::timestamptz[]) AS n(sms_msg_id, received_at) GROUP BY sms_msg_id
),
old AS (
    SELECT near.*, f.message_at, f.old_state, f.old_reports, f.reports_from, f.reports_until
    FROM near LEFT JOIN unnest($7::text[], $8::timestamptz[], $9::integer[], $10::timestamptz[], $11::timestamptz[],
                               $18::text[])
        AS f(sms_msg_id, message_at, old_reports, reports_from, reports_until, old_state) USING (sms_msg_id)
),
bounds AS (
    SELECT old.sms_msg_id,
           CASE WHEN old.old_reports > 0 AND old.reports_from IS NULL THEN '-infinity'
                ELSE least(old.reports_from, new.first) END AS lo,
           CASE WHEN old.old_reports > 0 AND old.reports_until IS NULL THEN 'infinity'
                ELSE greatest(old.reports_until, new.last) END AS hi
    FROM old LEFT JOIN new USING (sms_msg_id)
),
r AS (
    SELECT b.sms_msg_id, coalesce(s.sequence, 1) AS part, s.total, s.status, s.update_time, s.received_at,
           upper(s.status) = 'DELIVRD' AS ok
    FROM bounds b
    JOIN status_reports s ON s.sms_msg_id = b.sms_msg_id AND s.received_at BETWEEN b.lo AND b.hi
    WHERE s.sms_msg_id = ANY($1::text[]) AND s.received_at BETWEEN $14 AND $15
),
parts AS (
    SELECT sms_msg_id, part, bool_or(ok) AS delivered, min(update_time) FILTER (WHERE ok) AS delivered_at
    FROM r GROUP BY sms_msg_id, part
),
by_part AS (
    SELECT sms_msg_id,
           count(*) FILTER (WHERE delivered) AS delivered,
           count(*) FILTER (WHERE NOT delivered) AS failed,
           max(delivered_at) FILTER (WHERE delivered) AS delivered_at,
           bool_or(delivered AND delivered_at IS NULL) AS undated
    FROM parts GROUP BY sms_msg_id
),
by_report AS (
    SELECT sms_msg_id, count(*) AS n, max(greatest(coalesce(total, 1), part)) AS max_part,
           min(received_at) AS reports_from, max(received_at) AS reports_until
    FROM r GROUP BY sms_msg_id
),
latest AS (
    SELECT DISTINCT ON (sms_msg_id) sms_msg_id, status
    FROM r ORDER BY sms_msg_id, update_time DESC NULLS LAST, status COLLATE "C" DESC
),
sends AS (  -- each message's newest send within its bounds
    SELECT DISTINCT ON (s.sms_msg_id) s.sms_msg_id, s."to", s.status, s.create_time, s.total
    FROM old JOIN sent_messages s ON s.sms_msg_id = old.sms_msg_id AND s.create_time BETWEEN old.lo AND old.hi
    WHERE s.sms_msg_id = ANY($1::text[]) AND s.create_time BETWEEN $12 AND $13
    ORDER BY s.sms_msg_id, s.create_time DESC
),
per_message AS (
    SELECT old.sms_msg_id, old.message_at AS old_at, old.old_state,
           s.sms_msg_id IS NOT NULL AS sent, s.status AS sent_status, s.create_time, s."to",
           greatest(coalesce(s.total, 1), coalesce(br.max_part, 1)) AS parts_total,
           coalesce(bp.delivered, 0) AS parts_delivered,
           coalesce(bp.failed, 0) AS parts_failed,
           coalesce(br.n, 0) AS reports,
           bp.delivered_at, coalesce(bp.undated, false) AS undated,
           latest.status AS latest_status, br.reports_from, br.reports_until
    FROM old
    LEFT JOIN sends s ON s.sms_msg_id = old.sms_msg_id
    LEFT JOIN by_report br ON br.sms_msg_id = old.sms_msg_id
    LEFT JOIN by_part bp ON bp.sms_msg_id = old.sms_msg_id
    LEFT JOIN latest ON latest.sms_msg_id = old.sms_msg_id
),
decided AS MATERIALIZED (
    SELECT sms_msg_id, old_at, old_state, "to", coalesce(create_time, reports_from) AS message_at,
           CASE WHEN sent AND sent_status <> '000000' THEN 'failed'
                WHEN parts_failed > 0 THEN 'failed'
                WHEN parts_delivered >= parts_total THEN 'delivered'
                ELSE 'pending' END AS state,
           coalesce(latest_status, sent_status) AS status, parts_total, parts_delivered, reports, sent,
           create_time AS sent_at, delivered_at, undated, reports_from, reports_until, now() AS updated_at
    FROM per_message
    WHERE sent OR reports > 0
),
written AS (
    SELECT sms_msg_id, old_at, old_state, "to", message_at,
           -- past its report window (the sweep's mark, receiver.correlation.sweep) a message the
           -- reports leave pending stays unreported: the window does not reopen for a report
           CASE WHEN state = 'pending' AND old_state = 'unreported' THEN 'unreported' ELSE state END AS state,
           status, parts_total, parts_delivered, reports, sent, sent_at,
           CASE WHEN state = 'delivered' AND NOT undated THEN delivered_at END AS delivered_at,
           CASE WHEN state = 'delivered' AND NOT undated THEN delivered_at - sent_at END AS latency,
           updated_at, reports_from, reports_until
    FROM decided
),
moved AS (
    UPDATE message_states m SET message_at = w.message_at, {moved}
    FROM written w
    WHERE w.old_at <> w.message_at AND m.sms_msg_id = w.sms_msg_id AND m.message_at = w.old_at
      AND m.message_at BETWEEN $16 AND $17
    RETURNING m.sms_msg_id
),
upserted AS (
    INSERT INTO message_states AS m (sms_msg_id, message_at, state, status, parts_total, parts_delivered, reports,
                                     sent, sent_at, delivered_at, latency, updated_at, reports_from, reports_until)
    SELECT sms_msg_id, message_at, state, status, parts_total, parts_delivered, reports, sent, sent_at, delivered_at,
           latency, updated_at, reports_from, reports_until
    FROM written
    WHERE old_at IS NULL OR old_at = message_at
    ON CONFLICT (sms_msg_id, message_at) DO UPDATE SET {updated}
    RETURNING m.sms_msg_id
),
stored AS (  -- the states written: what follows is written for them alone
    SELECT w.* FROM written w WHERE w.sms_msg_id IN (SELECT sms_msg_id FROM moved UNION ALL SELECT sms_msg_id FROM upserted)
),
indexed AS (
    INSERT INTO message_index (sms_msg_id, message_at)
    SELECT sms_msg_id, message_at FROM stored WHERE old_at IS DISTINCT FROM message_at ORDER BY 1, 2
    ON CONFLICT DO NOTHING
),
unindexed AS (
    DELETE FROM message_index i USING stored w
    WHERE w.old_at <> w.message_at AND i.sms_msg_id = w.sms_msg_id AND i.message_at = w.old_at
      AND i.sms_msg_id = ANY($1::text[]) AND i.message_at BETWEEN $16 AND $17
)
INSERT INTO events (kind, sms_msg_id, number, state, previous, status, parts_total, parts_delivered, registered,
                    sent_at, delivered_at, latency)
SELECT 'state', sms_msg_id, "to", state, old_state, status, parts_total, parts_delivered, sent, sent_at, delivered_at,
       latency
FROM stored
WHERE state IS DISTINCT FROM old_state
ORDER BY sms_msg_id COLLATE "C"
""".format(moved=_STATE_COLUMNS.format(new="w"), updated=_STATE_COLUMNS.format(new="EXCLUDED"))

# A send registered again is not stored twice: the stored sends with its id within
# partitions.WINDOW of its createTime ($15, $16: the batch's span widened by it, $17 the window)
# keep it out, under the messages' locks; in a batch, the first of the same id goes in.
_REGISTER = """
WITH m AS (
    SELECT DISTINCT ON (sms_msg_id) sms_msg_id, "to", "from", status, coalesce(create_time, now()) AS create_time,
           country_id, total, extend, template_id, signature, message_type, raw
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], $7::smallint[],
                $8::text[], $9::text[], $10::text[], $11::text[], $12::jsonb[]) WITH ORDINALITY
         AS m(sms_msg_id, "to", "from", status, create_time, country_id, total, extend, template_id, signature,
              message_type, raw, ord)
    ORDER BY sms_msg_id, ord
),
stored AS (
    SELECT sms_msg_id, create_time FROM sent_messages
    WHERE sms_msg_id = ANY($1::text[]) AND create_time BETWEEN $15 AND $16
),
inserted AS (
    INSERT INTO sent_messages (sms_msg_id, "to", "from", status, create_time, country_id, total, extend,
        template_id, signature, message_type, raw, registered_by, application_id)
    SELECT m.sms_msg_id, m."to", m."from", m.status, m.create_time, m.country_id, m.total,
           m.extend, m.template_id, m.signature, m.message_type, m.raw, $13, $14
    FROM m
    WHERE NOT EXISTS (SELECT FROM stored s WHERE s.sms_msg_id = m.sms_msg_id
                      AND s.create_time BETWEEN m.create_time - $17::interval AND m.create_time + $17::interval)
    ON CONFLICT (sms_msg_id, create_time) DO NOTHING
    RETURNING sms_msg_id, "to", create_time
),
-- the days each recipient was sent to (sql/019_message_index.sql)
indexed AS (
    INSERT INTO recipient_index ("to", day)
    SELECT DISTINCT "to", date_trunc('day', create_time, 'UTC') FROM inserted ORDER BY 1, 2
    ON CONFLICT DO NOTHING
)
SELECT * FROM inserted
"""


async def lock_messages(conn: db.Connection, sms_msg_ids: Iterable[str]) -> None:
    """Until this transaction ends, no one else writes (or prunes) these messages' states, and
    this transaction's statements write what follows from the rows they store
    (:func:`db.statements_write_derived_rows`): every writer of a message's rows calls it first."""
    await db.statements_write_derived_rows(conn)
    await conn.execute(_LOCK_MESSAGES, sorted(set(sms_msg_ids)))


# Messages one refresh statement looks up at most. Each table is read for the ids (= ANY): with
# a few thousand of them PostgreSQL reads whole days instead of probing the index for each (a
# writer's batch grows to 8,000 under a backlog: 206 ms for the stored states of 8,000 new
# messages at 250,000 a day, against 3 ms for 1,000), and a day holds at most one day's traffic.
CHUNK = 1000


async def refresh_states(
    conn: asyncpg.Connection,
    sms_msg_ids: Iterable[str],
    new_reports: Sequence[asyncpg.Record] = (),
    new_sends: Sequence[asyncpg.Record] = (),
) -> None:
    """Recompute the states of these messages from all of their reports; ``new_reports`` (rows
    with ``sms_msg_id``, ``received_at`` and optionally ``update_time``) are those stored in this
    transaction, ``new_sends`` (``sms_msg_id``, ``create_time``) the sends registered in it: their
    times say where the messages' rows are. A message given with neither is searched in every day."""
    ids = sorted(set(sms_msg_ids))
    if not ids:
        return
    await lock_messages(conn, ids)
    await db.plan_each_time(conn)
    for at in range(0, len(ids), CHUNK):
        chunk = ids[at : at + CHUNK]
        first, last = chunk[0], chunk[-1]  # ids are sorted: a chunk is a range of them
        await _refresh(
            conn, chunk, [r for r in new_reports if first <= r["sms_msg_id"] <= last],
            [r for r in new_sends if first <= r["sms_msg_id"] <= last],
        )  # fmt: skip
    await db.plan_as_usual(conn)


async def _refresh(
    conn: asyncpg.Connection, ids: list[str], new_reports: Sequence[asyncpg.Record], new_sends: Sequence[asyncpg.Record]
) -> None:
    near = [(r["sms_msg_id"], at) for r in new_reports for at in report_times(r)]
    now = datetime.now(UTC)  # a send registered late: its reports came up to now
    near += [(r["sms_msg_id"], at) for r in new_sends for at in (r["create_time"], now)]
    timeless: list[datetime | None] = [None] if set(ids) - {m for m, _ in near} else []  # given without a time
    states = partitions.span([at for _, at in near] + timeless)
    received = [r["received_at"] for r in new_reports]
    near_columns = ([m for m, _ in near], [at for _, at in near], partitions.WINDOW)
    found = await conn.fetch(_FIND_STATES, ids, *near_columns, *states)
    await conn.execute(
        _REFRESH_STATES, ids, *near_columns, [r["sms_msg_id"] for r in new_reports], received,
        *([row[k] for row in found] for k in ("sms_msg_id", "message_at", "reports", "reports_from", "reports_until")),
        *states, *_reports_span(found, received), *_within(row["message_at"] for row in found),
        [row["state"] for row in found],
    )  # fmt: skip


def _reports_span(states: Sequence[asyncpg.Record], received: Iterable[datetime]) -> tuple[datetime, datetime]:
    """Where the reports of these stored states and of the reports received now are: from the
    first to the last receipt; anywhere for a state with reports and no bounds (made before them)."""
    times = list(received)
    for state in states:
        if state["reports"] > 0:
            times += [state["reports_from"] or partitions.EARLIEST, state["reports_until"] or partitions.LATEST]
    return _within(times)


def _within(times: Iterable[datetime]) -> tuple[datetime, datetime]:
    """From the first of ``times`` to the last; an empty span (no day) when there is none."""
    known = list(times)
    return (min(known), max(known)) if known else (partitions.LATEST, partitions.EARLIEST)


def report_times(report: asyncpg.Record) -> list[datetime | None]:
    """The times a stored report tells of its message: its receipt (our clock, near the first
    report's, the state's time of a message without a send) and its updateTime (the platform's
    clock, near its send's createTime). None for a report without updateTime (the platform
    builds some itself): nothing says where its send is, searched in every day."""
    return [report["received_at"], report.get("update_time")]


def after_insert_hook(window: timedelta) -> AfterInsert:
    """The writer's step, with the report window for reply links."""

    async def after_insert(
        conn: asyncpg.Connection, new_reports: list[asyncpg.Record], new_uplinks: list[asyncpg.Record]
    ) -> None:
        """States of the messages that got reports, links of the new replies."""
        await refresh_states(conn, (row["sms_msg_id"] for row in new_reports), new_reports)
        await links.link(conn, new_uplinks, window)

    return after_insert


def sends_span(messages: Sequence[SentMessage]) -> tuple[datetime, datetime]:
    """Where these sends, registered now or before, are stored: their createTimes (the time of
    registration for one without) widened by partitions.WINDOW."""
    now = datetime.now(UTC)
    return partitions.span([m.create_time or now for m in messages])


def reported_span(messages: Sequence[SentMessage]) -> tuple[datetime, datetime]:
    """Where the reports stored so far of these sends, registered now, were received: from
    their createTimes to now (a send registered late), widened by partitions.WINDOW; anywhere
    when one has no createTime (its reports may have come any time before)."""
    return partitions.span([*(m.create_time for m in messages), datetime.now(UTC)])


async def register_sent(
    conn: asyncpg.Connection,
    messages: Sequence[SentMessage],
    registered_by: str,
    *,
    application_id: int | None = None,
    window: timedelta,
) -> list[str]:
    """Store sends not registered yet (as sends of ``application_id``, when given); bring their
    states and reply links up to date. Returns the new ids.

    Call it inside a transaction."""
    if not messages:
        return []
    rows = [
        (m.sms_msg_id, m.to, m.from_, m.status, m.create_time, m.country_id, m.total, m.extend, m.template_id,
         m.signature, m.message_type, json.dumps(m.raw, ensure_ascii=False))
        for m in messages
    ]  # fmt: skip
    columns = [list(column) for column in zip(*rows, strict=True)]
    await lock_messages(conn, columns[0])
    new = await conn.fetch(_REGISTER, *columns, registered_by, application_id, *sends_span(messages), partitions.WINDOW)
    ids = [row["sms_msg_id"] for row in new]
    await refresh_states(conn, ids, new_sends=new)
    await links.relink_after_sends(conn, [(row["to"], row["create_time"]) for row in new], window)
    return ids
