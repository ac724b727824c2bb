"""Reading the event feed: pages of events after a cursor, none ever skipped or repeated.

The rows are written in the transactions that store what they announce, by the statements that
store it (``sql/024_statements_write_derived_rows.sql``; replies, blacklist changes and what
other writers than the service store, by triggers, ``sql/008_events.sql``). A page holds only
events of transactions older than every transaction still running (``pg_snapshot_xmin``), in
``(txid, id)`` order: a transaction that commits after a later one has a smaller txid, so it is
still ahead of every cursor handed out before it committed. The price: an event waits until the
write transactions running beside it have ended (the writer's last well under a second).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from .. import partitions
from ..api.models import EVENT_KINDS as KINDS
from ..api.models import Event
from ..correlation.queries import decode_cursor, encode_cursor, is_txid
from ..protocol import ProtocolError

CHANNEL = "receiver_events"  # NOTIFY'd, with an empty payload, by every transaction that adds events
_TAG = "ev"  # keeps other feeds' cursors (same shape) out

# Rows past the cursor, at most $4; with a kinds filter ($3) the others come back as bare
# positions, so that the cursor moves past them and they are not scanned again.
_PAGE = r"""
WITH scanned AS MATERIALIZED (
    SELECT txid, id, kind FROM events
    WHERE txid < pg_snapshot_xmin(pg_current_snapshot())
      AND (txid, id) > ($1::text::xid8, $2::bigint)
    ORDER BY txid, id
    LIMIT $4
)
SELECT p.txid::text AS txid, p.id, e.kind, e.sms_msg_id, e.number, e.at,
       -- a state event's columns, as the object it stored before sql/023_state_events.sql
       CASE WHEN e.kind = 'state' AND e.data IS NULL
            THEN receiver_state_event_data(e.state, e.previous, e.status, e.parts_total, e.parts_delivered,
                                           e.registered, e.sent_at, e.delivered_at, e.latency)
            ELSE e.data END::text AS data,
       e.report_id, r.id IS NOT NULL AS report_found, r.status, r.sequence, r.total, r.source, r.status_desc,
       r.update_time, r.extend, r.org_code, r.via, r.received_at, a.name AS application,
       coalesce(s."to", CASE WHEN r."to" ~ '^\+[1-9][0-9]{5,14}$' THEN r."to" END) AS report_number
FROM scanned p
LEFT JOIN events e ON e.txid = p.txid AND e.id = p.id AND ($3::text[] IS NULL OR p.kind = ANY($3::text[]))
LEFT JOIN status_reports r ON r.id = e.report_id AND r.received_at = e.report_received_at
LEFT JOIN applications a ON a.id = r.application_id
-- a report's send is from the days near its receipt and updateTime (partitions.WINDOW), not
-- from every day kept (a report without updateTime: nothing says where)
LEFT JOIN sent_messages s ON s.sms_msg_id = r.sms_msg_id
     AND s.create_time BETWEEN CASE WHEN r.update_time IS NULL THEN '-infinity'
                                    ELSE least(r.received_at, r.update_time) - $5::interval END
                           AND CASE WHEN r.update_time IS NULL THEN 'infinity'
                                    ELSE greatest(r.received_at, r.update_time) + $5::interval END
ORDER BY p.txid, p.id
"""

_NOW = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text"

# Committed events a page cannot show yet: a write transaction that began before them still runs.
_HELD_BACK = "SELECT EXISTS (SELECT FROM events WHERE txid >= pg_snapshot_xmin(pg_current_snapshot()))"


@dataclass(frozen=True)
class Position:
    txid: str  # xid8, as text
    id: int

    def cursor(self) -> str:
        return encode_cursor(_TAG, self.txid, self.id)


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
    rows = await conn.fetch(_PAGE, after.txid, after.id, list(kinds) if kinds else None, scan, partitions.WINDOW)
    events: list[Event] = []
    position = after
    for row in rows:
        position = Position(row["txid"], row["id"])
        if row["kind"] is not None:
            events.append(_event(row, position))
            if len(events) == limit:
                return Page(events, position, more=True)
    return Page(events, position, more=len(rows) == scan)


async def held_back(conn: asyncpg.Connection) -> bool:
    """Whether committed events wait behind a running transaction. Ask it in the snapshot of the
    page it is about (a repeatable-read transaction): in a fresh one, a transaction that ended
    meanwhile would not count, and the events it held back would wait for the next wake-up."""
    return bool(await conn.fetchval(_HELD_BACK))


def _event(row: asyncpg.Record, position: Position) -> Event:
    if row["kind"] == "report":
        number, data = row["report_number"], _report(row)
    else:
        number, data = row["number"], json.loads(row["data"])
    return Event(id=position.cursor(), kind=row["kind"], at=row["at"], sms_msg_id=row["sms_msg_id"], number=number,
                 data=data)  # fmt: skip


def _report(row: asyncpg.Record) -> dict[str, Any] | None:
    if not row["report_found"]:
        return None  # pruned since
    return {
        "status": row["status"],
        "sequence": row["sequence"],
        "total": row["total"],
        "source": row["source"],
        "status_desc": row["status_desc"],
        "update_time": _iso(row["update_time"]),
        "extend": row["extend"],
        "org_code": row["org_code"],
        "via": row["via"],
        "received_at": _iso(row["received_at"]),
        "application": row["application"],
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
