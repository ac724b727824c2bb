"""The clock's part of delivery states: messages whose report window passes become ``unreported``.

A state is a function of the reports, the send and the clock (:mod:`receiver.correlation.state`). Reports and
sends change it in the transaction that stores them (``store.refresh_states``); the clock moves
with no event, so :func:`sweep_unreported` applies its part for every message at once: a
set-based UPDATE of the pending messages whose window has passed (and, should the window have
been made longer, back again), walking the ``(state, sent_at)`` index. Nothing is done per
callback.

Safe to run anywhere and at any time: one sweeper works at a time (an advisory lock; the others
return at once), and a row is only ever moved while it still is in the state the sweep moves it
from. It takes the messages' locks first (``store.lock_messages``), as every writer of a state
does: a refresh compares the state it finds under them with the one it writes, so nothing may
move it in between. The statement that moves a state announces it on the event feed as a state
change.

Until a sweep has run, readers compute the same state from the clock (:data:`EFFECTIVE_STATE`).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
import structlog

from .. import db, metrics
from . import store

log = structlog.get_logger("receiver.sweep")

_LOCK = 0x554E5250  # "UNRP": one sweeper at a time
# Rows per transaction: the sweep holds the locks of the messages it moves (a few hundred ids
# take most of the 256 lock buckets, which every writer's batch needs) for a few milliseconds.
BATCH = 500

# $1 window, $2 now, $3 rows at most. A sent message's state is at its createTime (message_at =
# sent_at).
_PAST_WINDOW = "sent_at <= $2::timestamptz - $1::interval"
_DUE = """
SELECT sms_msg_id, message_at FROM message_states
WHERE state = '{from_}' AND sent AND {when}
ORDER BY sent_at LIMIT $3
"""
# The due states ($3, $4), still due under their messages' locks: moved to the state ($5) and
# announced, each with its send's recipient (at the day of its message_at).
_MOVE = """
WITH moved AS (
    UPDATE message_states m SET state = $5, updated_at = now()
    FROM unnest($3::text[], $4::timestamptz[]) AS due(sms_msg_id, message_at)
    WHERE m.sms_msg_id = due.sms_msg_id AND m.message_at = due.message_at
      AND m.state = '{from_}' AND m.sent AND {when}
    RETURNING m.*
)
INSERT INTO events (kind, sms_msg_id, number, state, previous, status, parts_total, parts_delivered, registered,
                    sent_at, delivered_at, latency)
SELECT 'state', m.sms_msg_id, s."to", m.state, '{from_}', m.status, m.parts_total, m.parts_delivered, m.sent,
       m.sent_at, m.delivered_at, m.latency
FROM moved m
LEFT JOIN sent_messages s ON s.sms_msg_id = m.sms_msg_id AND s.create_time = m.sent_at
                         AND s.create_time BETWEEN $6 AND $7
ORDER BY m.sms_msg_id COLLATE "C"
"""


@dataclass(frozen=True)
class _Move:
    """States ``from_`` to move to ``to`` once ``when`` holds: the statements that find them and move them."""

    from_: str
    when: str
    to: str

    @property
    def due(self) -> str:
        return _DUE.format(from_=self.from_, when=self.when)

    @property
    def move(self) -> str:
        return _MOVE.format(from_=self.from_, when=self.when)


# Pending past the window: unreported. A window made longer: what the clock no longer says is
# past it is pending again.
_MARK_UNREPORTED = _Move("pending", _PAST_WINDOW, "unreported")
_REOPEN = _Move("unreported", f"NOT ({_PAST_WINDOW})", "pending")

# What readers show before the sweep has run: the stored state corrected by the clock.
# Parameters named by the caller: the window and now, as SQL expressions.
EFFECTIVE_STATE = """CASE
    WHEN m.state = 'pending' AND m.sent AND m.sent_at <= {now} - {window} THEN 'unreported'
    WHEN m.state = 'unreported' AND m.sent_at > {now} - {window} THEN 'pending'
    ELSE m.state END"""

# Stuck: registered, pending past $2, still inside the window $1; by application (the send's own,
# else the one whose channels list the send's channel) and channel. The (state, sent_at) index
# bounds the scan to the pending messages of one window; at most $3 label pairs.
_STUCK_PENDING = """
SELECT coalesce(own.name, by_channel.name, '') AS application, coalesce(c.channel, '') AS channel,
       sum(c.messages)::bigint AS messages
FROM (
    SELECT s.application_id, s."from" AS channel, count(*) AS messages
    -- a sent message's state and send are at its createTime (message_at): the window's days only
    FROM message_states m JOIN sent_messages s ON s.sms_msg_id = m.sms_msg_id AND s.create_time = m.message_at
    WHERE m.state = 'pending' AND m.sent
      AND m.sent_at > coalesce($4::timestamptz, now()) - $1::interval
      AND m.sent_at <= coalesce($4::timestamptz, now()) - $2::interval
      AND m.message_at > coalesce($4::timestamptz, now()) - $1::interval
      AND m.message_at <= coalesce($4::timestamptz, now()) - $2::interval
    GROUP BY 1, 2
) c
LEFT JOIN applications own ON own.id = c.application_id
LEFT JOIN LATERAL (
    SELECT name FROM applications WHERE c.application_id IS NULL AND c.channel = ANY(channels) ORDER BY id LIMIT 1
) by_channel ON true
GROUP BY 1, 2
ORDER BY 3 DESC, 1, 2
LIMIT $3
"""


@dataclass(frozen=True)
class Swept:
    unreported: int = 0  # pending messages whose window had passed
    reopened: int = 0  # unreported ones inside a window made longer since
    skipped: bool = False  # another sweeper was at work


async def sweep_unreported(
    conn: db.Connection, window: timedelta, now: datetime | None = None, *, batch: int = BATCH
) -> Swept:
    """Bring stored states up to the clock (``now``; default: the database's). Outside a
    transaction: each batch of at most ``batch`` rows commits on its own."""
    unreported = reopened = 0
    for step, moved in ((_MARK_UNREPORTED, "unreported"), (_REOPEN, "reopened")):
        while True:
            async with conn.transaction():
                if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1::bigint)", _LOCK):
                    return Swept(unreported, reopened, skipped=True)
                clock = now if now is not None else await conn.fetchval("SELECT now()")
                due = await conn.fetch(step.due, window, clock, batch)
                n = 0
                if due:
                    ids, at = [row["sms_msg_id"] for row in due], [row["message_at"] for row in due]
                    await store.lock_messages(conn, ids)  # waits for a refresh of them to end
                    n = _count(await conn.execute(step.move, window, clock, ids, at, step.to, min(at), max(at)))
            if moved == "unreported":
                unreported += n
                metrics.UNREPORTED.inc(n)
            else:
                reopened += n
            if len(due) < batch:
                break
    if unreported or reopened:
        log.info("sweep.done", unreported=unreported, reopened=reopened)
    return Swept(unreported, reopened)


async def stuck_pending(
    conn: asyncpg.Connection,
    window: timedelta,
    after: timedelta,
    now: datetime | None = None,
    *,
    limit: int = metrics.MAX_STUCK_LABELS,
) -> list[tuple[str, str, int]]:
    """(application, channel, messages) pending longer than ``after``, inside their window."""
    rows = await conn.fetch(_STUCK_PENDING, window, after, limit, now)
    return [(row["application"], row["channel"], row["messages"]) for row in rows]


async def run(pool: asyncpg.Pool, window: timedelta, interval: float) -> None:
    """Sweep every ``interval`` seconds (the first after one interval) until cancelled; a failure
    (PostgreSQL away) only skips a round."""
    while True:
        await asyncio.sleep(interval)
        try:
            async with pool.acquire(timeout=5) as conn:
                await sweep_unreported(conn, window)
        except Exception as error:  # noqa: BLE001 - the next round tries again
            log.warning("sweep.failed", error=type(error).__name__)


def start(pool: asyncpg.Pool, window: timedelta, interval: float) -> asyncio.Task[None]:
    return asyncio.create_task(run(pool, window, interval), name="receiver-sweep")


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _count(status: str) -> int:
    return int(status.split()[-1])
