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
from datetime import timedelta

import asyncpg

from . import links
from .sent import SentMessage

AfterInsert = Callable[[asyncpg.Connection, list[asyncpg.Record], list[asyncpg.Record]], Awaitable[None]]

# Messages map onto 256 lock buckets: a transaction takes at most 256 advisory locks, whatever
# its size (PostgreSQL's lock table is small), always in the same order (no deadlock).
_LOCK_MESSAGES = """
SELECT pg_advisory_xact_lock(7, k)
FROM (SELECT DISTINCT (hashtext(id) & 255) AS k FROM unnest($1::text[]) AS id ORDER BY 1) AS buckets
"""

# A message's reports are read from the days between its stored bounds (message_states
# reports_from / reports_until) and the receipt times of the reports stored now ($2, $3): one or
# two day partitions each, not every day kept. A state from before the bounds existed (reports,
# no bounds) is read from every day.
_REFRESH_STATES = """
WITH ids AS (SELECT DISTINCT unnest($1::text[]) AS sms_msg_id),
new AS (
    SELECT sms_msg_id, min(received_at) AS first, max(received_at) AS last
    FROM unnest($2::text[], $3::timestamptz[]) AS n(sms_msg_id, received_at) GROUP BY sms_msg_id
),
bounds AS (
    SELECT ids.sms_msg_id,
           CASE WHEN m.reports > 0 AND m.reports_from IS NULL THEN '-infinity'
                ELSE least(m.reports_from, new.first) END AS lo,
           CASE WHEN m.reports > 0 AND m.reports_until IS NULL THEN 'infinity'
                ELSE greatest(m.reports_until, new.last) END AS hi
    FROM ids LEFT JOIN message_states m USING (sms_msg_id) LEFT JOIN new USING (sms_msg_id)
),
r AS (
    SELECT b.sms_msg_id, coalesce(s.sequence, 1) AS part, s.total, s.status, s.update_time, s.received_at,
           upper(s.status) = 'DELIVRD' AS ok
    FROM bounds b
    -- OFFSET 0 keeps the subquery a loop per message (its days pruned at run time), not one
    -- join the planner would answer with a scan of every day
    JOIN LATERAL (SELECT * FROM status_reports s
                  WHERE s.sms_msg_id = b.sms_msg_id AND s.received_at BETWEEN b.lo AND b.hi OFFSET 0) s ON true
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
per_message AS (
    SELECT ids.sms_msg_id,
           s.sms_msg_id IS NOT NULL AS sent, s.status AS sent_status, s.create_time,
           greatest(coalesce(s.total, 1), coalesce(br.max_part, 1)) AS parts_total,
           coalesce(bp.delivered, 0) AS parts_delivered,
           coalesce(bp.failed, 0) AS parts_failed,
           coalesce(br.n, 0) AS reports,
           bp.delivered_at, coalesce(bp.undated, false) AS undated,
           latest.status AS latest_status, br.reports_from, br.reports_until
    FROM ids
    LEFT JOIN sent_messages s ON s.sms_msg_id = ids.sms_msg_id
    LEFT JOIN by_report br ON br.sms_msg_id = ids.sms_msg_id
    LEFT JOIN by_part bp ON bp.sms_msg_id = ids.sms_msg_id
    LEFT JOIN latest ON latest.sms_msg_id = ids.sms_msg_id
),
decided AS (
    SELECT *,
           CASE WHEN sent AND sent_status <> '000000' THEN 'failed'
                WHEN parts_failed > 0 THEN 'failed'
                WHEN parts_delivered >= parts_total THEN 'delivered'
                ELSE 'pending' END AS state
    FROM per_message
    WHERE sent OR reports > 0
)
INSERT INTO message_states AS m (sms_msg_id, state, status, parts_total, parts_delivered, reports, sent,
                                 sent_at, delivered_at, latency, updated_at, reports_from, reports_until)
SELECT sms_msg_id, state, coalesce(latest_status, sent_status), parts_total, parts_delivered, reports, sent,
       create_time,
       CASE WHEN state = 'delivered' AND NOT undated THEN delivered_at END,
       CASE WHEN state = 'delivered' AND NOT undated THEN delivered_at - create_time END,
       now(), reports_from, reports_until
FROM decided
ON CONFLICT (sms_msg_id) DO UPDATE SET
    -- past its report window (the sweep's mark, receiver.correlation.sweep) a message the
    -- reports leave pending stays unreported: the window does not reopen for a report
    state = CASE WHEN EXCLUDED.state = 'pending' AND m.state = 'unreported' THEN 'unreported' ELSE EXCLUDED.state END,
    status = EXCLUDED.status, parts_total = EXCLUDED.parts_total,
    parts_delivered = EXCLUDED.parts_delivered, reports = EXCLUDED.reports, sent = EXCLUDED.sent,
    sent_at = EXCLUDED.sent_at, delivered_at = EXCLUDED.delivered_at, latency = EXCLUDED.latency,
    updated_at = EXCLUDED.updated_at, reports_from = EXCLUDED.reports_from, reports_until = EXCLUDED.reports_until
"""

_REGISTER = """
INSERT INTO sent_messages (sms_msg_id, "to", "from", status, create_time, country_id, total, extend,
    template_id, signature, message_type, raw, registered_by, application_id)
SELECT m.sms_msg_id, m."to", m."from", m.status, coalesce(m.create_time, now()), m.country_id, m.total,
       m.extend, m.template_id, m.signature, m.message_type, m.raw, $13, $14
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], $7::smallint[],
            $8::text[], $9::text[], $10::text[], $11::text[], $12::jsonb[])
     AS m(sms_msg_id, "to", "from", status, create_time, country_id, total, extend, template_id, signature,
          message_type, raw)
ON CONFLICT (sms_msg_id) DO NOTHING
RETURNING sms_msg_id, "to", create_time
"""


async def lock_messages(conn: asyncpg.Connection, sms_msg_ids: Iterable[str]) -> None:
    """Until this transaction ends, no one else recomputes (or prunes) these messages' states."""
    await conn.execute(_LOCK_MESSAGES, sorted(set(sms_msg_ids)))


async def refresh_states(
    conn: asyncpg.Connection, sms_msg_ids: Iterable[str], new_reports: Sequence[asyncpg.Record] = ()
) -> None:
    """Recompute the states of these messages from all of their reports; ``new_reports`` (rows
    with ``sms_msg_id`` and ``received_at``) are those stored in this transaction."""
    ids = sorted(set(sms_msg_ids))
    if not ids:
        return
    await lock_messages(conn, ids)
    await conn.execute(
        _REFRESH_STATES, ids, [r["sms_msg_id"] for r in new_reports], [r["received_at"] for r in new_reports]
    )


def after_insert_hook(window: timedelta) -> AfterInsert:
    """The writer's step, with the report window for reply links."""

    async def after_insert(
        conn: asyncpg.Connection, new_reports: list[asyncpg.Record], new_uplinks: list[asyncpg.Record]
    ) -> None:
        """States of the messages that got reports, links of the new replies."""
        await refresh_states(conn, (row["sms_msg_id"] for row in new_reports), new_reports)
        await links.link(conn, [row["id"] for row in new_uplinks], window)

    return after_insert


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
    new = await conn.fetch(_REGISTER, *columns, registered_by, application_id)
    ids = [row["sms_msg_id"] for row in new]
    await refresh_states(conn, ids)
    await links.relink_after_sends(conn, [(row["to"], row["create_time"]) for row in new], window)
    return ids
