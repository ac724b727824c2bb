"""Reading the event feed: pages of events after a cursor, none ever skipped or repeated.

The rows are written in the transactions that store what they announce, by the statements that
store it (``sql/024_statements_write_derived_rows.sql``; replies, blacklist changes and what
other writers than the service store, by triggers, ``sql/008_events.sql``). A page holds only
events of transactions older than every transaction still running (``pg_snapshot_xmin``), in
``(txid, id)`` order: a transaction that commits after a later one has a smaller txid, so it is
still ahead of every cursor handed out before it committed. The price: an event waits until the
write transactions running beside it have ended (the writer's last well under a second).

A page reads only the days of ``events`` that can hold events after its cursor: the days still
open, and the closed days closed after its cursor's transaction
(``sql/025_event_feed_closed_days.sql``, docs/storage.md); and the reports of its report events
from the days they were received. Each statement is planned for its values, so that the days it
does not read are not even opened.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from .. import db, partitions
from ..api.models import EVENT_KINDS as KINDS
from ..api.models import Event
from ..correlation.queries import decode_cursor, encode_cursor, following, is_txid
from ..protocol import ProtocolError

CHANNEL = "receiver_events"  # NOTIFY'd, with an empty payload, by every transaction that adds events
_TAG = "ev"  # keeps other feeds' cursors (same shape) out

# Where the events of transactions from a txid on can be: the earliest day partition still open
# or closed after it (sql/025_event_feed_closed_days.sql); the statements below read no day before.
_FROM = "SELECT receiver_events_from($1::text::xid8)"

# Rows past the cursor, at most $4, from the days that can hold them ($5); with a kinds filter
# ($3) the others come back as bare positions (no kind), so that the cursor moves past them and
# they are not scanned again. The rows are asked from the position after the cursor's on ($1,
# $2: queries.following, which says why).
_PAGE = r"""
SELECT e.txid::text AS position, e.id, CASE WHEN shown THEN e.kind END AS kind, e.sms_msg_id, e.number, e.at,
       -- a state event's columns, as the object it stored before sql/023_state_events.sql
       CASE WHEN NOT shown THEN NULL
            WHEN e.kind = 'state' AND e.data IS NULL
            THEN receiver_state_event_data(e.state, e.previous, e.status, e.parts_total, e.parts_delivered,
                                           e.registered, e.sent_at, e.delivered_at, e.latency)
            ELSE e.data END::text AS data,
       e.report_id, e.report_received_at
FROM events e, LATERAL (SELECT $3::text[] IS NULL OR e.kind = ANY($3::text[]) AS shown) k
WHERE e.txid < pg_snapshot_xmin(pg_current_snapshot())
  AND (e.txid, e.id) >= ($1::text::xid8, $2::bigint)
  AND e.at >= $5
ORDER BY e.txid, e.id
LIMIT $4
"""

# The reports of a page's report events, by key, from the days they were received ($3, $4); by
# their messages' ids too ($5), so that Citus reads only their shards.
_REPORTS = r"""
SELECT r.id, r.received_at, r.sms_msg_id, r.status, r.sequence, r.total, r.source, r.status_desc, r.update_time,
       r.extend, r.org_code, r.via, a.name AS application,
       CASE WHEN r."to" ~ '^\+[1-9][0-9]{5,14}$' THEN r."to" END AS "to"
FROM status_reports r
LEFT JOIN applications a ON a.id = r.application_id
WHERE (r.id, r.received_at) IN (SELECT * FROM unnest($1::bigint[], $2::timestamptz[]))
  AND r.received_at BETWEEN $3 AND $4 AND r.sms_msg_id = ANY($5::text[])
"""

# The recipients of those reports' sends, from the days near the reports (partitions.span).
_SENDS = r"""
SELECT sms_msg_id, "to", create_time FROM sent_messages
WHERE sms_msg_id = ANY($1::text[]) AND create_time BETWEEN $2 AND $3
"""

_NOW = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text"

# Committed events a page cannot show yet: a write transaction that began before them still runs.
_HELD_BACK = """
SELECT EXISTS (SELECT FROM events WHERE txid >= pg_snapshot_xmin(pg_current_snapshot()) AND at >= $1)
"""
_HELD_FROM = "SELECT receiver_events_from(pg_snapshot_xmin(pg_current_snapshot()))"


@dataclass(frozen=True)
class Position:
    txid: str  # xid8, as text
    id: int

    def cursor(self) -> str:
        return encode_cursor(_TAG, self.txid, self.id)

    def following(self) -> tuple[str, int]:
        """The first (txid, id) after this position."""
        return following(self.txid, self.id)


START = Position("0", 0)


@dataclass(frozen=True)
class Page:
    events: list[Event]
    next: Position
    more: bool  # more events may be there right away: read again without waiting


def parse_cursor(cursor: str) -> Position:
    """A cursor this feed handed out (an event's ``id`` or a page's ``next``); ProtocolError otherwise."""
    values = decode_cursor(cursor, 3)
    tag, txid, row_id = values
    if tag != _TAG or not is_txid(txid):
        raise ProtocolError("invalid_cursor", "the cursor was not made by this API")
    if not isinstance(row_id, int) or isinstance(row_id, bool) or not 0 <= row_id < 1 << 63:
        raise ProtocolError("invalid_cursor", "the cursor was not made by this API")
    return Position(txid, row_id)


def parse_kinds(values: list[str]) -> tuple[str, ...] | None:
    """``kinds=report,state`` (or repeated): None for every kind."""
    kinds = tuple(dict.fromkeys(k.strip() for v in values for k in v.split(",") if k.strip()))
    if not values:
        return None
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ProtocolError("invalid_field", {"field": "kinds", "allowed": list(KINDS)})
    return None if set(kinds) == set(KINDS) else kinds


async def now(conn: asyncpg.Connection) -> Position:
    """The end of the feed: events of transactions committed before now are behind it. Events
    of transactions still running are ahead of it, even those that began earlier."""
    return Position(await conn.fetchval(_NOW), 0)


async def page(
    conn: asyncpg.Connection, after: Position, *, limit: int, kinds: tuple[str, ...] | None = None
) -> Page:
    scan = limit if kinds is None else min(max(limit * 10, 1000), 10_000)
    async with _planned_for_values(conn):
        since = await conn.fetchval(_FROM, after.txid)
        rows = await conn.fetch(_PAGE, *after.following(), list(kinds) if kinds else None, scan, since)
        reports, sends = await _reports(conn, [row for row in rows if row["kind"] == "report"])
    events: list[Event] = []
    position = after
    for row in rows:
        position = Position(row["position"], row["id"])
        if row["kind"] is not None:
            events.append(_event(row, position, reports, sends))
            if len(events) == limit:
                return Page(events, position, more=True)
    return Page(events, position, more=len(rows) == scan)


async def held_back(conn: asyncpg.Connection) -> bool:
    """Whether committed events wait behind a running transaction. Ask it in the snapshot of the
    page it is about (a repeatable-read transaction): in a fresh one, a transaction that ended
    meanwhile would not count, and the events it held back would wait for the next wake-up."""
    async with _planned_for_values(conn):
        return bool(await conn.fetchval(_HELD_BACK, await conn.fetchval(_HELD_FROM)))


@contextlib.asynccontextmanager
async def _planned_for_values(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """The statements inside planned for their values (db.plan_each_time), so that each reads only
    the days its values reach: in the caller's transaction, or in a read-only one of their own.
    One snapshot for all of them: rows that move out of the default partition into a day made
    meanwhile stay where the bound saw them."""
    if conn.is_in_transaction():
        await db.plan_each_time(conn)
        yield
        await db.plan_as_usual(conn)
        return
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        await db.plan_each_time(conn)
        yield


_Key = tuple[int, datetime]


async def _reports(
    conn: asyncpg.Connection, rows: list[asyncpg.Record]
) -> tuple[dict[_Key, asyncpg.Record], dict[str, list[asyncpg.Record]]]:
    """The reports of a page's report events, by (id, received_at), and their messages' sends by id."""
    rows = [row for row in rows if row["report_id"] is not None and row["report_received_at"] is not None]
    if not rows:
        return {}, {}
    ids, times = [row["report_id"] for row in rows], [row["report_received_at"] for row in rows]
    messages = list({row["sms_msg_id"] for row in rows})
    found = await conn.fetch(_REPORTS, ids, times, min(times), max(times), messages)
    reports = {(r["id"], r["received_at"]): r for r in found}
    sends: dict[str, list[asyncpg.Record]] = {}
    if reports:
        lo, hi = partitions.span(t for r in found for t in (r["received_at"], r["update_time"]))
        for send in await conn.fetch(_SENDS, list({r["sms_msg_id"] for r in found}), lo, hi):
            sends.setdefault(send["sms_msg_id"], []).append(send)
    return reports, sends


def _event(
    row: asyncpg.Record, position: Position, reports: dict[_Key, asyncpg.Record], sends: dict[str, list[asyncpg.Record]]
) -> Event:
    if row["kind"] == "report":
        report = reports.get((row["report_id"], row["report_received_at"]))
        number, data = _report_number(report, sends), _report(report)
    else:
        number, data = row["number"], json.loads(row["data"])
    return Event(id=position.cursor(), kind=row["kind"], at=row["at"], sms_msg_id=row["sms_msg_id"], number=number,
                 data=data)  # fmt: skip


def _report_number(report: asyncpg.Record | None, sends: dict[str, list[asyncpg.Record]]) -> str | None:
    """The recipient of the report's message: its send's, found within partitions.WINDOW of the
    report's receipt and updateTime (anywhere without an updateTime); else the report's own when
    it is a number."""
    if report is None:
        return None
    lo, hi = partitions.span((report["received_at"], report["update_time"]))
    for send in sends.get(report["sms_msg_id"], ()):
        if lo <= send["create_time"] <= hi and send["to"] is not None:
            return send["to"]  # type: ignore[no-any-return]
    return report["to"]  # type: ignore[no-any-return]


def _report(report: asyncpg.Record | None) -> dict[str, Any] | None:
    if report is None:
        return None  # pruned since
    return {
        "status": report["status"],
        "sequence": report["sequence"],
        "total": report["total"],
        "source": report["source"],
        "status_desc": report["status_desc"],
        "update_time": _iso(report["update_time"]),
        "extend": report["extend"],
        "org_code": report["org_code"],
        "via": report["via"],
        "received_at": _iso(report["received_at"]),
        "application": report["application"],
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
