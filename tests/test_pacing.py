"""The writer rests between stores while the acknowledgements keep the CPUs busy
(receiver/pacing.py), and never when that would bring the journal's bound nearer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from support import admin, fetch

from receiver import metrics, records, writer_process
from receiver.config import Settings
from receiver.journal import Journal
from receiver.journal.envelope import Kind
from receiver.pacing import Pacing, schedstat
from receiver.writer import Writer

BOUND = 1000  # bytes of backlog past which the writer stores at full speed


def stats_of(*samples: tuple[int, int] | None) -> object:
    """A scheduler whose statistics are these samples, in turn (ns run, ns waited)."""
    queue = list(samples)
    return lambda: queue.pop(0)


@pytest.mark.parametrize(
    ("before", "after", "busy_share", "backlog", "store_seconds", "rest"),
    [
        # waited 90 % of the time it wanted a CPU: the workers keep the CPUs busy
        pytest.param((0, 0), (10, 90), 0.25, 0, 0.1, 0.3, id="contended-rests-3x-the-store"),
        pytest.param((0, 0), (10, 90), 0.5, 0, 0.2, 0.2, id="half-the-time"),
        pytest.param((100, 100), (190, 110), 0.25, 0, 0.1, 0.0, id="cpus-free-no-rest"),
        pytest.param((0, 0), (50, 50), 0.25, 0, 0.1, 0.0, id="half-waiting-is-not-contended"),
        pytest.param((0, 0), (10, 90), 1.0, 0, 0.1, 0.0, id="busy-share-1-never-rests"),
        pytest.param((0, 0), (10, 90), 0.25, BOUND, 0.1, 0.0, id="backlog-at-its-bound-no-rest"),
        pytest.param(None, None, 0.25, 0, 0.1, 0.0, id="system-says-nothing"),
        pytest.param((5, 5), (5, 5), 0.25, 0, 0.1, 0.0, id="did-not-run"),
    ],
)
def test_the_rest_after_a_store(
    before: tuple[int, int] | None,
    after: tuple[int, int] | None,
    busy_share: float,
    backlog: int,
    store_seconds: float,
    rest: float,
) -> None:
    pacing = Pacing(busy_share, BOUND, stats=stats_of(before, after))  # type: ignore[arg-type]
    assert pacing.rest(store_seconds, backlog) == pytest.approx(rest)


def test_the_threads_own_statistics_grow_as_it_runs() -> None:
    first = schedstat()  # Linux, where the service runs, always says: without it the writer never rests
    assert first is not None, "no /proc/thread-self/schedstat"
    end = time.process_time() + 0.05
    while time.process_time() < end:
        pass
    second = schedstat()
    assert second is not None and second[0] - first[0] >= 40_000_000  # ns of the 50 ms it ran
    assert schedstat(Path("/nonexistent/schedstat")) is None


class Resting(Pacing):
    """Contended all along: rests ``seconds`` after every store, whatever the backlog then."""

    def __init__(self, seconds: float, bound: int = 1 << 30) -> None:
        super().__init__(0.25, bound)
        self.seconds = seconds

    def rest(self, store_seconds: float, backlog_bytes: int) -> float:
        return self.seconds


async def journal_reports(root: Path, count: int, first: int = 0) -> None:
    journal = Journal(root, max_bytes=1 << 30, segment_bytes=1 << 20, sync="loop")
    await journal.start()
    for i in range(first, first + count):
        body = b"smsMsgId=pace-%d&status=DELIVRD&updateTime=2024-11-22T02%%3A16%%3A46Z" % i
        await journal.append(records.accepted(Kind.STATUS_REPORT, 1, time.time(), body))
    await journal.close()


async def an_application(db_url: str) -> None:
    await admin(db_url, "INSERT INTO applications (id, name, token_hash) OVERRIDING SYSTEM VALUE VALUES (1, 'pace', 'h')")


async def a_writer(db_url: str, root: Path, pacing: Pacing) -> Writer:
    """A writer (not yet running) of batches of 10, with this pacing, and 30 reports to store."""
    await an_application(db_url)
    await journal_reports(root, 30)
    writer = writer_process.build(Settings(database_url=db_url, journal_dir=root, writer_batch_size=10))
    writer.pacing = pacing
    return writer


async def stored(db_url: str) -> int:
    rows = await fetch(db_url, "SELECT count(*) AS n FROM status_reports WHERE sms_msg_id LIKE 'pace-%'")
    return int(rows[0]["n"])


async def until(condition: Callable[[], Awaitable[bool]], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not await condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def _at_least(db_url: str, count: int) -> bool:
    return await stored(db_url) >= count


def test_the_writer_rests_between_stores_and_not_when_stopping(db_url: str, tmp_path: Path) -> None:
    root = tmp_path / "journal"

    async def scenario() -> tuple[int, int, float]:
        writer = await a_writer(db_url, root, Resting(30.0))
        rested = metrics.WRITER_RESTED._value.get()
        task = asyncio.create_task(writer.run())
        try:
            assert await until(lambda: _at_least(db_url, 10), 10)
            await asyncio.sleep(0.5)
            during_rest = await stored(db_url)  # one batch stored, then resting
            started = time.monotonic()
            assert await writer.stop(10)  # stopping: what is left is stored at once
            stop_seconds = time.monotonic() - started
        finally:
            task.cancel()
            writer.reader.close()
        assert metrics.WRITER_RESTED._value.get() > rested
        return during_rest, await stored(db_url), stop_seconds

    during_rest, after_stop, stop_seconds = asyncio.run(scenario())
    assert during_rest == 10
    assert after_stop == 30
    assert stop_seconds < 10


def test_a_rest_ends_when_the_backlog_reaches_the_bound_meanwhile(db_url: str, tmp_path: Path) -> None:
    """A rest is decided after a store, but the journal fills while the writer rests: once the
    backlog is past the bound the writer stores at once, not when the rest was to end (the rest
    is three times a store, and a store under contention can take seconds)."""
    root = tmp_path / "journal"
    bound = 5_000  # bytes: these records take about 90 each, so 20 are below it, 60 past it

    async def scenario() -> tuple[int, int]:
        writer = await a_writer(db_url, root, Resting(30.0, bound))
        task = asyncio.create_task(writer.run())
        try:
            assert await until(lambda: _at_least(db_url, 10), 10)
            await asyncio.sleep(0.3)
            resting = await stored(db_url)  # the first batch, then a rest: 20 records wait
            await journal_reports(root, 200, first=1000)  # a burst: the backlog passes the bound
            assert await until(lambda: _at_least(db_url, 150), 5)  # long before the 30 s are over
            await asyncio.sleep(1.0)  # whatever batch it was storing is in
            backlog = writer.reader.backlog_bytes
            assert await writer.stop(10)
        finally:
            task.cancel()
            writer.reader.close()
        return resting, backlog

    resting, backlog = asyncio.run(scenario())
    assert resting == 10
    assert backlog < bound


def test_a_resting_writer_still_says_it_is_running(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/readyz reads the writer process's status file, and takes it for dead when the file is
    older than STALE_AFTER: a long rest must not look like a dead writer."""
    monkeypatch.setattr(writer_process, "STALE_AFTER", 2.5)
    root = tmp_path / "journal"

    async def scenario() -> list[bool]:
        writer = await a_writer(db_url, root, Resting(30.0))
        writer.on_status = writer_process._StatusFile(root / writer_process.STATUS_FILE).update
        task = asyncio.create_task(writer.run())
        running = []
        try:
            assert await until(lambda: _at_least(db_url, 10), 10)
            for _ in range(8):  # 4 s of the rest
                await asyncio.sleep(0.5)
                running.append(writer_process.read_status(root)["running"])
            assert await stored(db_url) == 10
            assert await writer.stop(10)
        finally:
            task.cancel()
            writer.reader.close()
        return running

    assert all(asyncio.run(scenario()))


def test_stopping_stores_what_is_left_without_resting(db_url: str, tmp_path: Path) -> None:
    """stop() stores the backlog at once: no rest between its batches."""
    root = tmp_path / "journal"

    async def scenario() -> tuple[bool, float]:
        writer = await a_writer(db_url, root, Resting(30.0))
        rested = metrics.WRITER_RESTED._value.get()
        task = asyncio.create_task(writer.run())
        try:
            drained = await writer.stop(10)
        finally:
            task.cancel()
            writer.reader.close()
        return drained, metrics.WRITER_RESTED._value.get() - rested

    drained, rested = asyncio.run(scenario())
    assert drained
    assert rested == 0
    assert asyncio.run(stored(db_url)) == 30
