"""The write-ahead journal on real files: group commit, durability across ``kill -9``, adoption of a
dead worker's folder, torn tails, the backlog bound and write failures.

Nothing of ours is mocked. Where a test needs to observe or slow the disk it wraps ``os.fdatasync``
(the OS, not our code), and one test wraps ``Path.iterdir`` to place another worker's rename at an
exact moment; crashes are real child processes killed with SIGKILL, live owners real processes.
"""

from __future__ import annotations

import asyncio
import fcntl
import inspect
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from receiver.journal import Journal, JournalFull, JournalReader, JournalUnavailable, frames
from receiver.journal.segments import SUFFIX

REPO = Path(__file__).resolve().parents[1]
BIG = 1 << 30
T = TypeVar("T")


# --- helpers ------------------------------------------------------------------------------------


def run(coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
    """Run one scenario on a fresh event loop; a hang fails the test instead of blocking the suite."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def payload(i: int) -> bytes:
    """A distinct, self-describing record of varying length and binary content."""
    return b"event-%06d|" % i + bytes((i * 7 + k) % 256 for k in range(i % 97))


def drain(reader: JournalReader, max_records: int = 1000) -> list[bytes]:
    """Read and commit until nothing is left, like the writer does."""
    out: list[bytes] = []
    for _ in range(100_000):
        batch = reader.read(max_records)
        if not batch.payloads:
            return out
        out.extend(batch.payloads)
        reader.commit(batch)
    raise AssertionError("the reader never ran dry")


def seg_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"*{SUFFIX}"))


def worker_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.name.startswith("w-"))


def child(code: str, *args: object) -> subprocess.Popen[str]:
    """A separate Python process (so it holds its own flock and can really die)."""
    source = "\n".join(
        [
            "import asyncio, collections, os, sys, time",
            "from pathlib import Path",
            "from receiver.journal import Journal",
            textwrap.dedent(inspect.getsource(payload)),
            textwrap.dedent(code),
        ]
    )
    return subprocess.Popen(
        [sys.executable, "-c", source, *map(str, args)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


DEAD_WORKER = """
root, count, segment_bytes = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])

async def main() -> None:
    journal = Journal(root, max_bytes=1 << 30, segment_bytes=segment_bytes)
    for i in range(count):
        await journal.append(payload(i))
    print(journal.dir.path, flush=True)

asyncio.run(main())
os._exit(0)  # no close(): the process just ends, the kernel drops the lock
"""


def dead_worker(root: Path, count: int, segment_bytes: int = 1 << 20) -> Path:
    """Have a child process journal ``payload(0..count-1)`` and exit; return its (now orphaned) folder."""
    proc = child(DEAD_WORKER, root, count, segment_bytes)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    folder = Path(out.strip())
    assert folder.parent == root and folder.name.startswith("w-")
    return folder


@pytest.fixture
def fdatasync_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count real ``os.fdatasync`` calls (the OS call is still made)."""
    calls: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    return calls


class SyncGate:
    """Holds the journal thread inside ``fdatasync`` until released, so a flush is observably in flight."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real = os.fdatasync

        def gated(fd: int) -> None:
            self.calls += 1
            self.entered.set()
            assert self.release.wait(20), "the test never released the gate"
            real(fd)

        monkeypatch.setattr(os, "fdatasync", gated)

    async def wait_entered(self) -> None:
        deadline = time.monotonic() + 10
        while not self.entered.is_set():
            assert time.monotonic() < deadline, "no flush reached fdatasync"
            await asyncio.sleep(0.001)


@pytest.fixture
def sync_gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[SyncGate]:
    gate = SyncGate()
    gate.install(monkeypatch)
    yield gate
    gate.release.set()


# --- frames -------------------------------------------------------------------------------------


def test_frames_round_trip() -> None:
    records = [b"a", b"hello world", bytes(range(256)) * 4, b"\x00" * 10, payload(96)]
    data = b"".join(frames.encode(r) for r in records)

    decoded = list(frames.decode(data))

    assert [p for p, _ in decoded] == records
    ends = [end for _, end in decoded]
    expected_ends, offset = [], 0
    for r in records:
        offset += frames.HEADER.size + len(r)
        expected_ends.append(offset)
    assert ends == expected_ends
    assert ends[-1] == len(data)
    header = frames.encode(b"abc")[: frames.HEADER.size]
    assert frames.HEADER.unpack(header) == (3, zlib.crc32(b"abc"))


def test_frames_crc_mismatch_stops_decoding() -> None:
    good, bad, after = frames.encode(b"first"), bytearray(frames.encode(b"second")), frames.encode(b"third")
    bad[-1] ^= 0x01  # flip one payload bit: the length is right, the CRC is not
    decoded = list(frames.decode(good + bytes(bad) + after))
    assert decoded == [(b"first", len(good))]


def test_frames_truncated_or_oversized_length_stops_decoding() -> None:
    good = frames.encode(b"kept")
    torn = frames.encode(b"x" * 100)
    for tail in (torn[:-1], torn[:3], torn[: frames.HEADER.size]):
        assert [p for p, _ in frames.decode(good + tail)] == [b"kept"]
    huge = frames.HEADER.pack(frames.MAX_PAYLOAD + 1, 0) + b"\x00" * 64
    assert [p for p, _ in frames.decode(good + huge)] == [b"kept"]
    assert list(frames.decode(b"")) == []


def test_frames_zero_filled_tail_is_not_a_record() -> None:
    # A crash can leave a file whose size was extended but whose last block is zeros. An all-zero
    # header must not decode as a (CRC-valid) empty record, or the reader hands out b"" events.
    good = frames.encode(b"kept")
    assert [p for p, _ in frames.decode(good + b"\x00" * 64)] == [b"kept"]
    with pytest.raises(ValueError):
        frames.encode(b"")


def test_frames_oversize_payload_rejected() -> None:
    assert next(iter(frames.decode(frames.encode(b"m" * frames.MAX_PAYLOAD))))[0] == b"m" * frames.MAX_PAYLOAD
    with pytest.raises(ValueError, match="exceeds"):
        frames.encode(b"m" * (frames.MAX_PAYLOAD + 1))


# --- append, read, commit -----------------------------------------------------------------------


def test_append_then_read_in_order_and_durable_on_disk(tmp_path: Path) -> None:
    records = [payload(i) for i in range(20)]

    async def scenario() -> None:
        journal = Journal(tmp_path, max_bytes=BIG, segment_bytes=1 << 20)
        reader = JournalReader(journal)
        for r in records:
            await journal.append(r)
        # acknowledged means on disk, not in a buffer: the file already holds every frame
        assert journal.dir is not None
        (segment,) = seg_files(journal.dir.path)
        assert [p for p, _ in frames.decode(segment.read_bytes())] == records
        assert journal.backlog_bytes == segment.stat().st_size

        assert reader.adopt() == 0  # our own folder is never adopted
        assert drain(reader, max_records=7) == records
        assert reader.drained()
        assert journal.backlog_bytes == 0
        await journal.close()

    run(scenario())


def test_read_does_not_advance_until_commit(tmp_path: Path) -> None:
    async def scenario() -> None:
        journal = Journal(tmp_path, max_bytes=BIG, segment_bytes=1 << 20)
        reader = JournalReader(journal)
        for i in range(5):
            await journal.append(payload(i))
        first = reader.read(3)
        again = reader.read(3)
        assert first.payloads == again.payloads == [payload(0), payload(1), payload(2)]
        reader.commit(first)
        assert reader.read(10).payloads == [payload(3), payload(4)]
        await journal.close()

    run(scenario())


def test_commit_deletes_fully_drained_closed_segments(tmp_path: Path) -> None:
    async def scenario() -> None:
        # 25-byte frames: a segment is closed once it holds 100 bytes, i.e. 4 records
        journal = Journal(tmp_path, max_bytes=BIG, segment_bytes=100)
        reader = JournalReader(journal)
        for i in range(12):
            await journal.append(b"r%02d" % i + b"." * 14)
        assert journal.dir is not None
        files = seg_files(journal.dir.path)
        assert len(files) == 3
        first, second, active = files

        batch = reader.read(2)  # half of the first segment
        reader.commit(batch)
        assert first.exists(), "a partly drained segment must stay"

        batch = reader.read(100)  # the rest of the first segment (a batch never spans segments)
        assert batch.payloads == [b"r02" + b"." * 14, b"r03" + b"." * 14]
        assert first.exists(), "nothing is deleted before commit"
        reader.commit(batch)
        assert not first.exists()
        assert second.exists() and active.exists()

        rest = drain(reader)
        assert rest == [b"r%02d" % i + b"." * 14 for i in range(4, 12)]
        assert not second.exists()
        assert active.exists(), "the segment still being appended to is kept"
        assert seg_files(journal.dir.path) == [active]
        await journal.close()

    run(scenario())


def test_rotation_spreads_records_over_segments_in_order(tmp_path: Path) -> None:
    records = [payload(i) for i in range(300)]

    async def scenario() -> None:
        journal = Journal(tmp_path, max_bytes=BIG, segment_bytes=512)
        reader = JournalReader(journal)
        for r in records[:200]:
            await journal.append(r)
        assert journal.dir is not None
        files = seg_files(journal.dir.path)
        assert len(files) >= 10
        assert [f.name for f in files] == [f"{n:012d}{SUFFIX}" for n in range(1, len(files) + 1)]
        on_disk = [p for f in files for p, _ in frames.decode(f.read_bytes())]
        assert on_disk == records[:200]

        got = drain(reader, max_records=17)
        for r in records[200:]:  # appending keeps working after the reader deleted old segments
            await journal.append(r)
        got += drain(reader, max_records=17)
        assert got == records
        assert len(seg_files(journal.dir.path)) == 1
        await journal.close()

    run(scenario())


# --- group commit -------------------------------------------------------------------------------


def test_group_commit_concurrent_appends(tmp_path: Path, fdatasync_calls: list[int]) -> None:
    records = [payload(i) for i in range(200)]

    async def scenario() -> None:
        journal = Journal(tmp_path, max_bytes=BIG, segment_bytes=1 << 20)
        reader = JournalReader(journal)
        await asyncio.gather(*(journal.append(r) for r in records))
        assert 1 <= len(fdatasync_calls) <= 5, f"{len(fdatasync_calls)} syncs for 200 appends"
        assert drain(reader) == records
        await journal.close()

    run(scenario())


def test_group_commit_batches_appends_arriving_during_a_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A slow disk: every flush takes 20 ms. 200 requests trickle in, one per loop turn; those arriving
    # while a flush is on disk must share the next flush instead of paying one each.
    calls: list[int] = []
    real = os.fdatasync

    def slow(fd: int) -> None:
        calls.append(fd)
        time.sleep(0.02)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", slow)
    records = [payload(i) for i in range(200)]

    async def scenario() -> None:
        journal = Journal(tmp_path, max_bytes=BIG, segment_bytes=1 << 20)
        reader = JournalReader(journal)
        durable_events = 0

        def on_durable() -> None:
            nonlocal durable_events
            durable_events += 1

        journal.on_durable = on_durable
        tasks = []
        for r in records:
            tasks.append(asyncio.create_task(journal.append(r)))
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        assert all(t.done() and t.exception() is None for t in tasks)
        assert 1 <= len(calls) <= 20, f"{len(calls)} syncs for 200 appends"
        assert durable_events == len(calls)
        assert drain(reader) == records
        await journal.close()

    run(scenario())


# --- durability across a crash ------------------------------------------------------------------

CRASHING_WORKER = """
import functools
root = Path(sys.argv[1])
done = 0

def acked(k: int, future: asyncio.Future) -> None:
    global done
    done += 1
    if future.exception() is None:
        print(k, flush=True)  # only once the append was acknowledged

async def main() -> None:
    journal = Journal(root, max_bytes=1 << 30, segment_bytes=4096)
    i = 0
    while True:  # appends keep coming while a flush is on disk, so the kill lands mid-write/mid-sync
        journal.append_nowait(payload(i)).add_done_callback(functools.partial(acked, i))
        i += 1
        await asyncio.sleep(0 if i - done < 256 else 0.001)  # at most ~256 in flight

asyncio.run(main())
"""


def test_acknowledged_records_survive_kill_9(tmp_path: Path) -> None:
    proc = child(CRASHING_WORKER, tmp_path)
    try:
        assert proc.stdout is not None
        seen = 0
        deadline = time.monotonic() + 60
        while seen < 600:
            assert time.monotonic() < deadline, "the worker made no progress"
            line = proc.stdout.readline()
            assert line, f"the worker died on its own: {proc.stderr.read() if proc.stderr else ''}"
            seen += 1
        assert proc.poll() is None, "the worker must still be appending when it is killed"
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # every complete line was printed after its append was acknowledged
    acked = seen + sum(1 for line in out.splitlines(keepends=True) if line.endswith("\n"))
    (folder,) = worker_folders(tmp_path)
    assert len(seg_files(folder)) > 1, "the crash test should span several segments"

    async def recover() -> list[bytes]:
        journal = Journal(tmp_path, max_bytes=BIG, segment_bytes=1 << 20)
        reader = JournalReader(journal)
        assert reader.adopt() == 1
        got = drain(reader, max_records=100)
        assert reader.drained()
        await journal.close()
        return got

    got = run(recover())
    # acked records are a prefix of what is on disk; records written but not yet acked may follow
    assert len(got) >= acked
    assert got == [payload(i) for i in range(len(got))], "records must come back intact and in order"
    assert not folder.exists(), "the drained adopted folder is removed"
    assert worker_folders(tmp_path) == []


# --- adoption -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(b"\xde\xad\xbe\xef" * 40, id="garbage"),
        pytest.param(frames.encode(b"y" * 200)[:-17], id="truncated-frame"),
        pytest.param(frames.encode(b"y" * 200)[:5], id="partial-header"),
        pytest.param(frames.encode(b"y" * 200)[:-1] + b"\x00", id="bad-crc"),
        pytest.param(b"\x00" * 4096, id="zero-filled"),
    ],
)
def test_torn_tail_of_dead_worker_stops_at_the_damage(tmp_path: Path, tail: bytes) -> None:
    folder = dead_worker(tmp_path, 30, segment_bytes=256)
    files = seg_files(folder)
    assert len(files) >= 2
    with open(files[-1], "ab") as f:
        f.write(tail)

    async def scenario() -> None:
        journal = Journal(tmp_path, max_bytes=BIG, segment_bytes=1 << 20)
        reader = JournalReader(journal)
        assert reader.adopt() == 1
        assert drain(reader, max_records=4) == [payload(i) for i in range(30)]
        assert reader.drained()
        assert not folder.exists()
        # the next write of ours goes on normally
        await journal.append(b"after")
        assert drain(reader) == [b"after"]
        await journal.close()

    run(scenario())


def test_damage_inside_a_segment_skips_only_the_rest_of_that_segment(tmp_path: Path) -> None:
    folder = dead_worker(tmp_path, 30, segment_bytes=128)
    files = seg_files(folder)
    assert len(files) >= 3
    first = files[0]
    in_first = [p for p, _ in frames.decode(first.read_bytes())]
    assert len(in_first) >= 3
    data = bytearray(first.read_bytes())
    offset = sum(frames.HEADER.size + len(p) for p in in_first[:2])  # start of the third record
    data[offset + frames.HEADER.size] ^= 0xFF  # corrupt its first payload byte
    first.write_bytes(bytes(data))

    reader = JournalReader(Journal(tmp_path, max_bytes=BIG, segment_bytes=1 << 20))
    assert reader.adopt() == 1
    got = drain(reader)
    after_first = [payload(i) for i in range(len(in_first), 30)]
    assert got == in_first[:2] + after_first
    assert not folder.exists()


def test_folder_of_a_live_worker_is_not_adopted(tmp_path: Path) -> None:
    live = """
    async def main() -> None:
        journal = Journal(Path(sys.argv[1]), max_bytes=1 << 30, segment_bytes=1 << 20)
        await journal.append(b"live record")
        print(journal.dir.path, flush=True)
        time.sleep(120)

    asyncio.run(main())
    """
    proc = child(live, tmp_path)
    try:
        assert proc.stdout is not None
        folder = Path(proc.stdout.readline().strip())
        assert folder.name.startswith("w-"), proc.stderr.read() if proc.stderr else ""

        reader = JournalReader(Journal(tmp_path, max_bytes=BIG, segment_bytes=1 << 20))
        assert reader.adopt() == 0
        assert drain(reader) == []
        assert folder.exists() and len(seg_files(folder)) == 1
        assert proc.poll() is None, "the owner must still be alive during the check"

        proc.kill()  # the owner dies: now (and only now) its folder is adopted
        proc.wait(timeout=30)
        assert reader.adopt() == 1
        assert drain(reader) == [b"live record"]
        assert not folder.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_folder_of_another_live_journal_in_this_process_is_not_adopted(tmp_path: Path) -> None:
    async def scenario() -> None:
        other = Journal(tmp_path, max_bytes=BIG, segment_bytes=1 << 20)
        await other.append(b"theirs")
        mine = Journal(tmp_path, max_bytes=BIG, segment_bytes=1 << 20)
        reader = JournalReader(mine)
        assert reader.adopt() == 0
        assert drain(reader) == []
        assert JournalReader(other).read(10).payloads == [b"theirs"]
        await other.close()
        await mine.close()

    run(scenario())


def test_adopted_records_come_before_our_own(tmp_path: Path) -> None:
    async def scenario() -> None:
        journal = Journal(tmp_path, max_bytes=BIG, segment_bytes=1 << 20)
        reader = JournalReader(journal)
        await journal.append(b"own-1")
        folder = await asyncio.to_thread(dead_worker, tmp_path, 3)
        await journal.append(b"own-2")
        assert reader.adopt() == 1
        assert reader.adopted_bytes == sum(f.stat().st_size for f in seg_files(folder))
        assert reader.adopt() == 0, "an adopted folder is not adopted twice"
        assert drain(reader, max_records=2) == [payload(0), payload(1), payload(2), b"own-1", b"own-2"]
        assert not folder.exists()
        assert journal.dir is not None and journal.dir.path.exists()
        await journal.close()

    run(scenario())


def test_empty_dead_folder_and_stale_staging_folder_are_cleared(tmp_path: Path) -> None:
    make_dirs = """
    from receiver.journal.segments import JournalDir
    root = Path(sys.argv[1])
    print(JournalDir.create(root).path, flush=True)
    staging = root / ".tmp-deadbeef"
    staging.mkdir()
    (staging / "lock").touch()
    """
    proc = child(make_dirs, tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    empty = Path(out.strip())
    stale = tmp_path / ".tmp-deadbeef"
    fresh = tmp_path / ".tmp-fresh"
    fresh.mkdir()
    (fresh / "lock").touch()
    old = time.time() - 3600
    os.utime(stale, (old, old))

    reader = JournalReader(Journal(tmp_path, max_bytes=BIG, segment_bytes=1 << 20))
    assert reader.adopt() == 1
    assert not empty.exists()
    assert not stale.exists()
    assert fresh.exists(), "a staging folder may belong to a worker starting right now"
    assert drain(reader) == []


def test_adopt_survives_a_worker_renaming_its_staging_folder_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker starting up does mkdir .tmp-X, flock, rename to w-X (JournalDir.create). If that rename
    # lands between our listing of the root and our look at .tmp-X, adoption must shrug it off, not
    # raise (an exception here kills the writer loop, which calls adopt() every few seconds).
    staging, final = tmp_path / ".tmp-starting", tmp_path / "w-starting"
    staging.mkdir()
    lock_fd = os.open(staging / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock_fd, fcntl.LOCK_EX)  # the starting worker's lock (another open file: it conflicts)
    real_iterdir = Path.iterdir

    def iterdir_then_rename(self: Path) -> Iterator[Path]:
        entries = list(real_iterdir(self))
        if self == tmp_path and staging.exists():
            staging.rename(final)  # the other worker finishes JournalDir.create right now
        return iter(entries)

    monkeypatch.setattr(Path, "iterdir", iterdir_then_rename)
    try:
        reader = JournalReader(Journal(tmp_path, max_bytes=BIG, segment_bytes=1 << 20))
        assert reader.adopt() == 0
        assert final.exists() and not staging.exists()
        assert reader.adopt() == 0, "the live worker's folder is locked: not adopted"
    finally:
        os.close(lock_fd)


# --- the backlog bound --------------------------------------------------------------------------


def test_bound_refuses_then_recovers_after_drain(tmp_path: Path) -> None:
    record = b"x" * 92  # a 100-byte frame
    frame = len(frames.encode(record))
    assert frame == 100

    async def scenario() -> None:
        journal = Journal(tmp_path, max_bytes=3 * frame, segment_bytes=1 << 20)
        reader = JournalReader(journal)
        for _ in range(3):
            await journal.append(record)
        assert journal.backlog_bytes == 3 * frame
        with pytest.raises(JournalFull) as caught:
            await journal.append(record)
        assert isinstance(caught.value, JournalUnavailable)
        with pytest.raises(JournalFull):
            journal.append_nowait(b"x")  # even a tiny record does not fit

        batch = reader.read(1)
        reader.commit(batch)
        assert journal.backlog_bytes == 2 * frame
        await journal.append(record)  # room for exactly one again
        with pytest.raises(JournalFull):
            await journal.append(record)

        assert len(drain(reader)) == 3
        assert journal.backlog_bytes == 0
        for _ in range(3):
            await journal.append(record)
        await journal.close()

    run(scenario())


def test_bound_counts_queued_records(tmp_path: Path) -> None:
    record = b"x" * 92
    frame = len(frames.encode(record))

    async def scenario() -> None:
        journal = Journal(tmp_path, max_bytes=2 * frame, segment_bytes=1 << 20)
        first = journal.append_nowait(record)
        second = journal.append_nowait(record)
        with pytest.raises(JournalFull):
            journal.append_nowait(record)  # nothing is durable yet, but the queue is at the bound
        await asyncio.gather(first, second)
        await journal.close()

    run(scenario())


def test_bound_counts_the_flush_in_flight(tmp_path: Path, sync_gate: SyncGate) -> None:
    record = b"x" * 92
    frame = len(frames.encode(record))

    async def scenario() -> None:
        journal = Journal(tmp_path, max_bytes=3 * frame, segment_bytes=1 << 20)
        reader = JournalReader(journal)
        in_flight = [journal.append_nowait(record), journal.append_nowait(record)]
        await sync_gate.wait_entered()  # those two are being written, neither queued nor durable
        queued = journal.append_nowait(record)
        with pytest.raises(JournalFull):
            journal.append_nowait(record)  # would make 4 frames for a bound of 3
        sync_gate.release.set()
        await asyncio.gather(*in_flight, queued)
        assert journal.backlog_bytes == 3 * frame <= journal.max_bytes
        assert len(drain(reader)) == 3
        await journal.close()

    run(scenario())


# --- write failures -----------------------------------------------------------------------------


def test_unwritable_root_refuses_appends(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"a regular file, not a folder")

    async def scenario() -> None:
        journal = Journal(blocker / "journal", max_bytes=BIG, segment_bytes=1 << 20)
        reader = JournalReader(journal)
        assert journal.last_error is None
        with pytest.raises(JournalUnavailable):
            await journal.append(b"lost?")
        assert journal.last_error is not None
        assert "Error" in journal.last_error
        with pytest.raises(JournalUnavailable):  # still refusing, never hanging
            await journal.append(b"again")
        assert journal.backlog_bytes == 0
        assert reader.adopt() == 0
        assert drain(reader) == []
        await journal.close()

    run(scenario())
    assert blocker.read_bytes() == b"a regular file, not a folder"


def test_write_failure_mid_life_refuses_then_recovers_on_a_new_segment(tmp_path: Path) -> None:
    async def scenario() -> None:
        journal = Journal(tmp_path, max_bytes=BIG, segment_bytes=1 << 20)
        reader = JournalReader(journal)
        await journal.append(b"first")
        assert journal.dir is not None and journal._fd >= 0
        (first_segment,) = seg_files(journal.dir.path)

        full = os.open("/dev/full", os.O_WRONLY)  # every write: ENOSPC
        try:
            os.dup2(full, journal._fd)
        finally:
            os.close(full)
        with pytest.raises(JournalUnavailable):
            await journal.append(b"second")
        assert journal.last_error is not None and "No space left" in journal.last_error
        assert journal.backlog_bytes == len(frames.encode(b"first"))

        await journal.append(b"third")  # the failed file is abandoned; a new segment takes over
        assert journal.last_error is None
        files = seg_files(journal.dir.path)
        assert len(files) == 2 and files[0] == first_segment
        assert first_segment.read_bytes() == frames.encode(b"first"), "no garbage after the durable prefix"
        assert files[1].read_bytes() == frames.encode(b"third")

        assert drain(reader) == [b"first", b"third"]
        assert not first_segment.exists()
        await journal.append(b"fourth")
        assert drain(reader) == [b"fourth"]
        await journal.close()

    run(scenario())


def test_failed_flush_fails_every_record_in_it_and_not_the_next(tmp_path: Path) -> None:
    async def scenario() -> None:
        journal = Journal(tmp_path, max_bytes=BIG, segment_bytes=1 << 20)
        reader = JournalReader(journal)
        await journal.append(b"ok")
        full = os.open("/dev/full", os.O_WRONLY)
        try:
            os.dup2(full, journal._fd)
        finally:
            os.close(full)
        doomed = [journal.append_nowait(b"doomed-%d" % i) for i in range(5)]
        results = await asyncio.gather(*doomed, return_exceptions=True)
        assert all(isinstance(r, JournalUnavailable) for r in results)
        await asyncio.gather(*(journal.append(b"later-%d" % i) for i in range(5)))
        assert drain(reader) == [b"ok"] + [b"later-%d" % i for i in range(5)]
        await journal.close()

    run(scenario())


# --- close --------------------------------------------------------------------------------------


def test_close_waits_for_queued_records_then_refuses(tmp_path: Path, sync_gate: SyncGate) -> None:
    records = [payload(i) for i in range(10)]

    async def scenario() -> None:
        journal = Journal(tmp_path, max_bytes=BIG, segment_bytes=1 << 20)
        reader = JournalReader(journal)
        futures = [journal.append_nowait(r) for r in records[:5]]
        await sync_gate.wait_entered()  # the first five are on their way to disk
        futures += [journal.append_nowait(r) for r in records[5:]]  # the rest wait for the next flush
        closing = asyncio.create_task(journal.close())
        await asyncio.sleep(0.05)
        assert not closing.done(), "close() must wait for the flush on disk"
        with pytest.raises(JournalUnavailable):
            journal.append_nowait(b"too late")
        sync_gate.release.set()
        await closing
        assert all(f.done() and f.exception() is None for f in futures)
        assert sync_gate.calls >= 2

        with pytest.raises(JournalUnavailable):
            await journal.append(b"after close")
        assert journal.dir is not None
        (segment,) = seg_files(journal.dir.path)
        assert [p for p, _ in frames.decode(segment.read_bytes())] == records
        assert drain(reader) == records
        assert not segment.exists(), "the closed segment is deleted once drained"

    run(scenario())


def test_close_of_an_unused_journal(tmp_path: Path) -> None:
    async def scenario() -> None:
        journal = Journal(tmp_path / "journal", max_bytes=BIG, segment_bytes=1 << 20)
        await journal.close()
        with pytest.raises(JournalUnavailable):
            await journal.append(b"x")
        assert journal.dir is None

    run(scenario())


def test_a_failing_durable_callback_does_not_stall_the_journal(tmp_path: Path) -> None:
    """The callback that wakes the writer raising must not leave the journal thinking a flush is
    still on its way: every later request would wait for ever."""

    async def scenario() -> None:
        journal = Journal(tmp_path, max_bytes=BIG, segment_bytes=1 << 20)
        reader = JournalReader(journal)

        def broken() -> None:
            raise RuntimeError("writer gone")

        journal.on_durable = broken
        loop = asyncio.get_running_loop()
        errors: list[object] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context.get("exception")))
        await asyncio.wait_for(journal.append(b"first"), 5)
        await asyncio.wait_for(asyncio.gather(*(journal.append(b"next-%d" % i) for i in range(3))), 5)
        assert drain(reader) == [b"first"] + [b"next-%d" % i for i in range(3)]
        assert errors and all(isinstance(e, RuntimeError) for e in errors), "the failure is reported"
        await asyncio.wait_for(journal.close(), 5)

    run(scenario())
