"""Sends after an opt-out: was a send's recipient blacklisted, for its channel, when it was sent?

The answer for a send is :func:`receiver.blacklist.rules.entry_at` of its number's signals at the
send's ``createTime``: a fold of what happened up to then, so it depends neither on when the
send was registered nor on when (or in which order) the signals were recorded. It is kept in
``sends_after_optout`` and worked out again whenever one of its inputs changes: for each send
registered, and for the sends to each number whose signals change (only those sent at or after
the earliest signal that changed: an event cannot change what was true before it happened).

Callers hold the blacklist's lock of every number concerned (``store``), so a send registered
while a signal of its number is recorded is seen by whichever of the two goes second.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from .. import db, metrics
from .rules import Entry, Scope, Signal, entry_at

_SIGNAL_COLUMNS = "id, number, action, source, channel, reason, sms_msg_id, actor, uplink_id, report_id, at"
_ENTRY_COLUMNS = "channel, source, reason, cause_sms_msg_id, added_by, added_at"

# $2, $3: where the sends are (their createTime), when known: the days between, not every day kept.
_WITHIN = "BETWEEN coalesce($2::timestamptz, '-infinity') AND coalesce($3::timestamptz, 'infinity')"
_SENDS_BY_ID = f"""
SELECT s.sms_msg_id, s."to", s."from", s.create_time FROM sent_messages s
WHERE s.sms_msg_id = ANY($1::text[]) AND s.create_time {_WITHIN}
"""
_SENDS_TO = """
SELECT s.sms_msg_id, s."to", s."from", s.create_time FROM sent_messages s
WHERE s."to" = ANY($1::text[]) AND s.create_time >= coalesce($2::timestamptz, '-infinity')
"""
_SENDS_TO_SIGNALLED = """
SELECT s.sms_msg_id, s."to", s."from", s.create_time FROM sent_messages s
WHERE s."to" IN (SELECT number FROM blacklist_signals)
   OR s.sms_msg_id IN (SELECT sms_msg_id FROM sends_after_optout WHERE source IS NOT NULL)
"""

# Each row written (only real changes are) is announced on the event feed by the statement that
# writes it (sql/024_statements_write_derived_rows.sql).
_ANNOUNCE = """
INSERT INTO events (kind, sms_msg_id, number, data)
SELECT 'sent_after_optout', n.sms_msg_id, n."to",
       receiver_sent_after_optout_data(n."from", n.sent_at, n."to", n.channel, n.source, n.reason, n.cause_sms_msg_id,
                                       n.added_by, n.added_at)
FROM written n
ORDER BY n.sms_msg_id COLLATE "C"
"""
_WRITE = f"""
WITH written AS (
    INSERT INTO sends_after_optout AS f (sms_msg_id, "to", "from", sent_at, {_ENTRY_COLUMNS})
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[], $7::text[],
        $8::text[], $9::text[], $10::timestamptz[])
    ON CONFLICT (sms_msg_id, sent_at) DO UPDATE SET
        channel = EXCLUDED.channel, source = EXCLUDED.source, reason = EXCLUDED.reason,
        cause_sms_msg_id = EXCLUDED.cause_sms_msg_id, added_by = EXCLUDED.added_by, added_at = EXCLUDED.added_at,
        checked_at = now()
    WHERE ({", ".join("f." + c for c in _ENTRY_COLUMNS.split(", "))})
          IS DISTINCT FROM ({", ".join("EXCLUDED." + c for c in _ENTRY_COLUMNS.split(", "))})
    RETURNING *
)
{_ANNOUNCE}"""

# A send's row is at its createTime ($2): one day each.
_FLAGGED = """
SELECT sms_msg_id FROM sends_after_optout
WHERE sms_msg_id = ANY($1::text[]) AND sent_at = ANY($2::timestamptz[]) AND source IS NOT NULL
"""
_CLEAR = f"""
WITH written AS (
    UPDATE sends_after_optout SET ({_ENTRY_COLUMNS}) = (NULL, NULL, NULL, NULL, NULL, NULL), checked_at = now()
    WHERE sms_msg_id = ANY($1::text[]) AND sent_at = ANY($2::timestamptz[]) AND source IS NOT NULL
    RETURNING *
)
{_ANNOUNCE}"""

_FOUND = f"""
SELECT sms_msg_id, "to", {_ENTRY_COLUMNS} FROM sends_after_optout
WHERE sms_msg_id = ANY($1::text[]) AND sent_at {_WITHIN} AND source IS NOT NULL
ORDER BY sms_msg_id
"""


async def refresh(
    conn: asyncpg.Connection,
    scope: Scope,
    *,
    numbers: Iterable[str] | None = None,
    sms_msg_ids: Sequence[str] | None = None,
    since: datetime | None = None,
    within: tuple[datetime | None, datetime | None] = (None, None),
) -> int:
    """Work the answer out again for the sends given by id, or to ``numbers`` (sent at or after
    ``since``), or, with neither, for every send to a number that has signals and every send
    found blacklisted before. Inside a
    transaction, under the numbers' locks. Returns how many sends became blacklisted at send."""
    if sms_msg_ids is not None:
        sends = await conn.fetch(_SENDS_BY_ID, list(sms_msg_ids), *within)
    elif numbers is not None:
        sends = await conn.fetch(_SENDS_TO, sorted(set(numbers)), since)
    else:
        sends = await conn.fetch(_SENDS_TO_SIGNALLED)
    if not sends:
        return 0
    signals: dict[str, list[Signal]] = defaultdict(list)
    rows = await conn.fetch(
        f"SELECT {_SIGNAL_COLUMNS} FROM blacklist_signals WHERE number = ANY($1::text[])",
        sorted({send["to"] for send in sends}),
    )
    for row in rows:
        signals[row["number"]].append(Signal(**dict(row)))
    ids = [send["sms_msg_id"] for send in sends]
    times = [send["create_time"] for send in sends]
    before = {row[0] for row in await conn.fetch(_FLAGGED, ids, times)}
    found: list[tuple[object, ...]] = []
    for send in sends:
        entry = entry_at(signals.get(send["to"], ()), scope, send["create_time"], send["from"])
        if entry is not None:
            found.append((*_send(send), entry.channel, entry.source, entry.reason, entry.sms_msg_id,
                          entry.added_by, entry.added_at))  # fmt: skip
    flagged = {row[0] for row in found}
    cleared = sorted(before - flagged)  # only sends that have a row: never a new row for a clean send
    if found or cleared:
        await db.statements_write_derived_rows(conn)  # _WRITE and _CLEAR announce what they write
    if found:
        await conn.execute(_WRITE, *_columns(found))
    if cleared:
        await conn.execute(_CLEAR, cleared, times)
    blacklisted = len(flagged - before)
    metrics.sends_after_optout(blacklisted)
    return blacklisted


async def found(
    conn: asyncpg.Connection, sms_msg_ids: Sequence[str], within: tuple[datetime | None, datetime | None] = (None, None)
) -> dict[str, Entry]:
    """The entry that covered each of these sends' recipients when it was sent (sends not
    blacklisted at send are left out); ``within``: the span of their createTimes, when known."""
    rows = await conn.fetch(_FOUND, list(sms_msg_ids), *within)
    return {row["sms_msg_id"]: entry(row) for row in rows}


def entry(row: Mapping[str, Any] | asyncpg.Record) -> Entry:
    """A ``sends_after_optout`` row's entry (its columns as :data:`_ENTRY_COLUMNS` name them)."""
    return Entry(
        row["to"], row["channel"], row["source"], row["reason"], row["cause_sms_msg_id"], row["added_by"],
        row["added_at"],
    )  # fmt: skip


def _send(send: asyncpg.Record) -> tuple[object, ...]:
    return (send["sms_msg_id"], send["to"], send["from"], send["create_time"])


def _columns(rows: Sequence[tuple[object, ...]]) -> list[list[object]]:
    return [list(column) for column in zip(*rows, strict=True)]
