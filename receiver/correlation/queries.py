"""Read side for the /v1 API: one message with its reports and replies, and paged listings."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from .. import db, partitions
from ..api.models import BlacklistEntry, Message, MessageSummary, Uplink
from ..blacklist import atsend
from ..protocol import ProtocolError
from .state import REPORT_WINDOW
from .sweep import EFFECTIVE_STATE

# $2 the report window, $3 now (NULL: the database's clock): the state as the clock says it is,
# before the sweep has stored it (sweep.EFFECTIVE_STATE).
_NOW = "coalesce($3::timestamptz, now())"

_MESSAGE = f"""
SELECT m.sms_msg_id, {EFFECTIVE_STATE.format(now=_NOW, window="$2::interval")} AS state, m.status, m.parts_total,
       m.parts_delivered, m.sent, m.sent_at, m.delivered_at, extract(epoch FROM m.latency) AS latency_seconds,
       s."to", s."from", s.status AS sent_status, s.extend, s.template_id, s.signature, s.message_type,
       a.name AS application,
       o."to" AS optout_number, o.channel, o.source, o.reason, o.cause_sms_msg_id, o.added_by, o.added_at,
       CASE WHEN m.reports > 0 THEN coalesce(m.reports_from, '-infinity') END AS reports_from,
       CASE WHEN m.reports > 0 THEN coalesce(m.reports_until, 'infinity') END AS reports_until
-- The days message_index gives ($4, newest first): the state, and the send and opt-out row of its
-- day (a sent message's state is at its send's createTime, sent_at = message_at).
FROM (SELECT * FROM message_states WHERE sms_msg_id = $1 AND message_at = ANY($4::timestamptz[])
      ORDER BY message_at DESC LIMIT 1) m
LEFT JOIN sent_messages s ON s.sms_msg_id = m.sms_msg_id AND s.create_time = m.sent_at
                         AND s.create_time = ANY($4::timestamptz[])
LEFT JOIN applications a ON a.id = s.application_id
LEFT JOIN sends_after_optout o ON o.sms_msg_id = m.sms_msg_id AND o.sent_at = m.sent_at
                              AND o.sent_at = ANY($4::timestamptz[]) AND o.source IS NOT NULL
"""

# Where a message's state is (sql/019_message_index.sql): one row, a few month partitions.
_DAYS = "SELECT message_at FROM message_index WHERE sms_msg_id = $1 ORDER BY message_at DESC"

# From the days its state says its reports are in (store._REFRESH_STATES), not every day kept.
_REPORTS = """
SELECT status, sequence, total, source, status_desc, update_time, extend, "to", org_code, extra, via, received_at
FROM status_reports
WHERE sms_msg_id = $1 AND received_at BETWEEN $2 AND $3
ORDER BY update_time NULLS FIRST, received_at, id
"""

# A message's replies: the days of their links first (most messages have none), then the replies
# and their links from those days (sql/029_reply_link_days.sql). uplinks comes first in the
# statement, so that its lock is taken before reply_links', in the order a prune takes them.
_REPLY_DAYS = """
SELECT min(day) AS first, max(day) + interval '1 day' AS after FROM reply_index WHERE sms_msg_id = $1
"""
_REPLIES = """
SELECT u.id, u.sms_msg_id, u."from", u."to", u.body, u.create_time, u.received_at, l.candidates, l.match,
       l.unlinked_reason
FROM uplinks u
JOIN reply_links l ON l.uplink_id = u.id AND l.uplink_received_at = u.received_at
WHERE l.sms_msg_id = $1 AND l.uplink_received_at >= $2 AND l.uplink_received_at < $3
  AND u.received_at >= $2 AND u.received_at < $3
ORDER BY u.received_at, u.id
"""

_LIST_STATE = EFFECTIVE_STATE.format(now="coalesce($9::timestamptz, now())", window="$8::interval")
_LIST = """
SELECT s.sms_msg_id, s."to", s."from", s.create_time, {state} AS state, m.status, m.parts_total,
       m.parts_delivered, m.delivered_at, o.source IS NOT NULL AS blacklisted_at_send
{source}
WHERE {only}($1::text IS NULL OR s."to" = $1)
  AND ($2::text IS NULL OR {state} = $2)
  AND ($3::timestamptz IS NULL OR {time} >= $3)
  AND ($4::timestamptz IS NULL OR {time} < $4)
  AND ({time}, {id}) > ($5::timestamptz, $6::text)
  AND ($10::boolean IS NULL OR (o.source IS NOT NULL) = $10)
ORDER BY {time}, {id}
LIMIT $7
"""


def _in_span(column: str) -> str:
    """``column`` within the span of days $11 to $12 (None: open); planned for their values, the
    condition leaves the other days' partitions out of the plan."""
    return f"($11::timestamptz IS NULL OR {column} >= $11) AND ($12::timestamptz IS NULL OR {column} < $12)"


# A send's state is at its createTime (message_at): one day. Each look-up is a subquery of its own
# (LIMIT 1: one row per send), so the planner plans each table's days once instead of searching
# join orders over them.
_STATE_OF_SEND = f"""JOIN LATERAL (SELECT * FROM message_states m
              WHERE m.sms_msg_id = s.sms_msg_id AND m.message_at = s.create_time AND {_in_span("m.message_at")}
              LIMIT 1) m ON true"""


# A listing of sends reads a span of days ($11, $12) a statement, planned with those days alone,
# from the cursor's day on, until its page is full (_by_spans): a page costs the days it reads, not
# the days kept. Every send, in send order, with its state and opt-out row; a recipient's, its
# days read from recipient_index (sql/019_message_index.sql).
_LIST_SENDS = _LIST.format(
    state=_LIST_STATE, time="s.create_time", id="s.sms_msg_id", only=f"{_in_span('s.create_time')} AND ",
    source=f"""FROM sent_messages s
{_STATE_OF_SEND}
LEFT JOIN LATERAL (SELECT source FROM sends_after_optout o
                   WHERE o.sms_msg_id = s.sms_msg_id AND o.sent_at = s.create_time AND o.source IS NOT NULL
                     AND {_in_span("o.sent_at")} LIMIT 1) o ON true""",
)  # fmt: skip
# The sends after an opt-out, those few in the same order (their sent_at is the send's createTime),
# walking their own partial index, in every day at once: a day holds few or none, and its empty
# index costs a statement less than planning the day does ($11, $12 NULL: every day).
_LIST_AFTER_OPTOUT = _LIST.format(
    state=_LIST_STATE, time="o.sent_at", id="o.sms_msg_id", only="o.source IS NOT NULL AND ",
    source=f"""FROM sends_after_optout o
JOIN LATERAL (SELECT * FROM sent_messages s WHERE s.sms_msg_id = o.sms_msg_id AND s.create_time = o.sent_at
              LIMIT 1) s ON true
{_STATE_OF_SEND}""",
)  # fmt: skip

# A span holds at most this many days' partitions; a recipient's, no more than the rows still wanted
# (each of its days has a send) or this many calendar days.
DAYS_A_QUERY = 8
_RECIPIENT_DAYS = """
SELECT day FROM recipient_index
WHERE "to" = $1 AND day >= date_trunc('day', $2::timestamptz, 'UTC') AND ($3::timestamptz IS NULL OR day < $3)
ORDER BY day
"""

# The replies' listing reads the days of receipt that a transaction at or after its cursor's wrote
# into (sql/027_uplink_days.sql): the span from the first to the last, planned with those days
# alone ($4, $5). It shows the transactions that had all ended when the days were read ($6): a
# reply of each of them has its day's row among those read, whatever commits in between.
_UPLINK_DAYS = """
SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS below, min(day) AS first,
       max(day) + interval '1 day' AS after
FROM uplink_days WHERE last_txid >= $1::text::xid8
"""
_UPLINKS = """
SELECT u.id, u.txid::text AS txid, u.sms_msg_id, u."from", u."to", u.body, u.create_time, u.received_at,
       a.name AS application, l.sms_msg_id AS reply_to, l.candidates, l.match, l.unlinked_reason
FROM uplinks u
JOIN applications a ON a.id = u.application_id
LEFT JOIN reply_links l ON l.uplink_id = u.id AND l.uplink_received_at = u.received_at
                        AND l.uplink_received_at >= $4::timestamptz AND l.uplink_received_at < $5::timestamptz
WHERE u.txid < $6::text::xid8
  AND (u.txid, u.id) >= ($1::text::xid8, $2::bigint)  -- the position after the cursor's (following)
  AND u.received_at >= $4::timestamptz AND u.received_at < $5::timestamptz
ORDER BY u.txid, u.id
LIMIT $3
"""


def encode_cursor(*values: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(values, default=str).encode()).decode().rstrip("=")


_TXID = re.compile(r"0|[1-9][0-9]{0,19}")


def is_txid(value: object) -> bool:
    """A transaction id as PostgreSQL's xid8 reads it back unchanged: ASCII decimal digits with no
    leading zero (it would read ``010`` as octal), below 2**64."""
    return isinstance(value, str) and _TXID.fullmatch(value) is not None and int(value) < 2**64


_LAST_ID = (1 << 63) - 1
_LAST_TXID = (1 << 64) - 1


def following(txid: str, row_id: int) -> tuple[str, int]:
    """The first (txid, id) after this one, for a page that asks its rows ">=" it. PostgreSQL
    estimates a row comparison by its first column alone, so "> (txid, id)" counts none of the
    rows left in the cursor's transaction (a writer's batch), and the planner, told that few
    rows follow, sorts all of them instead of reading the key in order up to the page's end."""
    if row_id < _LAST_ID:
        return txid, row_id + 1
    if int(txid) < _LAST_TXID:
        return str(int(txid) + 1), 0
    return txid, row_id  # the last position there is (no row can be there)


def decode_cursor(cursor: str, arity: int) -> list[Any]:
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError, RecursionError):  # RecursionError: a thousand nested "["
        raise ProtocolError("invalid_cursor", "the cursor was not made by this API") from None
    if not isinstance(values, list) or len(values) != arity:
        raise ProtocolError("invalid_cursor", "the cursor was not made by this API")
    return values


def _reply(r: asyncpg.Record) -> dict[str, Any]:
    """An uplink as the API shows it, with how its link was made: ``match`` the rule that found the
    message it answers (None: none did, ``unlinked_reason`` says why), ``candidates`` how many sends
    that rule had to choose from (``ambiguous``: more than one)."""
    return {
        "sms_msg_id": r["sms_msg_id"],
        "from": r["from"],
        "to": r["to"],
        "body": r["body"],
        "create_time": r["create_time"],
        "received_at": r["received_at"],
        "ambiguous": (r["candidates"] or 0) > 1,
        "match": r["match"],
        "candidates": r["candidates"] or 0,
        "unlinked_reason": r["unlinked_reason"],
    }


async def message(
    conn: asyncpg.Connection, sms_msg_id: str, *, window: timedelta = REPORT_WINDOW, now: datetime | None = None
) -> Message | None:
    """One message as the API shows it, its state at ``now`` (default: the database's clock)."""
    async with conn.transaction():
        await db.plan_each_time(conn)  # each statement reads the days it is given
        days = [r["message_at"] for r in await conn.fetch(_DAYS, sms_msg_id)]
        row = await conn.fetchrow(_MESSAGE, sms_msg_id, window, now, days) if days else None
        if row is None:
            return None
        # no bounds: no reports (NULL bounds would leave the planner every day to look at)
        reports = []
        if row["reports_from"] is not None:
            reports = await conn.fetch(_REPORTS, sms_msg_id, row["reports_from"], row["reports_until"])
        span = await conn.fetchrow(_REPLY_DAYS, sms_msg_id)
        replies = await conn.fetch(_REPLIES, sms_msg_id, *span) if span is not None and span["first"] is not None else []
    to = row["to"] or next((r["to"] for r in reports if r["to"]), None)
    return Message.model_validate({
        "sms_msg_id": row["sms_msg_id"],
        "to": to,
        "from": row["from"],
        "state": row["state"],
        "status": row["status"],
        "parts": {"total": row["parts_total"], "delivered": row["parts_delivered"]},
        "registered": row["sent"],
        "sent_status": row["sent_status"],
        "sent_at": row["sent_at"],
        "delivered_at": row["delivered_at"],
        "latency_seconds": float(row["latency_seconds"]) if row["latency_seconds"] is not None else None,
        "extend": row["extend"],
        "template_id": row["template_id"],
        "signature": row["signature"],
        "message_type": row["message_type"],
        "application": row["application"],
        "reports": [
            {
                "status": r["status"],
                "sequence": r["sequence"],
                "total": r["total"],
                "source": r["source"],
                "status_desc": r["status_desc"],
                "update_time": r["update_time"],
                "extend": r["extend"],
                "to": r["to"],
                "org_code": r["org_code"],
                "extra": json.loads(r["extra"]),
                "via": r["via"],
                "received_at": r["received_at"],
            }
            for r in reports
        ],
        "replies": [_reply(r) for r in replies],
        "blacklisted_at_send": (
            BlacklistEntry.model_validate(atsend.entry({**row, "to": row["optout_number"]}), from_attributes=True)
            if row["source"]
            else None
        ),
    })


async def messages(
    conn: asyncpg.Connection,
    *,
    to: str | None,
    state: str | None,
    since: datetime | None,
    until: datetime | None,
    cursor: str | None,
    limit: int,
    blacklisted_at_send: bool | None = None,
    window: timedelta = REPORT_WINDOW,
    now: datetime | None = None,
) -> tuple[list[MessageSummary], str | None]:
    after_time, after_id = datetime.min.isoformat() + "+00:00", ""
    if cursor:
        after_time, after_id = decode_cursor(cursor, 2)
    try:
        start = datetime.fromisoformat(after_time).astimezone(UTC)  # OverflowError: offsets at year 1
        if not isinstance(after_id, str) or "\x00" in after_id:
            raise ValueError(after_id)
    except (TypeError, ValueError, OverflowError):
        raise ProtocolError("invalid_cursor", "the cursor was not made by this API") from None
    args = (to, state, since, until, start, after_id, limit, window, now, blacklisted_at_send)
    if blacklisted_at_send:
        rows = await conn.fetch(_LIST_AFTER_OPTOUT, *args, None, None)
    elif to is not None:
        rows = await _recipient_sends(conn, args)
    else:
        rows = await _by_spans(conn, args)
    items = [
        MessageSummary.model_validate({
            "sms_msg_id": r["sms_msg_id"],
            "to": r["to"],
            "from": r["from"],
            "sent_at": r["create_time"],
            "state": r["state"],
            "status": r["status"],
            "parts": {"total": r["parts_total"], "delivered": r["parts_delivered"]},
            "delivered_at": r["delivered_at"],
            "blacklisted_at_send": r["blacklisted_at_send"],
        })
        for r in rows
    ]
    next_cursor = encode_cursor(rows[-1]["create_time"].isoformat(), rows[-1]["sms_msg_id"]) if rows else cursor
    return items, next_cursor


async def _recipient_sends(conn: asyncpg.Connection, args: tuple[Any, ...]) -> list[asyncpg.Record]:
    """The page of _LIST_SENDS's rows for ``args`` (_LIST's $1 to $10) with a recipient, read
    from the days it was sent to, a run of them at a time, until the page is full."""
    to, since, until, start, limit = args[0], args[2], args[3], args[4], args[6]
    rows: list[asyncpg.Record] = []
    async with conn.transaction():
        await db.plan_each_time(conn)
        days = [r["day"] for r in await conn.fetch(_RECIPIENT_DAYS, to, max(start, since or start), until)]
        while days and len(rows) < limit:
            # each day has a send: no more days than rows wanted, within as many days or DAYS_A_QUERY
            wanted = limit - len(rows)
            run = [day for day in days[:wanted] if day < days[0] + timedelta(days=max(wanted, DAYS_A_QUERY))]
            del days[: len(run)]
            rows += await _span(conn, args, run[0], run[-1] + timedelta(days=1), wanted)
    return rows


async def _by_spans(conn: asyncpg.Connection, args: tuple[Any, ...]) -> list[asyncpg.Record]:
    """The page of _LIST_SENDS's rows for ``args`` (_LIST's $1 to $10), read a span of the
    sends' days at a time (the first DAYS_A_QUERY of its day partitions, then twice as many
    each time: partitions.runs), from the cursor's or ``since``'s day on, until the page is full."""
    since, until, start, limit = args[2], args[3], args[4], args[6]
    rows: list[asyncpg.Record] = []
    async with conn.transaction():
        await db.plan_each_time(conn)
        days = await partitions.days(conn, "sent_messages")
        for lo, hi in partitions.runs(days, max(start, since or start), until, DAYS_A_QUERY):
            rows += await _span(conn, args, lo, hi, limit - len(rows))
            if len(rows) >= limit:
                break
    return rows


async def _span(
    conn: asyncpg.Connection, args: tuple[Any, ...], lo: datetime | None, hi: datetime | None, wanted: int
) -> list[asyncpg.Record]:
    """At most ``wanted`` of _LIST_SENDS's rows for ``args`` between ``lo`` and ``hi`` (None:
    open). They follow the cursor's position, or, in a span that starts later (``since``, the
    next days), the instant before the span with the least id, which takes no row of the span
    out: PostgreSQL enters the index at the row comparison's bound, not at the span's, and from
    the cursor's it read a day of 250,000 sends up to ``since`` for a page of 20."""
    start, after_id = args[4], args[5]
    after = (lo - _INSTANT, "") if lo is not None and lo > start else (start, after_id)
    return await conn.fetch(_LIST_SENDS, *args[:4], *after, wanted, *args[7:], lo, hi)


_INSTANT = timedelta(microseconds=1)  # a timestamptz's resolution


async def uplinks(conn: asyncpg.Connection, *, cursor: str | None, limit: int) -> tuple[list[Uplink], str]:
    txid: object = "0"
    after_id: object = 0
    if cursor:
        txid, after_id = decode_cursor(cursor, 2)
    # What PostgreSQL can take: an xid8 and a bigint (else DataError, a 500).
    txid = str(txid) if isinstance(txid, int) and not isinstance(txid, bool) else txid
    if not is_txid(txid) or isinstance(after_id, bool) or not isinstance(after_id, int) or not 0 <= after_id < 2**63:
        raise ProtocolError("invalid_cursor", "the cursor was not made by this API")
    start = following(str(txid), after_id)
    rows: list[asyncpg.Record] = []
    async with conn.transaction():
        span = await conn.fetchrow(_UPLINK_DAYS, start[0])  # one row (an aggregate)
        if span is not None and span["first"] is not None:
            await db.plan_each_time(conn)
            rows = await conn.fetch(_UPLINKS, *start, limit, span["first"], span["after"], span["below"])
    items = [
        Uplink.model_validate({**_reply(r), "application": r["application"], "reply_to": r["reply_to"]}) for r in rows
    ]
    next_cursor = encode_cursor(rows[-1]["txid"], rows[-1]["id"]) if rows else (cursor or encode_cursor("0", 0))
    return items, next_cursor
