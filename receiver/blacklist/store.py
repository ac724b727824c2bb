"""SQL side of the blacklist: signals in, entries and history out (the rules are in ``rules.py``).

Every change goes the same way: record the signals, then, under a lock per number, fold each
touched number's signals again and write the difference to ``blacklist`` and
``blacklist_history``. The writer does it in the transaction that stores the events (only for
events inserted now), ``/v1/sent`` in the transaction that registers sends, the API and the
CLI in their own.

Locks: a shared advisory lock for everything per number, then one advisory lock per number in a
fixed order; bulk work (import, rebuild) takes the first one exclusively instead, and
``receiver prune`` takes it shared while it deletes stored events. Whoever folds
a number second sees the signals of whoever folded it first, so concurrent writers cannot
leave a number folded from a partial set of its signals.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import structlog

from .. import metrics, partitions
from ..config import Settings
from ..correlation import store as correlation_store
from . import atsend
from .keywords import BLACKLIST_CODES, Keywords, is_blacklist_code
from .numbers import mask, to_e164
from .rules import Diff, Entry, Folded, Scope, Signal, diff, fold

log = structlog.get_logger("receiver.blacklist")

_LOCK_ALL = 0x424C0001  # shared: per-number work; exclusive: import, rebuild
_LOCK_NUMBER = 0x424C0002

_SIGNAL_COLUMNS = "id, number, action, source, channel, reason, sms_msg_id, actor, uplink_id, report_id, at"
_ENTRY_COLUMNS = "number, channel, source, reason, sms_msg_id, added_by, added_at"


@dataclass(frozen=True)
class Config:
    keywords: Keywords
    scope: Scope
    region: str

    @classmethod
    def of(cls, settings: Settings) -> Config:
        keywords = Keywords.of(settings.optout_keywords, settings.resubscribe_keywords)
        return cls(keywords, settings.blacklist_scope, settings.default_region)


# --- the writer's step, and /v1/sent's --------------------------------------------------------


def after_insert_hook(settings: Settings):  # type: ignore[no-untyped-def]
    """The writer's step for new events, configured from ``settings`` (keywords, scope, region)."""
    config = Config.of(settings)

    async def after_insert(
        conn: asyncpg.Connection, new_reports: list[asyncpg.Record], new_uplinks: list[asyncpg.Record]
    ) -> None:
        """Blacklist the senders of unsubscribe replies and the recipients of blacklist codes."""
        signals = uplink_signals(config, new_uplinks)
        coded = [row for row in new_reports if is_blacklist_code(row["status"])]
        if coded:
            sends = await _sends(conn, coded)
            signals += report_signals(config, coded, sends)
        if signals:
            await apply(conn, config, signals)

    return after_insert


async def after_sent(
    conn: asyncpg.Connection, sms_msg_ids: list[str], reported: tuple[datetime, datetime], settings: Settings | None = None
) -> None:
    """Sends registered now: apply the blacklist codes already reported for them, received
    within ``reported`` (their createTimes and now, widened by partitions.WINDOW).

    A report with a blacklist code and no ``to`` cannot name its number until its send is
    registered; in ``channel`` scope a report's channel is the send's. Call it inside the
    transaction that registered the sends. ``settings``: the environment's when not given."""
    if not sms_msg_ids:
        return
    config = Config.of(settings or Settings())
    rows = await conn.fetch(
        """SELECT id, sms_msg_id, status, "to", received_at, update_time FROM status_reports
           WHERE sms_msg_id = ANY($1::text[]) AND upper(btrim(status)) = ANY($2::text[])
             AND received_at BETWEEN $3 AND $4""",
        list(sms_msg_ids), sorted(BLACKLIST_CODES), *reported,
    )  # fmt: skip
    if rows:
        sends = await _sends(conn, rows)
        await apply(conn, config, report_signals(config, rows, sends))


def uplink_signals(config: Config, uplinks: Iterable[asyncpg.Record]) -> list[Signal]:
    """Replies that are, as a whole, an unsubscribe or re-subscribe keyword."""
    signals = []
    for row in uplinks:
        intent = config.keywords.intent(row["body"])
        if intent is None:
            continue
        number = to_e164(row["from"], config.region)
        if number is None:
            log.warning("blacklist.unparseable_number", number=mask(row["from"]), sms_msg_id=row["sms_msg_id"])
            continue
        signals.append(
            Signal(
                number=number,
                action="add" if intent == "optout" else "remove",
                source="keyword",
                channel=row["to"],
                reason=f"replied {row['body'].strip()!r}"[:200],
                at=row["received_at"],
                sms_msg_id=row["sms_msg_id"],
                uplink_id=row["id"],
            )
        )
    return signals


def report_signals(
    config: Config, reports: Iterable[asyncpg.Record], sends: dict[str, tuple[str, str | None]]
) -> list[Signal]:
    """Reports with a blacklist code whose number is known: their own ``to``, else their send's."""
    signals = []
    for row in reports:
        send = sends.get(row["sms_msg_id"])
        number = to_e164(row["to"], config.region) if row["to"] else None
        if number is None and send is not None:
            number = to_e164(send[0], config.region)
        if number is None:
            if row["to"] or send is not None:
                log.warning(
                    "blacklist.unparseable_number",
                    number=mask(row["to"] or (send[0] if send else None)),
                    sms_msg_id=row["sms_msg_id"],
                )
            else:
                log.info("blacklist.report_pending", sms_msg_id=row["sms_msg_id"], status=row["status"])
            continue
        signals.append(
            Signal(
                number=number,
                action="add",
                source="platform",
                channel=send[1] if send is not None else None,
                reason=f"status {row['status'].strip().upper()}",
                at=row["received_at"],
                sms_msg_id=row["sms_msg_id"],
                report_id=row["id"],
            )
        )
    return signals


async def _sends(conn: asyncpg.Connection, reports: Sequence[asyncpg.Record]) -> dict[str, tuple[str, str | None]]:
    """The sends of these reports (rows with ``sms_msg_id``, ``received_at``, ``update_time``),
    from the days near the reports (partitions.WINDOW)."""
    if not reports:
        return {}
    lo, hi = partitions.span(at for row in reports for at in correlation_store.report_times(row))
    rows = await conn.fetch(
        'SELECT sms_msg_id, "to", "from" FROM sent_messages WHERE sms_msg_id = ANY($1::text[])'
        " AND create_time BETWEEN $2 AND $3",
        sorted({row["sms_msg_id"] for row in reports}), lo, hi,
    )  # fmt: skip
    return {row["sms_msg_id"]: (row["to"], row["from"]) for row in rows}


async def check_sends(
    conn: asyncpg.Connection, config: Config, sms_msg_ids: Sequence[str], within: tuple[datetime, datetime]
) -> dict[str, Entry]:
    """Sends registered now (or again): which went to a number blacklisted for them when they
    were sent, with the entry that covered it; ``within``: where their createTimes are. Inside
    the transaction that registers them."""
    if not sms_msg_ids:
        return {}
    rows = await conn.fetch(
        'SELECT DISTINCT "to" FROM sent_messages WHERE sms_msg_id = ANY($1::text[]) AND create_time BETWEEN $2 AND $3',
        sms_msg_ids, *within,
    )  # fmt: skip
    await _lock(conn, [row["to"] for row in rows])
    await atsend.refresh(conn, config.scope, sms_msg_ids=sms_msg_ids, within=within)
    return await atsend.found(conn, sms_msg_ids, within)


# --- applying signals -------------------------------------------------------------------------


async def apply(conn: asyncpg.Connection, config: Config, signals: Sequence[Signal]) -> Diff:
    """Record derived signals (idempotently) and fold their numbers again. Inside a transaction."""
    numbers = {s.number for s in signals}
    report_ids = [s.report_id for s in signals if s.report_id is not None]
    if report_ids:  # a report's signal may be re-derived (its send registered since): fold its old number too
        rows = await conn.fetch("SELECT number FROM blacklist_signals WHERE report_id = ANY($1::bigint[])", report_ids)
        numbers |= {row["number"] for row in rows}
    await _lock(conn, numbers)
    await _record(conn, signals)
    _, changes = await _refold(conn, config, numbers)
    await atsend.refresh(conn, config.scope, numbers=numbers, since=min(s.at for s in signals))
    _log(changes)
    return changes


async def _lock(conn: asyncpg.Connection, numbers: Iterable[str]) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock_shared($1, 0)", _LOCK_ALL)
    keys = sorted({_lock_key(n) for n in numbers})
    await conn.execute("SELECT pg_advisory_xact_lock($1, k) FROM unnest($2::integer[]) AS k", _LOCK_NUMBER, keys)


async def _lock_all(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock($1, 0)", _LOCK_ALL)


async def keep_out_bulk_work(conn: asyncpg.Connection) -> None:
    """Until this transaction ends, no rebuild or import runs (both wait for it, and it for them).

    For work that removes stored events (``receiver prune``): a rebuild then never reads a
    half-pruned set of them."""
    await conn.execute("SELECT pg_advisory_xact_lock_shared($1, 0)", _LOCK_ALL)


def _lock_key(number: str) -> int:
    return int.from_bytes(hashlib.blake2b(number.encode(), digest_size=4).digest(), "big", signed=True)


_INSERT_SIGNALS = """
INSERT INTO blacklist_signals (number, action, source, channel, reason, sms_msg_id, actor, uplink_id, report_id, at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
    $8::bigint[], $9::bigint[], $10::timestamptz[])
"""


async def _record(conn: asyncpg.Connection, signals: Sequence[Signal]) -> list[int]:
    """Store signals; a reply's is stored once, a report's is replaced (its send may have been registered since)."""
    ids: list[int] = []
    groups = (
        ([s for s in signals if s.uplink_id is not None], " ON CONFLICT (uplink_id) DO NOTHING"),
        (
            [s for s in signals if s.report_id is not None],
            """ ON CONFLICT (report_id) DO UPDATE SET number = EXCLUDED.number, channel = EXCLUDED.channel,
                   reason = EXCLUDED.reason, sms_msg_id = EXCLUDED.sms_msg_id, at = EXCLUDED.at
               WHERE (blacklist_signals.number, blacklist_signals.channel)
                     IS DISTINCT FROM (EXCLUDED.number, EXCLUDED.channel)""",
        ),
        ([s for s in signals if s.uplink_id is None and s.report_id is None], ""),
    )
    for group, conflict in groups:
        if group:
            rows = await conn.fetch(_INSERT_SIGNALS + conflict + " RETURNING id", *_signal_columns(group))
            ids += [row["id"] for row in rows]
    return ids


def _signal_columns(signals: Sequence[Signal]) -> list[list[object]]:
    rows = [
        (s.number, s.action, s.source, s.channel, s.reason, s.sms_msg_id, s.actor, s.uplink_id, s.report_id, s.at)
        for s in signals
    ]
    return [list(column) for column in zip(*rows, strict=True)]


async def _refold(
    conn: asyncpg.Connection, config: Config, numbers: Iterable[str] | None, *, actor: str | None = None
) -> tuple[Folded, Diff]:
    """Fold the signals of ``numbers`` (``None``: of every number) and write what changed."""
    if numbers is None:
        signal_rows = await conn.fetch(f"SELECT {_SIGNAL_COLUMNS} FROM blacklist_signals")
        entry_rows = await conn.fetch(f"SELECT {_ENTRY_COLUMNS} FROM blacklist")
    else:
        wanted = sorted(set(numbers))
        signal_rows = await conn.fetch(
            f"SELECT {_SIGNAL_COLUMNS} FROM blacklist_signals WHERE number = ANY($1::text[])", wanted
        )
        entry_rows = await conn.fetch(
            f"SELECT {_ENTRY_COLUMNS} FROM unnest($1::text[]) AS wanted(number) JOIN blacklist USING (number)", wanted
        )
    folded = fold((Signal(**dict(row)) for row in signal_rows), config.scope)
    changes = diff((_entry(row) for row in entry_rows), folded, actor=actor)
    await _write(conn, changes)
    return folded, changes


async def _write(conn: asyncpg.Connection, changes: Diff) -> None:
    if changes.removed:
        await conn.execute(
            """DELETE FROM blacklist b USING unnest($1::text[], $2::text[], $3::text[]) AS d(number, channel, source)
               WHERE b.number = d.number AND coalesce(b.channel, '') = coalesce(d.channel, '')
                 AND b.source = d.source""",
            [e.number for e in changes.removed],
            [e.channel for e in changes.removed],
            [e.source for e in changes.removed],
        )
    if changes.added:
        rows = [(e.number, e.channel, e.source, e.reason, e.sms_msg_id, e.added_by, e.added_at) for e in changes.added]
        await conn.execute(
            f"""INSERT INTO blacklist ({_ENTRY_COLUMNS})
                SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                    $7::timestamptz[])""",
            *[list(column) for column in zip(*rows, strict=True)],
        )
    if changes.history:
        history = [
            (c.entry.number, c.entry.channel, c.entry.source, c.action, c.actor, c.reason, c.sms_msg_id)
            for c in changes.history
        ]
        await conn.execute(
            """INSERT INTO blacklist_history (number, channel, source, action, actor, reason, sms_msg_id)
               SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                   $7::text[])""",
            *[list(column) for column in zip(*history, strict=True)],
        )


def _log(changes: Diff) -> None:
    metrics.blacklist_changed(changes)  # counted when the transaction commits, under the writer
    for change in changes.history:
        log.info(
            "blacklist." + ("added" if change.action == "add" else "removed"),
            number=mask(change.entry.number),
            channel=change.entry.channel,
            source=change.entry.source,
            actor=change.actor,
            sms_msg_id=change.sms_msg_id,
        )


def _entry(row: asyncpg.Record) -> Entry:
    return Entry(**dict(row))


# --- people: the API and the CLI --------------------------------------------------------------


async def add(
    conn: asyncpg.Connection, config: Config, number: str, *, reason: str, actor: str, channel: str | None = None
) -> bool:
    """Blacklist ``number`` (E.164) by hand; False when that manual entry existed already. In a transaction."""
    await _lock(conn, [number])
    at = await conn.fetchval("SELECT now()")
    [signal_id] = await _record(conn, [Signal(number, "add", "manual", channel, reason, at, actor=actor)])
    _, changes = await _refold(conn, config, [number])
    if not changes.history:  # nothing changed: leave no trace
        await conn.execute("DELETE FROM blacklist_signals WHERE id = $1", signal_id)
        return False
    await atsend.refresh(conn, config.scope, numbers=[number], since=at)
    _log(changes)
    return True


async def remove(
    conn: asyncpg.Connection, config: Config, number: str, *, reason: str, actor: str, channel: str | None = None
) -> list[Entry]:
    """Lift every entry of ``number`` (of ``channel`` only, when given); returns what was removed."""
    await _lock(conn, [number])
    at = await conn.fetchval("SELECT now()")
    [signal_id] = await _record(conn, [Signal(number, "remove", "manual", channel, reason, at, actor=actor)])
    _, changes = await _refold(conn, config, [number])
    if not changes.removed:
        await conn.execute("DELETE FROM blacklist_signals WHERE id = $1", signal_id)
        return []
    await atsend.refresh(conn, config.scope, numbers=[number], since=at)
    _log(changes)
    return changes.removed


async def import_entries(
    conn: asyncpg.Connection, config: Config, rows: Sequence[tuple[str, str | None, str]], *, actor: str
) -> int:
    """Blacklist many (number, channel, reason) by hand at once; returns how many entries are new."""
    if not rows:
        return 0
    await _lock_all(conn)
    at = await conn.fetchval("SELECT now()")
    ids = await _record(conn, [Signal(n, "add", "manual", c, r, at, actor=actor) for n, c, r in rows])
    folded, changes = await _refold(conn, config, {n for n, _, _ in rows})
    effective = {s.id for s in folded.adders.values()}
    await conn.execute(
        "DELETE FROM blacklist_signals WHERE id = ANY($1::bigint[])", [i for i in ids if i not in effective]
    )
    await atsend.refresh(conn, config.scope, numbers={n for n, _, _ in rows}, since=at)
    return sum(1 for c in changes.history if c.action == "add")


# The signals derived again: those whose reply or report is still stored. Each stored table is
# read for the ids the signals name (a sub-query of its own, which Citus runs on the shards),
# not joined to the signals row by row.
_DERIVED_AGAIN = """
WITH replies AS (
    SELECT id FROM uplinks WHERE id IN (SELECT uplink_id FROM blacklist_signals WHERE source = 'keyword')
),
reports AS (
    SELECT id FROM status_reports WHERE id IN (SELECT report_id FROM blacklist_signals WHERE source = 'platform')
)
DELETE FROM blacklist_signals s
WHERE (s.source = 'keyword' AND s.uplink_id IN (SELECT id FROM replies))
   OR (s.source = 'platform' AND s.report_id IN (SELECT id FROM reports))
"""


async def rebuild(conn: asyncpg.Connection, config: Config) -> Diff:
    """Derive the keyword and platform signals again from every stored reply and report (with the
    current settings), keep the people's ones, fold every number again. In a transaction.

    A signal whose reply or report is no longer stored (``receiver prune`` deleted it) cannot be
    derived again: it is kept as it was recorded, so pruning never changes what a rebuild gives."""
    await _lock_all(conn)
    signals: list[Signal] = []
    batch: list[asyncpg.Record] = []
    async for row in _stream(conn, 'SELECT id, sms_msg_id, "from", "to", body, received_at FROM uplinks'):
        batch.append(row)
        if len(batch) >= 10_000:
            signals += uplink_signals(config, batch)
            batch = []
    signals += uplink_signals(config, batch)
    reports = await conn.fetch(
        """SELECT id, sms_msg_id, status, "to", received_at, update_time FROM status_reports
           WHERE upper(btrim(status)) = ANY($1::text[])""",
        sorted(BLACKLIST_CODES),
    )
    sends = await _sends(conn, reports)
    signals += report_signals(config, reports, sends)
    await conn.execute(_DERIVED_AGAIN)
    for start in range(0, len(signals), 10_000):
        await _record(conn, signals[start : start + 10_000])
    _, changes = await _refold(conn, config, None, actor="rebuild")
    await atsend.refresh(conn, config.scope)
    return changes


async def _stream(conn: asyncpg.Connection, sql: str) -> AsyncIterator[asyncpg.Record]:
    async for row in conn.cursor(sql, prefetch=5000):
        yield row


# --- reading ----------------------------------------------------------------------------------


async def entries(conn: asyncpg.Connection, number: str, channel: str | None = None) -> list[Entry]:
    """The entries that stop sends to ``number`` (from ``channel``, when given), oldest first."""
    rows = await conn.fetch(
        f"""SELECT {_ENTRY_COLUMNS} FROM blacklist
            WHERE number = $1 AND ($2::text IS NULL OR channel IS NULL OR channel = $2)
            ORDER BY added_at, source, channel NULLS FIRST""",
        number,
        channel,
    )
    return [_entry(row) for row in rows]


_E164_LIST = re.compile(r"\+[0-9]+(?:,\+[0-9]+)*")


async def blacklisted(conn: asyncpg.Connection, numbers: Sequence[str], channel: str | None = None) -> set[str]:
    """Which of ``numbers`` (E.164) may not be sent to (from ``channel``, when given)."""
    if not numbers:
        return set()
    # One comma-separated text, not a text[]: encoding a 500-element array costs more than the look-up.
    joined = ",".join(dict.fromkeys(numbers))
    if not _E164_LIST.fullmatch(joined):
        raise ValueError("numbers must be in E.164")
    # number = ANY(...): one walk of the index that starts with the number (sql/012), not a probe per number.
    rows = await conn.fetch(
        """SELECT number FROM blacklist
           WHERE number = ANY(string_to_array($1::text, ','))
             AND ($2::text IS NULL OR channel IS NULL OR channel = $2)""",
        joined,
        channel,
    )
    return {row["number"] for row in rows}


async def all_entries(conn: asyncpg.Connection) -> list[Entry]:
    rows = await conn.fetch(
        f"SELECT {_ENTRY_COLUMNS} FROM blacklist ORDER BY number, added_at, source, channel NULLS FIRST"
    )
    return [_entry(row) for row in rows]
