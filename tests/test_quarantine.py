"""The quarantine under a flood of garbage: every refusal counted exactly (once, even when the
journal is replayed), the table bounded, the bodies journaled bounded, and good pushes still
acknowledged while PostgreSQL lags."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from support import FORM, JSON, fetch, fill_disk, run, serving, wait_for

from receiver import metrics, records, writer
from receiver.journal import Journal, JournalReader, envelope
from receiver.journal.appender import JournalFull, JournalUnavailable
from receiver.quarantine import Quarantine

GOOD = "smsMsgId=good-1&status=DELIVRD"


def counts(url: str) -> list[tuple[object, ...]]:
    rows = run(fetch(url, "SELECT endpoint, error, refusals::int FROM quarantine_counts ORDER BY 1, 2"))
    return [tuple(r.values()) for r in rows]


def stored(url: str) -> tuple[int, int]:
    """(rows in the quarantine table, refusals they stand for)."""
    row = run(fetch(url, "SELECT count(*)::int AS n, coalesce(sum(occurrences), 0)::int AS s FROM quarantine"))[0]
    return row["n"], row["s"]


def test_every_refusal_is_counted_per_hour_and_shown_on_the_dashboard(db_url: str, tmp_path: Path) -> None:
    with serving(db_url, tmp_path) as h:
        for _ in range(3):
            assert h.post("status-report", "status=DELIVRD").status_code == 400
        assert h.post("uplink", "hello", "text/plain").status_code == 415
        assert h.post("status-reports", "{", JSON).status_code == 400
        h.settle()
        assert counts(db_url) == [
            ("status-report", "missing_field", 3),
            ("status-reports", "invalid_json", 1),
            ("uplink", "unsupported_media_type", 1),
        ]
        rows = h.rows(
            "SELECT application, endpoint, error, refusals::int, bucket = date_bin('1 hour', last_at, "
            "'2000-01-01 00:00:00+00'), first_at <= last_at FROM dashboard_quarantine ORDER BY endpoint"
        )
        assert rows == [
            ("shop", "status-report", "missing_field", 3, True, True),
            ("shop", "status-reports", "invalid_json", 1, True, True),
            ("shop", "uplink", "unsupported_media_type", 1, True, True),
        ]
        assert h.rows("SELECT body_bytes, occurrences FROM quarantine WHERE endpoint = 'uplink'") == [(5, 1)]


def test_the_table_keeps_its_newest_rows_and_the_counts_keep_everything(db_url: str, tmp_path: Path) -> None:
    with serving(db_url, tmp_path, quarantine_max_rows=3) as h:
        for i in range(10):
            assert h.post("status-report", f"status=DELIVRD&n={i}").status_code == 400
            h.settle()  # one writer batch each: the table is trimmed after each of them
        assert wait_for(lambda: stored(db_url)[0] == 3, timeout=10)
        kept = h.rows("SELECT convert_from(raw_body, 'UTF8') FROM quarantine ORDER BY id")
        assert kept == [("status=DELIVRD&n=7",), ("status=DELIVRD&n=8",), ("status=DELIVRD&n=9",)]
        assert counts(db_url) == [("status-report", "missing_field", 10)]


def test_trim_keeps_exactly_the_newest_rows(db_url: str) -> None:
    async def scenario() -> list[int]:
        conn = await asyncpg.connect(db_url)
        try:
            batch = [_record(f"body {i}".encode()) for i in range(25)]
            assert await writer.store(conn, batch) == 25
            assert await writer.trim_quarantine(conn, 30) == 0
            assert await writer.trim_quarantine(conn, 10) == 15
            assert await writer.trim_quarantine(conn, 10) == 0
            rows = await conn.fetch("SELECT convert_from(raw_body, 'UTF8') AS b FROM quarantine ORDER BY id")
            assert await writer.trim_quarantine(conn, 0) == 10
            refusals = await conn.fetchval("SELECT refusals FROM quarantine_counts")
            return [int(r["b"].split()[1]) for r in rows] + [refusals]
        finally:
            await conn.close()

    assert run(scenario()) == [*range(15, 25), 25]


def test_a_replayed_record_counts_once(db_url: str) -> None:
    """A crash between the commit and the journal's own bookkeeping replays the batch: the
    rows are there already, and nothing is counted again (a count-only record neither)."""
    one = _record(b"garbage")
    [many] = records.decode(records.quarantine_count(None, "status-report", "missing_field", 7, 1e9, 1e9 + 0.5, {}))

    async def scenario() -> list[int]:
        conn = await asyncpg.connect(db_url)
        try:
            assert await writer.store(conn, [one, many]) == 2
            assert await writer.store(conn, [one, many]) == 0
            assert await writer.store(conn, [many]) == 0
            return [await conn.fetchval("SELECT sum(refusals)::int FROM quarantine_counts"),
                    await conn.fetchval("SELECT sum(occurrences)::int FROM quarantine")]  # fmt: skip
        finally:
            await conn.close()

    assert run(scenario()) == [8, 8]


def test_over_the_rate_bodies_are_not_kept_but_every_refusal_is_counted(db_url: str, tmp_path: Path) -> None:
    with serving(db_url, tmp_path, quarantine_bodies_per_second=0.1) as h:  # a burst of 1, then 1 per 10 s
        before = metrics.QUARANTINE_BODIES_NOT_KEPT.labels("rate_limit")._value.get()
        for i in range(12):
            assert h.post("status-report", f"status=DELIVRD&n={i}").status_code == 400
        assert h.post("uplink", "x", "text/plain").status_code == 415  # a kind of its own: kept
        assert wait_for(lambda: stored(db_url)[1] == 13, timeout=10)
        rows = h.rows("SELECT endpoint, convert_from(raw_body, 'UTF8'), detail FROM quarantine WHERE occurrences = 1")
        assert sorted((endpoint, body, json.loads(detail)) for endpoint, body, detail in rows) == [
            ("status-report", "status=DELIVRD&n=0", {"field": "smsMsgId"}),
            ("uplink", "x", {"expected": FORM}),
        ]
        # the other 11 as counts journaled every second: one row per second at most
        unkept = h.rows("SELECT endpoint, raw_body, detail, occurrences FROM quarantine WHERE occurrences > 1")
        assert {(row[0], row[1], row[2]) for row in unkept} == {("status-report", b"", '{"bodies_not_kept": "rate_limit"}')}
        assert sum(row[3] for row in unkept) == 11
        assert counts(db_url) == [("status-report", "missing_field", 12), ("uplink", "unsupported_media_type", 1)]
        assert metrics.QUARANTINE_BODIES_NOT_KEPT.labels("rate_limit")._value.get() - before == 11


@contextlib.contextmanager
def table_locked(url: str, table: str) -> Iterator[None]:
    """Another session holds an exclusive lock on ``table``: the writer's inserts wait for it."""
    ready, release = threading.Event(), threading.Event()

    async def hold() -> None:
        conn = await asyncpg.connect(url)
        try:
            async with conn.transaction():
                await conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
                ready.set()
                await asyncio.to_thread(release.wait)
        finally:
            await conn.close()

    thread = threading.Thread(target=asyncio.run, args=(hold(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield
    finally:
        release.set()
        thread.join(10)


def test_a_garbage_flood_cannot_fill_the_journal_for_good_pushes(db_url: str, tmp_path: Path) -> None:
    """PostgreSQL stalls (the quarantine table is locked) while 400 garbage bodies arrive, large
    then small: without bounds their records would fill this 1 MiB journal to the brim and the
    good push after them would get 503. Past half the journal only counts are journaled; the good
    push gets 200, and once PostgreSQL moves again every refusal is counted."""
    large, small = b"{" + b"x" * (100 << 10), b"{" + b"x" * 50
    with serving(db_url, tmp_path, journal_max_bytes=1 << 20, quarantine_bodies_per_second=100) as h:
        journal = h.client.app.state.journal  # type: ignore[attr-defined]
        with table_locked(db_url, "quarantine"):
            for body in [large] * 100 + [small] * 300:
                assert h.post("status-reports", body, JSON).status_code == 400
            assert journal.backlog_bytes > journal.max_bytes // 2  # PostgreSQL is not moving
            assert h.post("status-report", GOOD).status_code == 200
        assert wait_for(lambda: stored(db_url)[1] == 400, timeout=20)
        assert counts(db_url) == [("status-reports", "invalid_json", 400)]
        # Rows with a body (a count-only row carries none, and may count a single refusal).
        kept = h.rows("SELECT count(*)::int, min(length(raw_body)), max(body_bytes) FROM quarantine WHERE raw_body <> ''::bytea")
        assert kept[0][0] < 40 and kept[0][1:] == (records.QUARANTINE_MAX_RAW, len(large))
        assert h.rows("SELECT count(*) FROM status_reports") == [(1,)]


def test_a_failed_journal_write_counts_its_refusals_as_lost(tmp_path: Path) -> None:
    """The disk fails under a queued refusal (ENOSPC on the write): no request awaits it, and
    what it held is still counted in ``receiver_quarantine_lost``."""

    async def scenario() -> float:
        journal = Journal(tmp_path / "journal", max_bytes=1 << 20, segment_bytes=1 << 20)
        gate = Quarantine(journal, bodies_per_second=1000)
        await journal.append(b"{}")  # the segment is open
        fill_disk(journal)  # every write: ENOSPC
        before = metrics.QUARANTINE_LOST._value.get()
        gate.add(1, "status-report", time.time(), "invalid_field", {}, FORM, b"body")
        with contextlib.suppress(JournalUnavailable):
            await journal.append(b"{}")  # flushed with the refusal's record, failing with it
        lost = float(metrics.QUARANTINE_LOST._value.get() - before)
        await journal.close()
        return lost

    assert run(scenario()) == 1


def test_a_full_journal_loses_refusals_only_with_a_count_in_the_metrics(tmp_path: Path) -> None:
    """The gate on a real journal: bodies while the backlog is under half, counts only above it,
    and when not even a count fits, the refusals lost are counted in ``receiver_quarantine_lost``."""

    async def scenario() -> tuple[int, int, float]:
        journal = Journal(tmp_path / "journal", max_bytes=64 << 10, segment_bytes=1 << 20)
        gate = Quarantine(journal, bodies_per_second=1000)
        lost_before = metrics.QUARANTINE_LOST._value.get()
        body = b"z" * (10 << 10)
        for _ in range(5):  # about 13.7 KiB each once encoded: over half of 64 KiB after 3
            gate.add(1, "status-report", time.time(), "invalid_field", {}, FORM, body)
            await journal.append(b"{}")  # wait until durable: the backlog counts durable bytes
        gate.flush()
        for size in (8 << 10, 1 << 10, 64):  # fill the journal to the brim with records of our own
            with contextlib.suppress(JournalFull):
                while True:
                    await journal.append(b"x" * size)
        gate.add(1, "status-report", time.time(), "invalid_field", {}, FORM, body)
        gate.add(1, "status-report", time.time(), "invalid_field", {}, FORM, body)
        gate.flush()  # their count does not fit either
        lost = metrics.QUARANTINE_LOST._value.get() - lost_before
        payloads = JournalReader(journal.root).read(1000).payloads
        await journal.close()
        refusal = bytes([envelope.VERSION, envelope.Kind.QUARANTINE])
        decoded = [record for p in payloads if p.startswith(refusal) for record in records.decode(p)]
        quarantined = [r for r in decoded if isinstance(r, records.QuarantineRecord)]
        with_body = sum(1 for r in quarantined if r.raw)
        counted = sum(r.occurrences for r in quarantined)
        return with_body, counted, lost

    with_body, counted, lost = run(scenario())
    assert with_body == 3
    assert (counted, lost) == (5, 2)


def _record(body: bytes) -> records.QuarantineRecord:
    payload = records.quarantine(None, "status-report", time.time(), "missing_field", {}, FORM, body)
    [decoded] = records.decode(payload)
    assert isinstance(decoded, records.QuarantineRecord)
    return decoded


def test_the_migration_counts_the_rows_already_quarantined(empty_db_url: str, tmp_path: Path) -> None:
    """A database quarantined before the counts existed: they start from its rows."""
    from receiver.db import migrate

    before = tmp_path / "sql"
    before.mkdir()
    for migration in migrate.available():
        if migration.version < "011":
            (before / migration.file_name).write_text(migration.sql)

    async def scenario() -> list[tuple[object, ...]]:
        conn = await asyncpg.connect(empty_db_url)
        try:
            await migrate.apply(conn, before)
            await conn.execute(
                "INSERT INTO quarantine (record_id, endpoint, error, raw_body, received_at) VALUES "
                "(gen_random_uuid(), 'uplink', 'missing_field', '', '2026-01-01 10:05+00'), "
                "(gen_random_uuid(), 'uplink', 'missing_field', '', '2026-01-01 10:55+00'), "
                "(gen_random_uuid(), 'uplink', 'missing_field', '', '2026-01-01 11:00+00')"
            )
            assert "011_quarantine_bound" in await migrate.apply(conn)
            rows = await conn.fetch("SELECT hour, refusals, first_at, last_at FROM quarantine_counts ORDER BY hour")
            return [tuple(r.values()) for r in rows]
        finally:
            await conn.close()


    def at(hour: int, minute: int) -> datetime:
        return datetime(2026, 1, 1, hour, minute, tzinfo=UTC)

    assert run(scenario()) == [(at(10, 0), 2, at(10, 5), at(10, 55)), (at(11, 0), 1, at(11, 0), at(11, 0))]
