"""The writer (receiver/writer.py) on a real journal and a real PostgreSQL: acknowledgements first.

While a worker's event loop is saturated the writer leaves the burst in the journal, and stores
it once the loop has room, once the oldest record has waited ``max_lag`` seconds, or once the
backlog reaches half the journal's bound.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

from receiver import applications, records
from receiver.journal import Journal, JournalReader
from receiver.protocol import parse_status_report_form
from receiver.writer import BUSY_LAG, Writer, loop_lag


def report(app_id: int, i: int) -> bytes:
    body = f"smsMsgId=w-{i}&status=DELIVRD&total=1&sequence=1"
    return records.report(app_id, "form", time.time(), parse_status_report_form(body.encode()), body)


@asynccontextmanager
async def busy_loop() -> AsyncIterator[None]:
    """Keep this event loop saturated: every turn of it holds the loop for 5 ms, as a worker
    acknowledging as fast as it can does with many requests in flight."""
    stop = asyncio.Event()

    async def spin() -> None:
        while not stop.is_set():
            time.sleep(0.005)
            await asyncio.sleep(0)

    task = asyncio.create_task(spin())
    await asyncio.sleep(0.05)
    try:
        yield
    finally:
        stop.set()
        await task


async def scenario(db_url: str, tmp: Path, *, max_lag: float, journal_bytes: int = 1 << 30) -> dict[str, object]:
    conn = await asyncpg.connect(db_url)
    app, _ = await applications.create(conn, "w", [])
    journal = Journal(tmp / "journal", max_bytes=journal_bytes, segment_bytes=1 << 20)
    writer = Writer(JournalReader(journal), lambda: asyncpg.connect(db_url), interval=0.05, max_lag=max_lag)
    journal.on_durable = writer.wake
    task = asyncio.create_task(writer.run())

    async def stored() -> int:
        return int(await conn.fetchval("SELECT count(*) FROM status_reports"))

    seen: dict[str, object] = {}
    try:
        async with busy_loop():
            seen["lag_busy"] = await loop_lag()
            for i in range(20):
                await journal.append(report(app.id, i))
            await asyncio.sleep(1.0)
            seen["while_busy"] = await stored()
            deadline = time.monotonic() + 2 * max_lag + 5
            while time.monotonic() < deadline and await stored() < 20 and max_lag < 5:
                await asyncio.sleep(0.05)
            seen["busy_to_the_end"] = await stored()
        seen["lag_idle"] = await loop_lag()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and await stored() < 20:
            await asyncio.sleep(0.05)
        seen["after"] = await stored()
    finally:
        await journal.close()
        await writer.stop(5)
        task.cancel()
        await conn.close()
    return seen


def test_a_saturated_worker_acknowledges_first_and_stores_once_it_has_room(db_url: str, tmp_path: Path) -> None:
    seen = asyncio.run(scenario(db_url, tmp_path, max_lag=30))
    assert seen["lag_busy"] >= BUSY_LAG > seen["lag_idle"]  # type: ignore[operator]
    assert seen["while_busy"] == 0  # the burst waits in the journal
    assert seen["after"] == 20  # and is stored once the loop has room


def test_records_wait_no_longer_than_the_max_lag(db_url: str, tmp_path: Path) -> None:
    seen = asyncio.run(scenario(db_url, tmp_path, max_lag=1.5))
    assert seen["while_busy"] == 0
    assert seen["busy_to_the_end"] == 20  # stored while the loop was still saturated


def test_a_filling_journal_is_stored_even_while_saturated(db_url: str, tmp_path: Path) -> None:
    seen = asyncio.run(scenario(db_url, tmp_path, max_lag=30, journal_bytes=10_000))  # 20 records fill over half
    assert seen["while_busy"] == 20


def test_without_a_max_lag_the_writer_never_defers(db_url: str, tmp_path: Path) -> None:
    seen = asyncio.run(scenario(db_url, tmp_path, max_lag=0))
    assert seen["while_busy"] == 20
