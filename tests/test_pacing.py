"""The writer rests between stores while the acknowledgements keep the CPUs busy
(receiver/pacing.py), and never when that would bring the journal's bound nearer."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
from structlog.testing import capture_logs
from support import admin, autogroup_nice, fetch

from receiver import metrics, records, writer_process
from receiver import pacing as pacing_module
from receiver.config import Settings
from receiver.journal import Journal
from receiver.journal.envelope import Kind
from receiver.pacing import OthersBusy, Pacing, schedstat
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


@pytest.mark.parametrize(
    ("cpus", "others", "backlog", "rest", "batch"),
    [
        # the writer itself hardly waited for a CPU, but the others kept one of two CPUs busy
        pytest.param(2, 0.5, 0, 0.3, Pacing.CONTENDED_BATCH, id="2-cpus-one-busy-rest-in-small-batches"),
        pytest.param(2, 0.2, 0, 0.0, 1000, id="2-cpus-1.6-idle"),
        pytest.param(8, 0.75, 0, 0.0, 1000, id="8-cpus-2-idle"),
        pytest.param(8, 0.85, 0, 0.3, Pacing.CONTENDED_BATCH, id="8-cpus-1.2-idle"),
        pytest.param(1, 0.05, 0, 0.3, Pacing.CONTENDED_BATCH, id="1-cpu-anything-else-running"),
        pytest.param(2, None, 0, 0.0, 1000, id="system-says-nothing"),
        pytest.param(2, 0.8, BOUND, 0.0, 1000, id="backlog-at-its-bound-full-batches"),
    ],
)
def test_other_processes_keeping_the_cpus_busy_make_the_writer_rest(
    cpus: int, others: float | None, backlog: int, rest: float, batch: int
) -> None:
    """Under a worker's wakeups the kernel does not hold a SCHED_IDLE writer back at once: the
    writer rests, and stores a little at a time, when the others leave fewer than one and a half
    CPUs idle (a store keeps about one busy), whether it waited for a CPU or not."""
    pacing = Pacing(0.25, BOUND, stats=stats_of((0, 0), (90, 10)), others=lambda: others, cpus=cpus)  # type: ignore[arg-type]
    assert pacing.rest(0.1, backlog) == pytest.approx(rest)
    assert pacing.batch_limit(1000, backlog) == batch


def test_the_others_share_is_the_machines_busy_time_less_the_writers(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    ticks = pacing_module._TICKS
    own = [0.0]
    stat.write_text("cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 50 0 50 400 0 0 0 0 0 0\n")
    others = OthersBusy(stat=stat, own=lambda: own[0], window=0)
    # 10 s of the machine's CPU time later: 6 s busy (user, system, irq), 2 s of them the writer's
    stat.write_text(f"cpu  {100 + 4 * ticks} 0 {100 + ticks} {800 + 4 * ticks} 0 {ticks} 0 0 0 0\n")
    own[0] = 2.0
    assert others() == pytest.approx(0.4)
    assert others() is None  # no CPU time passed
    stat.write_text("intr 0\n")
    assert others() is None
    assert OthersBusy(stat=tmp_path / "nonexistent", window=0)() is None


def test_a_reading_of_the_others_share_covers_a_window(tmp_path: Path) -> None:
    """A call sooner than the window gives the last reading again: a store of a few clock ticks
    does not decide alone whether the CPUs are busy."""
    stat = tmp_path / "stat"
    ticks = pacing_module._TICKS
    stat.write_text("cpu  0 0 0 0 0 0 0 0 0 0\n")
    others = OthersBusy(stat=stat, own=lambda: 0.0, window=0.2)
    time.sleep(0.25)
    stat.write_text(f"cpu  {ticks} 0 0 {ticks} 0 0 0 0 0 0\n")
    assert others() == pytest.approx(0.5)
    stat.write_text(f"cpu  {ticks} 0 0 {3 * ticks} 0 0 0 0 0 0\n")  # idle since
    assert others() == pytest.approx(0.5)  # within the window: the last reading
    time.sleep(0.25)
    assert others() == pytest.approx(0.0)


def test_a_burst_counts_as_busy_until_a_reading_covers_it(tmp_path: Path) -> None:
    """After a quiet spell the last reading says the CPUs are free: the first stores of a burst
    would be sized by it (a batch grown to thousands of records holds a CPU for a good part of
    a second). From the burst's start the writer counts the CPUs as busy until a reading of
    its own says otherwise."""
    stat = tmp_path / "stat"
    ticks = pacing_module._TICKS
    stat.write_text("cpu  0 0 0 0 0 0 0 0 0 0\n")
    others = OthersBusy(stat=stat, own=lambda: 0.0, window=0.2)
    pacing = Pacing(0.25, BOUND, stats=lambda: (0, 0), others=others, cpus=2)
    time.sleep(0.25)
    stat.write_text(f"cpu  0 0 0 {10 * ticks} 0 0 0 0 0 0\n")  # quiet
    assert pacing.rest(0.1, 0) == 0.0 and pacing.batch_limit(1000, 0) == 1000
    pacing.burst_begins()
    assert pacing.batch_limit(1000, 0) == Pacing.CONTENDED_BATCH
    assert pacing.rest(0.1, 0) == pytest.approx(0.3)  # no reading of the burst yet
    time.sleep(0.25)
    stat.write_text(f"cpu  0 0 0 {20 * ticks} 0 0 0 0 0 0\n")  # quiet in the burst too
    assert pacing.rest(0.1, 0) == 0.0 and pacing.batch_limit(1000, 0) == 1000


def _spin(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_the_others_share_counts_other_processes_not_this_one_nor_its_helpers() -> None:
    """Read on this machine's /proc: a child process that spins counts, this process spinning
    does not, nor a child named as a helper (the writer's PostgreSQL backend)."""
    cpus = sum(1 for line in Path("/proc/stat").read_text().splitlines() if line[:3] == "cpu" and line[3:4].isdigit())
    spinner = (
        "import sys, time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass\n"
        "print('spun', flush=True)\ntime.sleep(60)\n"
    )

    def cores_of_others(spinning: str) -> float:
        helpers: list[int] = []
        if spinning == "this process":
            others = OthersBusy(lambda: helpers)
            _spin(0.6)
            share = others()
        else:
            child = subprocess.Popen([sys.executable, "-c", spinner], stdout=subprocess.PIPE, text=True)
            try:
                if spinning == "a helper":
                    helpers.append(child.pid)
                others = OthersBusy(lambda: helpers)
                assert child.stdout is not None and child.stdout.readline() == "spun\n"
                share = others()  # the child still runs: its /proc entry is there to read
            finally:
                child.kill()
                child.wait()
        assert share is not None
        return share * cpus

    child = cores_of_others("a child")
    assert child > 0.5  # about one core while the child spun
    assert cores_of_others("this process") < child - 0.4
    assert cores_of_others("a helper") < child - 0.4


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


class Contended(Pacing):
    """Contended all along, with no rest: only the size of the stores changes."""

    CONTENDED_BATCH = 4

    def __init__(self) -> None:
        super().__init__(0.25, 1 << 30)
        self.contended = True

    def rest(self, store_seconds: float, backlog_bytes: int) -> float:
        return 0.0


def test_a_contended_writer_stores_in_small_batches(db_url: str, tmp_path: Path) -> None:
    """A store holds a CPU for as long as it lasts: while the workers keep the CPUs busy the
    writer stores a few records at a time, and everything still gets stored."""
    root = tmp_path / "journal"

    async def scenario() -> list[int]:
        writer = await a_writer(db_url, root, Contended())
        sizes: list[int] = []
        store = writer._store

        async def counted(payloads: list[bytes]) -> int:
            sizes.append(len(payloads))
            return await store(payloads)

        writer._store = counted  # type: ignore[method-assign]
        task = asyncio.create_task(writer.run())
        try:
            assert await until(lambda: _at_least(db_url, 30), 10)
            assert await writer.stop(10)
        finally:
            task.cancel()
            writer.reader.close()
        return sizes

    sizes = asyncio.run(scenario())
    assert sizes[0] == 10  # read before any store said the CPUs were busy
    assert sizes[1:] and max(sizes[1:]) <= Contended.CONTENDED_BATCH
    assert sum(sizes) == 30


class Counting(Pacing):
    """Never contended; counts the bursts the writer reports."""

    def __init__(self) -> None:
        super().__init__(1.0, 1 << 30)
        self.bursts = 0

    def burst_begins(self) -> None:
        self.bursts += 1


def test_the_writer_says_when_a_burst_begins_after_a_quiet_spell(db_url: str, tmp_path: Path) -> None:
    root = tmp_path / "journal"

    async def scenario() -> list[int]:
        writer = await a_writer(db_url, root, Counting())
        writer.idle_poll = 0.05
        pacing = writer.pacing
        assert isinstance(pacing, Counting)
        seen = []
        task = asyncio.create_task(writer.run())
        try:
            assert await until(lambda: _at_least(db_url, 30), 10)  # the records there at the start
            seen.append(pacing.bursts)
            await asyncio.sleep(0.3)  # quiet
            await journal_reports(root, 30, first=100)
            assert await until(lambda: _at_least(db_url, 60), 10)
            seen.append(pacing.bursts)
            assert await writer.stop(10)
        finally:
            task.cancel()
            writer.reader.close()
        return seen

    before, after = asyncio.run(scenario())
    assert before == 0  # the records there at the start came in one go
    assert after >= 1  # (the new records are journaled one by one: the writer may catch up in between)


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


@pytest.mark.parametrize(
    ("backlog", "boosted", "seconds", "change"),
    [
        (0, False, 100.0, 0),
        (511, False, 0.0, 0),
        (512, False, 0.0, writer_process.EXIT_BOOST),  # half of one worker's bound: at once
        (512, True, 100.0, 0),  # boosted and still far behind
        (129, True, 100.0, 0),
        (128, True, 100.0, writer_process.EXIT_CALM),  # an eighth: lowered again
        (0, True, 1.0, 0),  # but not within its first seconds
        (0, True, writer_process.MIN_BOOSTED_SECONDS, writer_process.EXIT_CALM),
    ],
)
def test_the_writer_asks_for_another_priority_by_its_backlog(
    backlog: int, boosted: bool, seconds: float, change: int
) -> None:
    assert writer_process.priority_change(backlog, 1024, boosted=boosted, seconds=seconds) == change


def test_a_writer_that_steps_down_ends_after_its_store_and_leaves_the_rest(db_url: str, tmp_path: Path) -> None:
    """What a writer does before the supervisor starts it again at another priority: it ends
    once its store in flight is committed, without a drain (the next writer stores the rest,
    sooner) and without waiting out a rest."""
    root = tmp_path / "journal"

    async def scenario() -> tuple[bool, float]:
        writer = await a_writer(db_url, root, Resting(30.0))
        task = asyncio.create_task(writer.run())
        try:
            assert await until(lambda: _at_least(db_url, 10), 10)  # the first store, then a rest of 30 s
            started = time.monotonic()
            drained = await writer.step_down()
            took = time.monotonic() - started
            assert task.done()
        finally:
            task.cancel()
            writer.reader.close()
        return drained, took

    drained, took = asyncio.run(scenario())
    assert not drained and took < 5  # neither the rest nor the 20 records left held it
    assert asyncio.run(stored(db_url)) == 10


async def _store_held(db_url: str) -> bool:
    """A store waits for a lock (read on a connection of its own: a transaction sees the activity
    as it was at its first look)."""
    return bool(await fetch(db_url, "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"))


@pytest.mark.parametrize("held", [0.5, 3.0])
def test_a_writer_that_steps_down_mid_store_leaves_the_next_one_what_it_did_not_commit(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held: float
) -> None:
    """A step-down waits for the store in flight: committed within the limit, its records are
    the old writer's and the next writer stores only the rest; past the limit the store is cut
    short, nothing of it counts as stored, and the next writer stores its records again, once."""
    monkeypatch.setattr("receiver.writer.STEP_DOWN_SECONDS", 1.5)
    root = tmp_path / "journal"

    async def scenario() -> tuple[int, int, int, float]:
        writer = await a_writer(db_url, root, Resting(0.0))
        holder = await asyncpg.connect(db_url)
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("LOCK TABLE status_reports IN ACCESS EXCLUSIVE MODE")
        task = asyncio.create_task(writer.run())
        try:
            assert await until(lambda: _store_held(db_url), 10)  # the first batch of 10 waits
            started = time.monotonic()

            async def step_down() -> float:
                await writer.step_down()
                return time.monotonic() - started

            stepping = asyncio.create_task(step_down())
            await asyncio.sleep(held)
            await transaction.rollback()
            took = await stepping
            assert task.done()
        finally:
            task.cancel()
            writer.reader.close()
            await holder.close()
        first = writer.stored_events
        follower = writer_process.build(Settings(database_url=db_url, journal_dir=root, writer_batch_size=10))
        follow = asyncio.create_task(follower.run())
        try:
            assert await follower.stop(20)
        finally:
            follow.cancel()
            follower.reader.close()
        return first, follower.stored_events, await stored(db_url), took

    with capture_logs() as logged:
        first, second, rows, took = asyncio.run(scenario())
    assert not [e for e in logged if e["event"] == "writer.database_unavailable"]  # the database was fine
    if held < 1.5:
        assert (first, second) == (10, 20)  # committed, and the journal's cursor moved past it
        assert took < 1.5
    else:
        assert (first, second) == (0, 30)  # cut short: the follower stored the first batch again
        assert 1.5 <= took < 2.5
    assert rows == 30  # every report once


@pytest.mark.parametrize("boosted", [False, True])
def test_a_boosted_writers_backend_is_not_lowered(db_url: str, tmp_path: Path, boosted: bool) -> None:
    """The lowered writer's PostgreSQL backend runs at its priority (else it would take the CPU
    the writer gives up); a boosted writer's backend keeps the priority PostgreSQL gave it, or
    the boost would store no faster."""
    writer = writer_process.build(
        Settings(database_url=db_url, journal_dir=tmp_path / "journal"), process=True, boosted=boosted
    )

    async def backend() -> tuple[int, int, str | None]:
        conn = await writer.connect()
        try:
            pid = int(await conn.fetchval("SELECT pg_backend_pid()"))
            return os.sched_getscheduler(pid), os.getpriority(os.PRIO_PROCESS, pid), autogroup_nice(pid)
        finally:
            await conn.close()
            writer.reader.close()

    policy, nice, group = asyncio.run(backend())
    if boosted:
        assert (policy, nice, group) == (os.SCHED_OTHER, 0, "0")
    else:
        assert (policy, nice, group) == (os.SCHED_IDLE, 19, "19")


def test_a_backend_is_local_only_when_a_process_by_its_pid_started_with_it(db_url: str) -> None:
    """The writer lowers its backend and reads its server's folders only when the backend is a
    process of this machine: a server elsewhere (another machine, a container's own pids) has
    backends whose pids a process here may have too, a local PostgreSQL's among them."""

    async def check() -> tuple[int | None, int | None, int]:
        conn = await asyncpg.connect(db_url)
        try:

            class Elsewhere:  # the same pid, a backend started an hour before the local process by it
                async def fetchrow(self, query: str) -> dict[str, object]:
                    row = await conn.fetchrow(query)
                    assert row is not None
                    return {"pid": row["pid"], "started": row["started"] - 3600}

            here = await writer_process.local_backend(conn)
            with capture_logs() as logs:
                elsewhere = await writer_process.local_backend(Elsewhere())  # type: ignore[arg-type]
            assert [e["event"] for e in logs] == ["writer.backend_not_local"]  # said, in case clocks disagree
            return here, elsewhere, conn.get_server_pid()
        finally:
            await conn.close()

    here, elsewhere, pid = asyncio.run(check())
    assert here == pid  # the suite's server runs on this machine
    assert elsewhere is None
