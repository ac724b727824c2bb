"""Reply links: the sent message each reply answers, the rule that found it, and how sure it is.

The rules, strongest first (``sql/015_reply_matching.sql``, ``docs/replies.md``); the first that
finds a send wins, and within it the latest send at or before the reply:

- ``channel``: a send from the number replied to (the platform's documented rule);
- ``reply_number``: a send of the application one of whose reply numbers is the longest prefix of
  the number replied to (carriers append extension digits);
- ``application``: a send of the application whose uplink URL the reply came to, inside the
  report window before the reply;
- ``number``: a send that belongs to no application, inside the report window.

Every statement here works on a whole set of replies at once. A link is a function of the replies,
the sends and the applications' numbers stored: whatever the order they arrive in, relinking
the replies they touch gives the same result. Linkers of the same replying number serialize on
an advisory lock per number bucket, taken in a statement of its own after their own rows are
written, so that one of two concurrent transactions always sees the other's rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import asyncpg

from receiver import partitions

# Replying numbers map onto 256 buckets (lock class 8), locked in order: no deadlock.
_LOCK_REPLY_NUMBERS = """
SELECT pg_advisory_xact_lock(8, k)
FROM (SELECT DISTINCT (hashtext(n) & 255) AS k FROM unnest($1::text[]) AS n WHERE n IS NOT NULL ORDER BY 1) AS b
"""
_LOCK_REPLIES = """
SELECT pg_advisory_xact_lock(8, k)
FROM (SELECT DISTINCT (hashtext(from_e164) & 255) AS k FROM uplinks
      WHERE id = ANY($1::bigint[]) AND received_at BETWEEN $2 AND $3 AND from_e164 IS NOT NULL ORDER BY 1) AS b
"""
_LOCK_EVERY_NUMBER = "SELECT pg_advisory_xact_lock(8, k) FROM generate_series(0, 255) AS k"

# $1 the replies, received between $3 and $4; $2 the report window. Every send to the replying
# number at or before the reply is a candidate of each rule it meets; the strongest rule with a
# candidate decides. The sends are read from the days the number was sent to (recipient_index),
# not from every day kept: the days in runs of consecutive ones, a probe of each run's days.
_LINK = """
WITH u AS (
    SELECT id, application_id, from_e164, "to", coalesce(create_time, received_at) AS at, received_at, reply_hour
    FROM uplinks WHERE id = ANY($1::bigint[]) AND received_at BETWEEN $3 AND $4
),
sent_days AS MATERIALIZED (
    SELECT u.id, d.day FROM u JOIN recipient_index d ON d."to" = u.from_e164 AND d.day <= u.at
),
sent_runs AS MATERIALIZED (
    SELECT id, min(day) AS first_day, max(day) + interval '24 hours' AS after_last
    FROM (SELECT id, day, day - row_number() OVER (PARTITION BY id ORDER BY day) * interval '24 hours' AS run
          FROM sent_days) AS d
    GROUP BY id, run
),
by_reply_number AS (
    SELECT DISTINCT ON (u.id) u.id, r.application_id
    FROM u
    CROSS JOIN LATERAL generate_series(length(u."to"), 4, -1) AS k
    JOIN reply_numbers r ON r.number = left(u."to", k)
    ORDER BY u.id, k DESC
),
channel_owner AS (
    SELECT DISTINCT ON (channel) channel, id AS application_id
    FROM applications CROSS JOIN LATERAL unnest(channels) AS channel
    ORDER BY channel, id
),
candidate AS (
    SELECT u.id AS uplink_id, u.application_id AS replied_to, u."to", u.at, rn.application_id AS reply_number_owner,
           s.sms_msg_id, s.create_time, s."from",
           coalesce(s.application_id, co.application_id) AS owner
    FROM u
    JOIN sent_runs r ON r.id = u.id
    -- A sub-query of its own (grouped by the sends' key: no row merges) is probed for each run:
    -- a join PostgreSQL may answer with a hash of every day's sends (it cannot know how few days
    -- each probe reads), and it did where days are small.
    CROSS JOIN LATERAL (
        SELECT sms_msg_id, create_time, "from", application_id FROM sent_messages
        WHERE "to" = u.from_e164 AND create_time >= r.first_day AND create_time < r.after_last
              AND create_time <= u.at
        GROUP BY sms_msg_id, create_time, "from", application_id
    ) s
    LEFT JOIN by_reply_number rn ON rn.id = u.id
    LEFT JOIN channel_owner co ON co.channel = s."from"
),
sends AS (
    SELECT uplink_id, sms_msg_id, create_time,
           "from" = "to" AS channel,
           owner = reply_number_owner AS reply_number,
           owner = replied_to AND create_time >= at - $2::interval AS application,
           owner IS NULL AND create_time >= at - $2::interval AS number,
           owner IS NULL OR owner = replied_to AS own
    FROM candidate
),
matched AS (
    SELECT s.uplink_id, s.sms_msg_id, s.create_time, m.match, m.strength
    FROM sends s
    CROSS JOIN LATERAL (VALUES ('channel', 1, s.channel), ('reply_number', 2, s.reply_number),
                               ('application', 3, s.application), ('number', 4, s.number)) AS m(match, strength, ok)
    WHERE m.ok
),
best AS (
    SELECT DISTINCT ON (uplink_id) uplink_id, sms_msg_id, match,
           count(*) OVER (PARTITION BY uplink_id, strength) AS candidates
    FROM matched
    ORDER BY uplink_id, strength, create_time DESC, sms_msg_id COLLATE "C" DESC
),
seen AS (
    SELECT uplink_id, bool_or(own) AS own FROM sends GROUP BY uplink_id
)
INSERT INTO reply_links AS l (uplink_id, sms_msg_id, candidates, match, unlinked_reason, linked_at, uplink_received_at,
                              reply_hour)
SELECT u.id, b.sms_msg_id, coalesce(b.candidates, 0), b.match,
       CASE WHEN b.uplink_id IS NOT NULL THEN NULL
            WHEN u.from_e164 IS NULL THEN 'invalid_number'
            WHEN seen.uplink_id IS NULL THEN 'no_send'
            WHEN seen.own THEN 'outside_window'
            ELSE 'other_application' END,
       now(), u.received_at, u.reply_hour
FROM u
LEFT JOIN best b ON b.uplink_id = u.id
LEFT JOIN seen ON seen.uplink_id = u.id
ORDER BY u.id
ON CONFLICT (uplink_id, uplink_received_at) DO UPDATE SET
    sms_msg_id = EXCLUDED.sms_msg_id, candidates = EXCLUDED.candidates, match = EXCLUDED.match,
    unlinked_reason = EXCLUDED.unlinked_reason, linked_at = EXCLUDED.linked_at
WHERE (l.sms_msg_id, l.candidates, l.match, l.unlinked_reason)
      IS DISTINCT FROM (EXCLUDED.sms_msg_id, EXCLUDED.candidates, EXCLUDED.match, EXCLUDED.unlinked_reason)
RETURNING uplink_id
"""

# Replies a newly registered send may answer: from its recipient, at or after its createTime,
# received from $3 on: the earliest createTime less partitions.WINDOW, which allows the platform's
# clock (createTime) that much ahead of ours (received_at), so that the days before are not read.
_REPLIES_AFTER_SENDS = """
SELECT DISTINCT u.id, u.received_at FROM unnest($1::text[], $2::timestamptz[]) AS s(number, at)
JOIN uplinks u ON u.from_e164 = s.number
WHERE coalesce(u.create_time, u.received_at) >= s.at AND u.received_at >= $3
"""

# Replies to a number that starts with one of these reply numbers.
_REPLIES_TO_NUMBERS = """
SELECT u.id, u.received_at FROM uplinks u
WHERE EXISTS (SELECT FROM unnest($1::text[]) AS r(number) WHERE starts_with(u."to", r.number))
"""

# Replies received since $1 (NULL: all), a page after $2.
_REPLIES_SINCE = """
SELECT id, received_at FROM uplinks
WHERE ($1::timestamptz IS NULL OR received_at >= $1) AND id > $2
ORDER BY id LIMIT $3
"""


async def link(conn: asyncpg.Connection, replies: Sequence[asyncpg.Record], window: timedelta) -> int:
    """Link these replies (rows with their ``id`` and ``received_at``) by the strongest rule that
    finds a send; returns how many links were made or changed. Call it inside a transaction, after
    the rows it depends on are written."""
    if not replies:
        return 0
    ids = sorted({row["id"] for row in replies})
    received = [row["received_at"] for row in replies]
    span = (min(received), max(received))
    await conn.execute(_LOCK_REPLIES, ids, *span)
    return len(await conn.fetch(_LINK, ids, window, *span))


async def relink_after_sends(
    conn: asyncpg.Connection, sends: Sequence[tuple[str, datetime]], window: timedelta
) -> int:
    """Sends registered now, as (recipient, createTime): link again the replies they may answer."""
    if not sends:
        return 0
    numbers, times = (list(column) for column in zip(*sends, strict=True))
    await conn.execute(_LOCK_REPLY_NUMBERS, numbers)
    rows = await conn.fetch(_REPLIES_AFTER_SENDS, numbers, times, min(times) - partitions.WINDOW)
    return await link(conn, rows, window)


async def relink_reply_numbers(conn: asyncpg.Connection, reply_numbers: Sequence[str], window: timedelta) -> int:
    """Reply numbers added or removed now: link again every reply to a number they start. Takes
    every number's lock (a rare, administrative change); call it inside the changing transaction."""
    if not reply_numbers:
        return 0
    await conn.execute(_LOCK_EVERY_NUMBER)
    return await link(conn, await conn.fetch(_REPLIES_TO_NUMBERS, list(reply_numbers)), window)


async def relink(
    conn: asyncpg.Connection, window: timedelta, *, since: object = None, batch_size: int = 5000
) -> tuple[int, int]:
    """Apply the rules again to every reply received since ``since`` (None: all), one transaction
    per batch. Returns (replies examined, links made or changed)."""
    examined = changed = 0
    after = 0
    while True:
        async with conn.transaction():
            replies = await conn.fetch(_REPLIES_SINCE, since, after, batch_size)
            if not replies:
                return examined, changed
            changed += await link(conn, replies, window)
        examined += len(replies)
        after = replies[-1]["id"]
