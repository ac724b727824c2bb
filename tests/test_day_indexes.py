"""The indexes of a day (docs/storage.md, ``sql/020_day_indexes.sql``): every partition of a
day-partitioned table (a day made ahead, a day made from rows the default partition took, the
default itself, the table as it was before partitioning) has exactly its table's set of indexes;
a database that held rows before the indexes changed answers every statement that read the
changed ones as a database left without the change does, and those statements read the indexes
that replace them."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from support import admin, plan_nodes, run, with_database
from test_partitions import BEFORE_016

from receiver import partitions, retention
from receiver.correlation import queries, sweep
from receiver.correlation import store as correlation
from receiver.correlation.sent import SentMessage
from receiver.db import migrate
from receiver.protocol.events import StatusReport, Uplink
from receiver.records import ReportRecord, UplinkRecord
from receiver.writer import store

SQL = Path(__file__).resolve().parent.parent / "sql"
WINDOW = timedelta(hours=72)
HOOKS = (correlation.after_insert_hook(WINDOW),)

# Each day partition's indexes, as pg_get_indexdef gives them without their names.
DAY_INDEXES = {
    "status_reports": {"UNIQUE btree (sms_msg_id, dedupe_key, received_at)", "btree (id)", "btree (received_at)",
                       "btree (report_hour)"},
    "uplinks": {"UNIQUE btree (sms_msg_id, application_id, received_at)", "btree (id)", "btree (received_at)",
                'btree (from_e164, "to")', "btree (txid, id)", "btree (reply_hour)"},
    "reply_links": {"UNIQUE btree (uplink_id, uplink_received_at)", "btree (sms_msg_id)", "btree (uplink_received_at)",
                    "btree (reply_hour)"},
    "quarantine": {"UNIQUE btree (record_id, received_at)", "btree (id)", "btree (received_at)"},
    "events": {"UNIQUE btree (txid, id, at)", "brin (at)"},
    "sent_messages": {"UNIQUE btree (sms_msg_id, create_time)", 'btree ("to", create_time, sms_msg_id)',
                      "btree (create_time, sms_msg_id)"},
    "message_states": {"UNIQUE btree (sms_msg_id, message_at)", "btree (sent_hour)",
                       "btree (state, sent_at) WHERE (state = ANY (ARRAY['pending'::text, 'unreported'::text]))",
                       "btree (message_at) WHERE (sent_at IS NULL)"},
    "sends_after_optout": {"UNIQUE btree (sms_msg_id, sent_at)", "btree (sent_at, sms_msg_id) WHERE (source IS NOT NULL)",
                           "btree (sent_hour) WHERE (source IS NOT NULL)"},
}  # fmt: skip

_INDEXES = r"""
SELECT regexp_replace(pg_get_indexdef(indexrelid), '^CREATE (UNIQUE )?INDEX \S+ ON \S+ USING ', '\1') AS def
FROM pg_index WHERE indrelid = $1::regclass
"""


async def _indexes(conn: asyncpg.Connection, table: str) -> set[str]:
    return {row["def"] for row in await conn.fetch(_INDEXES, table)}


def test_every_day_partitioned_table_is_listed() -> None:
    assert set(DAY_INDEXES) == set(partitions.TABLES) - partitions.MONTHLY


@pytest.mark.parametrize("table", sorted(DAY_INDEXES))
def test_a_day_made_now_has_its_table_s_indexes(db_url: str, table: str) -> None:
    """A day made ahead, a day made from the rows the default partition took (a report and its
    state from a clock far ahead), the default partition: the same set."""
    today = datetime.now(UTC).date()
    ahead, crowded = today + timedelta(days=30), today + timedelta(days=40)

    async def go() -> dict[str, set[str]]:
        conn = await asyncpg.connect(db_url)
        try:
            app_id = await _app(conn)
            at = datetime(crowded.year, crowded.month, crowded.day, 12, tzinfo=UTC)
            await store(conn, [_report(app_id, "far-1", at, "DELIVRD")], HOOKS)
            in_default = await conn.fetchval(f"SELECT count(*) FROM {table}_default")
            for day in (ahead, crowded):
                assert await partitions.create(conn, table, day)
            if table in ("status_reports", "message_states"):  # its rows moved out of the default
                assert in_default == 1 and await conn.fetchval(f"SELECT count(*) FROM {table}_default") == 0
            names = [partitions.name(table, ahead), partitions.name(table, crowded), f"{table}_default"]
            return {name: await _indexes(conn, name) for name in names}
        finally:
            await conn.close()

    for name, indexes in run(go()).items():
        assert indexes == DAY_INDEXES[table], name


def test_a_database_partitioned_from_tables_with_rows_has_the_same_indexes_on_every_partition(
    empty_db_url: str, tmp_path: Path
) -> None:
    """The table as it was before partitioning (``<table>_older``) keeps no index of its own
    beside the set."""
    older = tmp_path / "sql"
    shutil.copytree(SQL, older, ignore=shutil.ignore_patterns("__init__.py", "__pycache__", "01[6-9]_*", "0[2-9][0-9]_*"))

    async def go() -> dict[str, set[str]]:
        conn = await asyncpg.connect(empty_db_url)
        try:
            await migrate.apply(conn, older)
            await conn.execute(BEFORE_016)
            await migrate.apply(conn)
            found = {}
            for table in DAY_INDEXES:
                for part in await partitions.partitions(conn, table):
                    found[part.name] = await _indexes(conn, part.name)
            return found
        finally:
            await conn.close()

    found = run(go())
    olders = {name for name in found if name.endswith("_older")}
    assert olders == {f"{t}_older" for t in DAY_INDEXES}
    for name, indexes in found.items():
        table = max((t for t in DAY_INDEXES if name.startswith(t + "_")), key=len)
        assert indexes == DAY_INDEXES[table], name


# --- the same answers, before and after ---------------------------------------------------------

NOW = datetime.now(UTC).replace(microsecond=0)
START = datetime(NOW.year, NOW.month, NOW.day, tzinfo=UTC) - timedelta(days=5)


async def _app(conn: asyncpg.Connection) -> int:
    app_id: int = await conn.fetchval(
        "INSERT INTO applications (name, token_hash) VALUES ('i', '\\x01') ON CONFLICT (name) DO UPDATE SET name = 'i'"
        " RETURNING id"
    )
    return app_id


def _report(app_id: int, sms_msg_id: str, at: datetime, status: str) -> ReportRecord:
    event = StatusReport(sms_msg_id, status, 1, 1, update_time=at - timedelta(seconds=5), source="2")
    return ReportRecord(app_id, "form", at, "raw", event)


def _number(i: int) -> str:
    return f"+861310000000{i % 5}"


async def _fill(conn: asyncpg.Connection) -> None:
    """Five days of sends every 3 hours: delivered, failed, never reported (pending; unreported
    once past the window), accepted then delivered; reports of messages never registered (states
    without a send) on the oldest days; replies to some of them."""
    app_id = await _app(conn)
    for back in range(6):
        for table in DAY_INDEXES:
            await partitions.create(conn, table, (START + timedelta(days=back)).date())
    sends = [START + timedelta(hours=3 * i, minutes=7) for i in range(40)]
    async with conn.transaction():
        messages = [SentMessage(f"m-{i}", _number(i), f"csms{i % 2}", "000000", at, "CN", 1, None, None, None, None, {})
                    for i, at in enumerate(sends)]  # fmt: skip
        await correlation.register_sent(conn, messages, "test", application_id=app_id, window=WINDOW)
    outcome = {0: ["DELIVRD"], 1: ["UNDELIV"], 2: [], 3: ["ACCEPTD", "DELIVRD"]}
    reports = [
        _report(app_id, f"m-{i}", at + timedelta(seconds=10 + n), status)
        for i, at in enumerate(sends)
        for n, status in enumerate(outcome[i % 4])
    ]
    reports += [_report(app_id, f"u-{i}", START + timedelta(hours=5 * i + 1), "DELIVRD") for i in range(8)]
    await store(conn, reports, HOOKS)
    replies = [
        UplinkRecord(app_id, at + timedelta(minutes=2), "raw", Uplink(f"up-{i}", _number(i), "csms0", "ok"))
        for i, at in enumerate(sends) if i % 6 == 0
    ]  # fmt: skip
    await store(conn, replies, HOOKS)


@pytest.fixture(scope="module")
def databases(pg_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The same rows in two databases: one with the indexes of a day as they were (every
    migration but 020, so that today's statements write the rows), the other then migrated to
    the current set."""
    older = tmp_path_factory.mktemp("sql")
    shutil.copytree(SQL, older, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__init__.py", "__pycache__", "020_*"))
    names = {kind: f"i_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("before", "after")}

    async def build(url: str, upgrade: bool) -> None:
        conn = await asyncpg.connect(url)
        try:
            await migrate.apply(conn, older)
            await _fill(conn)
            if upgrade:
                await migrate.apply(conn)
            await conn.execute("ANALYZE")
        finally:
            await conn.close()

    urls = {kind: with_database(pg_server_url, name) for kind, name in names.items()}
    try:
        for kind, name in names.items():
            run(admin(pg_server_url, f"CREATE DATABASE {name}"))
            run(build(urls[kind], upgrade=kind == "after"))
        yield urls
    finally:
        for name in names.values():
            run(admin(pg_server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def _plain(value: Any) -> Any:
    """Records and models as JSON, for comparing."""
    return json.loads(json.dumps(value, default=lambda v: v.model_dump() if hasattr(v, "model_dump") else str(v)))


async def _messages(conn: asyncpg.Connection) -> Any:
    return [await queries.message(conn, f"m-{i}", now=NOW) for i in range(40)] + [
        await queries.message(conn, f"u-{i}", now=NOW) for i in range(8)
    ]


async def _listings(conn: asyncpg.Connection) -> Any:
    pages = [await queries.messages(conn, to=_number(i), state=None, since=None, until=None, cursor=None, limit=50,
                                    now=NOW) for i in range(5)]  # fmt: skip
    for state in (None, "pending", "unreported", "delivered"):
        pages.append(await queries.messages(conn, to=None, state=state, since=None, until=None, cursor=None, limit=50,
                                            now=NOW))  # fmt: skip
    return pages


async def _dashboards(conn: asyncpg.Connection) -> Any:
    views = [r[0] for r in await conn.fetch("SELECT viewname FROM pg_views WHERE viewname LIKE 'dashboard\\_%' ORDER BY 1")]
    assert "dashboard_delivery_hourly" in views
    out = {}
    for view in views:
        out[view] = [list(r) for r in await conn.fetch(f"SELECT * FROM {view} ORDER BY 1, 2, 3")]
        out[f"{view} one hour"] = [list(r) for r in await conn.fetch(
            f"SELECT * FROM {view} WHERE bucket >= $1 AND bucket < $2 ORDER BY 1, 2, 3",
            START + timedelta(hours=9), START + timedelta(hours=10))]  # fmt: skip
    return out


async def _stuck(conn: asyncpg.Connection) -> Any:
    return await sweep.stuck_pending(conn, WINDOW, timedelta(minutes=10), now=NOW)


async def _swept(conn: asyncpg.Connection) -> Any:
    swept = await sweep.sweep_unreported(conn, WINDOW, now=NOW)
    reopened = await sweep.sweep_unreported(conn, WINDOW * 2, now=NOW)
    states = await conn.fetch("SELECT sms_msg_id, state FROM message_states ORDER BY 1")
    assert swept.unreported > 0 and reopened.reopened > 0
    return swept, reopened, states


async def _pruned(conn: asyncpg.Connection) -> Any:
    older_than = await conn.fetchval("SELECT now() - $1::timestamptz", START + timedelta(days=2, hours=12))
    result = await retention.prune(conn, older_than)
    left = {t: await conn.fetch(f"SELECT sms_msg_id FROM {t} ORDER BY 1") for t in retention.MESSAGE_TABLES}
    assert result.dropped and result.counts["message_states"] > 0
    return result.counts, sorted(result.dropped), left


# Each check runs on both databases, in a transaction rolled back after it.
CHECKS: dict[str, Callable[[asyncpg.Connection], Awaitable[Any]]] = {
    "GET /v1/messages/{id}": _messages,
    "GET /v1/messages (by recipient, by state)": _listings,
    "the dashboard views": _dashboards,
    "stuck pending": _stuck,
    "the sweep": _swept,
    "prune": _pruned,
}


@pytest.mark.parametrize("check", list(CHECKS))
def test_a_migrated_database_answers_as_before(databases: dict[str, str], check: str) -> None:
    async def answer(url: str) -> Any:
        conn = await asyncpg.connect(url)
        try:
            transaction = conn.transaction()
            await transaction.start()
            try:
                return _plain(await CHECKS[check](conn))
            finally:
                await transaction.rollback()
        finally:
            await conn.close()

    before, after = run(answer(databases["before"])), run(answer(databases["after"]))
    assert after == before
    assert before not in ([], {}, None)


# The statements that read a changed index, and the index (on the parent) each reads instead.
PLANS: dict[str, tuple[str, tuple[object, ...], str]] = {
    "the sweep, pending": (sweep._MARK_UNREPORTED.due, (WINDOW, NOW, 1000), "message_states_unsettled"),
    "the sweep, unreported": (sweep._REOPEN.due, (WINDOW, NOW, 1000), "message_states_unsettled"),
    "prune, states without a send": (retention._STATES_WITHOUT_REPORTS, (None, 1000, [], START + timedelta(days=3)),
                                     "message_states_unsent"),
    "a message's reports": (queries._REPORTS, ("m-3", START, NOW), "status_reports_key"),
    "delivery per hour": ("SELECT * FROM dashboard_delivery_hourly WHERE bucket >= $1 AND bucket < $2",
                          (START, START + timedelta(hours=6)), "message_states_sent_hour"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(PLANS))
def test_the_statements_of_the_changed_indexes_read_the_new_ones(databases: dict[str, str], name: str) -> None:
    """Told to avoid scanning whole partitions, each finds its rows by the index meant for it (a
    partial index is used only when the statement's conditions imply its own)."""
    sql, args, index = PLANS[name]

    async def used() -> set[str]:
        conn = await asyncpg.connect(databases["after"])
        try:
            async with conn.transaction():
                await conn.execute("SET LOCAL enable_seqscan = off")
                names = {node["Index Name"] for node in await plan_nodes(conn, sql, *args) if "Index Name" in node}
                rows = await conn.fetch(
                    "SELECT DISTINCT coalesce(p.inhparent, i.oid)::regclass::text AS name FROM pg_class i"
                    " LEFT JOIN pg_inherits p ON p.inhrelid = i.oid WHERE i.oid = ANY($1::regclass[])",
                    sorted(names),
                )
                return {row["name"] for row in rows}
        finally:
            await conn.close()

    assert index in run(used())

