"""Durable appends with group commit.

``await journal.append(payload)`` returns once the record is written and ``fdatasync``ed. Records
from concurrent requests that arrive while one flush is on disk wait together for the next one,
so a burst costs a handful of syncs, not one per request; while records come faster than one
per ``group_window``, a record may also wait up to that window for others to share its sync
(``wait_for_company``).

Where the flush happens (``sync``): by default (``"process"``) the event loop writes it into the
page cache and the worker's syncer process (:mod:`.syncer`) ``fdatasync``s the file, answering
on a socket the loop polls: the loop never waits for the disk, and nothing has to take the GIL
back from a busy loop. ``"thread"`` writes and syncs on a thread of the worker (also the
fallback when the syncer cannot start or dies); ``"loop"`` on the event loop itself; ``"auto"``
on the loop for a lone record in a quiet moment, else on the thread.

Each segment file is zero-filled to its full size before its first record (``preallocate``), by
a thread of its own while the previous segment fills: a write then lands in blocks that are
already allocated and a file whose size does not change, so its ``fdatasync`` flushes that data
and nothing else. Appending to a growing file makes every sync commit the filesystem's journal
as well (the new size, the new blocks), which on ext4 also writes out other files' dirty data
first: PostgreSQL's, on a shared disk. Measured here, a sync of a few hundred bytes takes about
40% less time and CPU in a zero-filled file. The zeros go to disk a piece at a time (``O_DSYNC``,
:data:`ZERO_PIECE` each), through a descriptor of their own: written whole and then synced, the
8 MiB made the syncers' next flushes wait for all of them (``python -m bench.spare``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Literal

import structlog

from . import frames, syncer
from .segments import CURSOR_FILE, SPARE, SUFFIX, JournalDir, Segment, fsync_dir, read_cursor

# Told once a record is durable (None) or will not be (the error): on the event loop, at once.
Settle = Callable[[BaseException | None], None]
# A flush on its way: the loop to report back to, the frames, who waits for them.
_Flush = tuple[asyncio.AbstractEventLoop, bytes, list[Settle]]

Sync = Literal["process", "thread", "loop", "auto"]

log = structlog.get_logger(__name__)

# How a worker starts its syncer: isolated (-I) and without site-packages (-S); the syncer
# needs only the standard library, and the script is found beside this module.
SYNCER_ARGV = [sys.executable, "-I", "-S", str(Path(syncer.__file__))]
# This many syncers dead within the window: the journal thread syncs from then on.
SYNCER_DEATHS = 3
SYNCER_DEATHS_WINDOW = 60.0


QUIET = 0.002  # seconds without a flush after which a lone record is synced on the loop ("auto")
# Of each new gap between appends in the running average. Slow enough that a few callbacks
# close together at a low rate (500/s over two workers) do not make the next one wait out the
# window alone; fast enough to follow a burst within a few milliseconds of its start.
_GAP_WEIGHT = 1 / 16
_GAP_CAP = 0.1  # seconds: a longer pause counts as this long


_dsync: int | None = getattr(os, "RWF_DSYNC", None)  # None: not on this system (or refused once)


def write(fd: int, data: bytes, offset: int) -> None:
    """Write ``data`` at ``offset`` of the file (into the page cache; the syncer makes it durable)."""
    written = 0
    while written < len(data):
        written += os.pwrite(fd, data[written:], offset + written)


ZERO_PIECE = 1 << 20  # bytes of a spare segment's zeros written and synced at a time


def zero_fill(path: Path, size: int, piece: int = ZERO_PIECE) -> None:
    """Write ``size`` zero bytes at the start of the file ``path``, each ``piece`` on disk before
    the next is written (``O_DSYNC``), so that a sync of another file on the same disk meanwhile
    waits for one piece at most, not for all of them. A descriptor of its own: the segment's
    must not make every record's write wait for the disk."""
    fd = os.open(path, os.O_WRONLY | getattr(os, "O_DSYNC", 0))
    try:
        zeros = bytes(min(size, piece))
        left = size
        while left > 0:
            left -= os.write(fd, zeros[: min(left, len(zeros))])
    finally:
        os.close(fd)


def write_durably(fd: int, data: bytes, offset: int) -> None:
    """Write ``data`` at ``offset`` of the file and return once it is on disk. One ``pwritev``
    with ``RWF_DSYNC``: the write and its ``fdatasync`` in one system call, so the journal
    thread takes the GIL back once per flush, not twice (each a wait when the event loop holds
    it). Where the kernel or the filesystem lacks it: ``pwrite`` then ``fdatasync``."""
    global _dsync
    written = 0
    if _dsync is not None:
        try:
            while written < len(data):
                written += os.pwritev(fd, [data[written:]], offset + written, _dsync)
            return
        except OSError as error:
            if written or error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
            _dsync = None
    write(fd, data, offset)
    os.fdatasync(fd)


class JournalUnavailable(Exception):
    """The record could not be made durable: answer 503, never 200."""


class JournalFull(JournalUnavailable):
    """The backlog not yet in PostgreSQL has reached its bound."""


class Journal:
    def __init__(
        self,
        root: Path,
        *,
        max_bytes: int,
        segment_bytes: int,
        sync: Sync = "thread",
        group_window: float = 0.0,
        preallocate: bool = True,
    ) -> None:
        self.root = root
        # Zero-fill each segment's file ahead of its records (see the module's text). Off where
        # overwriting in place buys nothing (copy-on-write filesystems: btrfs, ZFS).
        self.preallocate = preallocate
        self._spare = -1  # the next segment's file, zero-filled (named SPARE until it is used), or -1
        self._preparing: threading.Thread | None = None
        # Where a flush is written and fdatasync'ed. "process": written on the loop, synced by
        # the syncer process. "thread": on the journal thread, while the loop goes on. "loop": on
        # the event loop itself (no hand-off; the loop waits for the disk). "auto": on the loop
        # in quiet moments (a single record, and no flush in the last QUIET seconds: nobody
        # else's request is likely to wait behind it), on the thread when busy.
        self.sync = sync
        self._last_flush = float("-inf")  # when the last flush was done (monotonic)
        # How long a record may wait for company before its flush starts. A flush costs about
        # the same CPU whatever it carries (the fdatasync, the hand-offs), so when records come
        # faster than one per window, waiting for the next ones divides that cost among them;
        # when they come slower, nobody is likely to join, and the flush starts at once.
        self.group_window = group_window
        self._last_append = float("-inf")  # monotonic
        self._gap = _GAP_CAP  # running average of the time between appends (seconds)
        self._first_at = 0.0  # when the oldest buffered record came (monotonic)
        self._timer: asyncio.TimerHandle | None = None
        self._in_a_hurry = False  # a buffered record may not wait for company
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.dir: JournalDir | None = None
        self.segments: list[Segment] = []  # own segments not yet wholly stored, oldest first
        self.appended_bytes = 0  # durable bytes ever appended by this process
        self.drained_bytes = 0  # of those, bytes stored in PostgreSQL (as of the last look at the cursor)
        self._cursor_fd = -1
        self._number = 0  # of the newest own segment
        self.last_error: str | None = None
        self.on_durable: Callable[[], None] = lambda: None
        self._fd = -1
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._inflight = 0  # bytes of the flush being written: neither buffered nor durable yet
        self._waiters: list[Settle] = []
        self._flushing = False  # a flush is on its way to disk; the next waits in _buffer
        self._closed = False
        self._flushed = asyncio.Event()
        self._inbox: queue.SimpleQueue[_Flush | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None  # started with the first flush
        self._syncer: subprocess.Popen[bytes] | None = None  # started with the first flush ("process")
        self._syncer_socket: socket.socket | None = None
        self._syncer_has_fd = False  # the syncer holds the file of the active segment
        self._syncing: tuple[_Flush, Segment] | None = None  # written, the syncer's answer awaited
        self._syncer_deaths: list[float] = []  # when recent syncers died (monotonic)

    @property
    def backlog_bytes(self) -> int:
        """Durable bytes of this worker not yet in PostgreSQL."""
        return self.appended_bytes - self.drained_bytes

    @property
    def queued_bytes(self) -> int:
        """The backlog plus what is on its way to disk: what :meth:`append_nowait` holds against the bound."""
        return self.backlog_bytes + self._inflight + self._buffered

    def refresh(self) -> int:
        """Read the writer's cursor of this worker's folder: forget the segments it has stored,
        and return the backlog. A few microseconds (one ``pread``)."""
        if self.dir is None or not self.segments:
            return self.backlog_bytes
        if self._cursor_fd < 0:
            try:
                self._cursor_fd = os.open(self.dir.path / CURSOR_FILE, os.O_RDONLY)
            except OSError:
                return self.backlog_bytes  # nothing stored yet
        number, offset = read_cursor(self.dir.path, self._cursor_fd)
        while len(self.segments) > 1 and self.segments[0].number < number:
            self.segments.pop(0)
        backlog = sum(segment.durable for segment in self.segments)
        if self.segments and self.segments[0].number == number:
            backlog -= min(offset, self.segments[0].durable)
        elif self.segments and self.segments[0].number < number:  # the last one, wholly stored
            backlog = 0
        self.drained_bytes = self.appended_bytes - backlog
        return backlog

    def append_nowait(self, payload: bytes, *, wait_for_company: bool = True) -> asyncio.Future[None]:
        """Queue a record; the returned future resolves once it is durable (or fails).

        ``wait_for_company=False``: whoever could share this record's flush is most likely
        waiting for it already (a request on a kept-alive connection: its client sends the next
        one only after this answer), so its flush starts at once, with whatever is buffered."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.append_then(payload, partial(_settle, future), wait_for_company=wait_for_company)
        return future

    def append_then(self, payload: bytes, settled: Settle, *, wait_for_company: bool = True) -> None:
        """Queue a record; ``settled(None)`` once it is durable, ``settled(error)`` if it cannot
        be, called on the event loop as soon as the flush is done (no future, no turn of the
        loop in between: the callbacks' answers go out in the same turn as the flush's news).
        Raises :class:`JournalUnavailable` at once when the record cannot be taken."""
        if self._closed:
            raise JournalUnavailable("the journal is closed")
        frame = frames.encode(payload)
        if self.queued_bytes + len(frame) > self.max_bytes:
            self.refresh()  # the bound is checked against the writer's progress only when near it
            if self.queued_bytes + len(frame) > self.max_bytes:
                raise JournalFull(f"journal backlog reached its bound of {self.max_bytes} bytes")
        # Asked only when something is scheduled on it (before any state changes): on Python
        # before 3.12 asking costs a system call (getpid).
        hurry = bool(self.group_window) and not wait_for_company and self._timer is not None
        loop = asyncio.get_running_loop() if hurry or not self._flushing else None
        self._buffer.append(frame)
        self._buffered += len(frame)
        self._waiters.append(settled)
        if self.group_window:
            now = time.monotonic()
            self._gap += (min(now - self._last_append, _GAP_CAP) - self._gap) * _GAP_WEIGHT
            self._last_append = now
            if len(self._buffer) == 1:
                self._first_at = now
            if not wait_for_company:
                self._in_a_hurry = True
                if self._timer is not None:  # stop waiting: go with the next turn of the loop
                    self._timer.cancel()
                    self._timer = None
                    assert loop is not None
                    loop.call_soon(self._hand_over, loop)
        if not self._flushing:
            self._flushing = True
            self._flushed.clear()
            assert loop is not None
            loop.call_soon(self._hand_over_or_wait, loop)  # with whatever else this turn of the loop appends

    async def append(self, payload: bytes) -> None:
        await self.append_nowait(payload)

    async def start(self) -> None:
        """Make the folder, zero-fill the first segment's file and start the syncer now, before
        the first record (else the first flush does it). A failure here is the first flush's to
        report."""
        if self.preallocate and self._spare < 0:
            await asyncio.to_thread(self._prepare_spare)
        if self.sync == "process" and self._syncer is None:
            self._start_syncer(asyncio.get_running_loop())

    def _hand_over_or_wait(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hand over what is buffered now, or, while records come faster than one per window,
        once the oldest has waited out its window (unless one of them is in a hurry)."""
        wait = self._first_at + self.group_window - time.monotonic() if self._gap < self.group_window else 0
        if wait > 0 and not self._in_a_hurry:
            self._timer = loop.call_later(wait, self._hand_over, loop)
        else:
            self._hand_over(loop)

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the flush of what is buffered (one flush at a time). On the event loop."""
        self._timer = None
        self._in_a_hurry = False
        flush = (loop, b"".join(self._buffer), self._waiters)
        self._buffer, self._buffered, self._waiters = [], 0, []
        self._inflight = len(flush[1])
        if self.sync == "loop" or (
            self.sync == "auto" and len(flush[2]) == 1 and time.monotonic() - self._last_flush > QUIET
        ):
            self._flush_done(flush, *self._attempt(flush[1]))
            return
        if self.sync == "process" and (self._syncer_socket is not None or self._start_syncer(loop)):
            self._write_for_syncer(flush)
            return
        self._to_thread(flush)

    def _to_thread(self, flush: _Flush) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="journal", daemon=True)
            self._thread.start()
        self._inbox.put(flush)

    def _flush_done(self, flush: _Flush, segment: Segment | None, error: BaseException | None) -> None:
        """A flush is durable or failed: settle its waiters, start the next. On the loop."""
        loop, data, waiters = flush
        self._inflight = 0
        self._last_flush = time.monotonic()
        try:
            failure: JournalUnavailable | None = None
            if segment is None:
                reason = error.strerror if isinstance(error, OSError) and error.strerror else error
                self.last_error = f"{type(error).__name__}: {reason}"
                failure = JournalUnavailable(self.last_error)
            else:
                self.last_error = None
                segment.durable += len(data)
                self.appended_bytes += len(data)
            for settled in waiters:
                try:
                    settled(failure)
                except Exception:  # a defect of one waiter: the others are still told
                    log.exception("journal.waiter_failed")
            if failure is None:
                self.on_durable()
        finally:
            if self._buffer:  # what came during this flush
                self._hand_over_or_wait(loop)
            else:
                self._flushing = False
                self._flushed.set()

    # --- the syncer process ("process") ----------------------------------------------------

    def _start_syncer(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Start this worker's syncer; False (and the journal thread from now on) if it cannot,
        or if syncers keep dying soon after they start."""
        now = time.monotonic()
        self._syncer_deaths = [at for at in self._syncer_deaths if now - at < SYNCER_DEATHS_WINDOW]
        if len(self._syncer_deaths) >= SYNCER_DEATHS:
            return self._no_syncer(f"{len(self._syncer_deaths)} syncers died within {SYNCER_DEATHS_WINDOW:g} s")
        ours = theirs = None
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self._syncer = subprocess.Popen(
                [*SYNCER_ARGV, str(theirs.fileno())], pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                start_new_session=True,  # a terminal's Ctrl-C stops the worker, which then stops it
            )  # fmt: skip
            ours.setblocking(False)
            loop.add_reader(ours.fileno(), self._syncer_answered, loop)
        except Exception as error:  # noqa: BLE001 - whatever it is (no descriptors left, no Python), a thread syncs
            if ours is not None:
                ours.close()
            if self._syncer is not None:
                self._end_syncer()
            return self._no_syncer(f"{type(error).__name__}: {error}")
        finally:
            if theirs is not None:
                theirs.close()
        self._syncer_socket = ours
        self._syncer_has_fd = False
        return True

    def _no_syncer(self, reason: str) -> bool:
        log.warning("journal.syncer_unavailable", error=reason, fallback="thread")
        self.sync = "thread"
        return False

    def _write_for_syncer(self, flush: _Flush) -> None:
        """Write the flush into the page cache and ask the syncer to make it durable. On the loop."""
        assert self._syncer_socket is not None
        try:
            segment = self._active_segment()
            try:
                write(self._fd, flush[1], segment.durable)
            except OSError:
                self._abandon(segment)
                raise
        except Exception as failure:  # noqa: BLE001 - whatever it is, these records are not durable
            self._flush_done(flush, None, failure)
            return
        try:
            if self._syncer_has_fd:
                self._syncer_socket.send(b"s")
            else:
                socket.send_fds(self._syncer_socket, [b"s"], [self._fd])
        except OSError:
            self._syncer_gone(flush[0], flush)
            return
        self._syncer_has_fd = True
        self._syncing = (flush, segment)

    def _syncer_answered(self, loop: asyncio.AbstractEventLoop) -> None:
        """The syncer answered, or closed its end. On the loop."""
        assert self._syncer_socket is not None
        try:
            answer = self._syncer_socket.recv(16)
        except BlockingIOError:
            return
        except OSError:
            answer = b""
        syncing, self._syncing = self._syncing, None
        if not answer:
            self._syncer_gone(loop, syncing[0] if syncing is not None else None)
            return
        if syncing is None:
            return
        flush, segment = syncing
        code = int.from_bytes(answer[: syncer.ANSWER_BYTES], "little")
        if code:
            self._abandon(segment)
            self._flush_done(flush, None, OSError(code, os.strerror(code)))
        else:
            self._flush_done(flush, segment, None)

    def _syncer_gone(self, loop: asyncio.AbstractEventLoop, held: _Flush | None) -> None:
        """Forget a syncer that stopped answering; the flush it ``held`` (already written) goes
        to the journal thread, which writes it again where it was and syncs it; the next flush
        starts a new syncer."""
        log.warning("journal.syncer_gone", pid=self._syncer.pid if self._syncer else None)
        self._syncer_deaths.append(time.monotonic())
        self._close_syncer_socket(loop)
        if self._syncer is not None:
            self._end_syncer()
        if held is not None:
            self._to_thread(held)

    def _end_syncer(self) -> None:
        """Kill the syncer and reap it off the loop (one stuck in the disk may take a while to go)."""
        assert self._syncer is not None
        syncer_process, self._syncer = self._syncer, None
        with contextlib.suppress(OSError):
            syncer_process.kill()
        if syncer_process.poll() is None:
            threading.Thread(target=syncer_process.wait, name="journal-syncer-reaper", daemon=True).start()

    def _close_syncer_socket(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._syncer_socket is not None:
            with contextlib.suppress(Exception):
                loop.remove_reader(self._syncer_socket.fileno())
            self._syncer_socket.close()
            self._syncer_socket = None

    # --- on the journal thread -------------------------------------------------------------

    def _run(self) -> None:
        """The journal thread: write and sync each flush it is handed, report back to the loop.
        A dedicated thread and a plain queue: a flush costs one wake-up each way, not an
        executor's futures (at moderate rates each request is a flush of its own)."""
        while True:
            flush = self._inbox.get()
            if flush is None:
                return
            segment, error = self._attempt(flush[1])
            try:
                flush[0].call_soon_threadsafe(self._flush_done, flush, segment, error)
            except RuntimeError:  # the loop is closed: nobody waits any more
                return

    def _attempt(self, data: bytes) -> tuple[Segment | None, BaseException | None]:
        """Write and sync; the segment written to, or what went wrong."""
        try:
            return self._write(data), None
        except Exception as failure:  # noqa: BLE001 - whatever it is, these records are not durable
            return None, failure

    def _write(self, data: bytes) -> Segment:
        segment = self._active_segment()
        try:
            write_durably(self._fd, data, segment.durable)
        except OSError:
            self._abandon(segment)
            raise
        return segment

    def _active_segment(self) -> Segment:
        if self._fd >= 0 and self.segments and self.segments[-1].durable < self.segment_bytes:
            return self.segments[-1]
        if self._fd >= 0:
            self._close_active()
        spare = self._take_spare()
        assert self.dir is not None
        self._number += 1
        path = self.dir.path / f"{self._number:012d}{SUFFIX}"
        if spare >= 0:
            try:
                os.rename(self.dir.path / SPARE, path)
                self._fd = spare
            except OSError:
                os.close(spare)
        if self._fd < 0:  # nothing prepared (preallocate off, or it failed): a file that grows
            # no O_APPEND: every write says where it goes (a flush written again after a
            # failure must land where it was, not after itself)
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fsync_dir(self.dir.path)
        except OSError:
            self._abandon(None)
            raise
        segment = Segment(path, self._number)
        self.segments.append(segment)
        if self.preallocate:  # the next one, while this one fills
            self._preparing = threading.Thread(target=self._prepare_spare, name="journal-spare", daemon=True)
            self._preparing.start()
        return segment

    def _take_spare(self) -> int:
        """The zero-filled file prepared for the next segment (waiting for it if it is on its
        way), or -1. Makes the folder if need be. Where none was prepared (its preparation
        failed, or :meth:`start` did not run) none is made here, on the event loop: its zeros
        would hold every request of the worker meanwhile (8 MiB, a piece at a time, each synced).
        The segment is then a file that grows, and the next one's is prepared beside it."""
        if self._preparing is not None:
            self._preparing.join()
            self._preparing = None
        if self.dir is None:
            self.dir = JournalDir.create(self.root)
        spare, self._spare = self._spare, -1
        return spare

    def _prepare_spare(self) -> None:
        """Zero-fill a file of ``segment_bytes`` under a name the reader ignores, and sync it (its
        size and blocks are then on disk before any record goes in). When that fails, nothing is
        prepared: the next segment is a file that grows, and its own writes say what is wrong."""
        try:
            if self.dir is None:
                self.dir = JournalDir.create(self.root)
            path = self.dir.path / SPARE
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError:
            return
        try:
            zero_fill(path, self.segment_bytes)
            os.fsync(fd)  # its size and blocks, once more through the descriptor the records use
            os.lseek(fd, 0, os.SEEK_SET)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            return
        self._spare = fd

    def _close_active(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = -1
        self._syncer_has_fd = False  # the next file may get the same number: the syncer must get it anew

    def _abandon(self, segment: Segment | None) -> None:
        """After a failed write or sync the file's tail is unknown: cut it back and never append to it
        again. Its durable prefix is still drained; the next flush starts a new segment."""
        if segment is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, segment.durable)
        self._close_active()

    # --- lifecycle --------------------------------------------------------------------------

    async def close(self) -> None:
        """Refuse new records, wait for queued ones to be durable, close the file."""
        self._closed = True
        if self._timer is not None:  # no reason left to wait for company
            self._timer.cancel()
            self._hand_over(asyncio.get_running_loop())
        if self._flushing:
            await self._flushed.wait()
        if self._syncer is not None:  # closing our end stops it
            self._close_syncer_socket(asyncio.get_running_loop())
            syncer_process, self._syncer = self._syncer, None
            try:
                await asyncio.to_thread(syncer_process.wait, 5)
            except subprocess.TimeoutExpired:
                syncer_process.kill()
                await asyncio.to_thread(syncer_process.wait)
        if self._thread is not None:
            self._inbox.put(None)
            await asyncio.to_thread(self._thread.join)
        if self._preparing is not None:
            await asyncio.to_thread(self._preparing.join)
            self._preparing = None
        if self._spare >= 0 and self.dir is not None:
            with contextlib.suppress(OSError):
                os.close(self._spare)
                (self.dir.path / SPARE).unlink()
            self._spare = -1
        if self._fd >= 0 and self.segments:  # no zero-filled tail left behind a clean stop
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self.segments[-1].durable)
        self._close_active()
        if self._cursor_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._cursor_fd)
            self._cursor_fd = -1
        if self.dir is not None:
            self.dir.release()  # the writer deletes the folder once everything in it is stored


def _settle(future: asyncio.Future[None], failure: BaseException | None) -> None:
    if future.done():
        return
    if failure is None:
        future.set_result(None)
    else:
        future.set_exception(failure)
        future.exception()  # mark retrieved: nobody may be awaiting a quarantine record
