"""A status report names an application that is there (sql/021_report_applications.sql): the
writer checks a batch's applications once, under the lock a foreign key takes, instead of a
foreign key's check of every report; deleting an application that reports name is refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from support import run

from receiver import records, writer
from receiver.journal.envelope import Kind
from receiver.protocol.events import StatusReport
from receiver.records import ReportRecord


async def _app(conn: asyncpg.Connection, name: str) -> int:
    app_id: int = await conn.fetchval(
        "INSERT INTO applications (name, token_hash) VALUES ($1, $2) RETURNING id", name, name.encode()
    )
    return app_id


def _report(app_id: int, sms_msg_id: str) -> ReportRecord:
    at = datetime.now(UTC)
    event = StatusReport(sms_msg_id, "DELIVRD", 1, 1, update_time=at - timedelta(seconds=5), source="2")
    return ReportRecord(app_id, "form", at, "raw", event)


def test_the_reports_table_has_no_foreign_key_the_writer_checks_instead(db_url: str) -> None:
    async def go() -> list[str]:
        conn = await asyncpg.connect(db_url)
        try:
            return [r[0] for r in await conn.fetch(
                "SELECT conname FROM pg_constraint WHERE contype = 'f' AND conrelid = 'status_reports'::regclass"
            )]  # fmt: skip
        finally:
            await conn.close()

    assert run(go()) == []


def test_a_batch_naming_an_application_that_is_not_there_is_refused_whole(db_url: str) -> None:
    async def go() -> tuple[str, int]:
        conn = await asyncpg.connect(db_url)
        try:
            app_id = await _app(conn, "there")
            with pytest.raises(asyncpg.ForeignKeyViolationError) as refused:
                await writer.store(conn, [_report(app_id, "ok-1"), _report(app_id + 1000, "gone-1")])
            stored = await conn.fetchval("SELECT count(*) FROM status_reports")
            return str(refused.value), stored
        finally:
            await conn.close()

    message, stored = run(go())
    assert "no application with id" in message and stored == 0


def test_the_writer_stores_the_others_and_keeps_the_orphan_whole_in_the_quarantine(db_url: str) -> None:
    async def go() -> tuple[list[str], list[tuple[str, str]]]:
        conn = await asyncpg.connect(db_url)
        try:
            app_id = await _app(conn, "there")
            body = b"smsMsgId=%s&status=DELIVRD"
            payloads = [
                records.accepted(Kind.STATUS_REPORT, app_id, 1.7e9, body % b"ok-1"),
                records.accepted(Kind.STATUS_REPORT, app_id + 1000, 1.7e9, body % b"orphan-1"),
                records.accepted(Kind.STATUS_REPORT, app_id, 1.7e9, body % b"ok-2"),
            ]
            drain = writer.Writer(None, lambda: asyncpg.connect(db_url))  # type: ignore[arg-type]
            drain._conn = conn
            await drain._store(payloads)
            stored = [r[0] for r in await conn.fetch("SELECT sms_msg_id FROM status_reports ORDER BY 1")]
            kept = [(r[0], r[1]) for r in await conn.fetch("SELECT endpoint, error FROM quarantine")]
            return stored, kept
        finally:
            await conn.close()

    stored, kept = run(go())
    assert stored == ["ok-1", "ok-2"]
    assert kept == [("writer", "unstorable")]


def test_deleting_an_application_that_reports_name_is_refused(db_url: str) -> None:
    async def go() -> int:
        conn = await asyncpg.connect(db_url)
        try:
            named = await _app(conn, "named")
            unnamed = await _app(conn, "unnamed")
            await writer.store(conn, [_report(named, "r-1")])
            with pytest.raises(asyncpg.ForeignKeyViolationError):
                await conn.execute("DELETE FROM applications WHERE id = $1", named)
            await conn.execute("DELETE FROM applications WHERE id = $1", unnamed)
            left: int = await conn.fetchval("SELECT count(*) FROM applications WHERE id = ANY($1::int[])", [named, unnamed])
            return left
        finally:
            await conn.close()

    assert run(go()) == 1  # the named one is still there
