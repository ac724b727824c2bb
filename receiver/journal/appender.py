"""Durable appends with group commit.

``await journal.append(payload)`` returns once the record is written and ``fdatasync``ed. Records
from concurrent requests that arrive while one flush is on disk wait together for the next one,
so a burst costs a handful of syncs, not one per request; while records come faster than one
per ``group_window``, a record also waits up to that window for others to share its sync. The
write and the sync run on one dedicated thread; the event loop keeps accepting requests meanwhile.

Each segment file is zero-filled to its full size before its first record (``preallocate``), by
a thread of its own while the previous segment fills: a write then lands in blocks that are
already allocated and a file whose size does not change, so its ``fdatasync`` flushes that data
and nothing else. Appending to a growing file makes every sync commit the filesystem's journal
as well (the new size, the new blocks), which on ext4 also writes out other files' dirty data
first: PostgreSQL's, on a shared disk. Measured here, a sync of a few hundred bytes takes about
40% less time and CPU in a zero-filled file.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from . import frames
from .segments import CURSOR_FILE, SPARE, SUFFIX, JournalDir, Segment, fsync_dir, read_cursor

# A flush on its way: the loop to report back to, the frames, the futures that wait for them.
_Flush = tuple[asyncio.AbstractEventLoop, bytes, list[asyncio.Future[None]]]


QUIET = 0.002  # seconds without a flush after which a lone record is synced on the loop ("auto")
_GAP_WEIGHT = 0.25  # of each new gap between appends in the running average
_GAP_CAP = 0.1  # seconds: a longer pause counts as this long


_dsync: int | None = getattr(os, "RWF_DSYNC", None)  # None: not on this system (or refused once)


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
    while written < len(data):
        written += os.pwrite(fd, data[written:], offset + written)
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
        sync: Literal["thread", "loop", "auto"] = "thread",
        group_window: float = 0.0,
        preallocate: bool = True,
    ) -> None:
        self.root = root
        # Zero-fill each segment's file ahead of its records (see the module's text). Off where
        # overwriting in place buys nothing (copy-on-write filesystems: btrfs, ZFS).
        self.preallocate = preallocate
        self._spare = -1  # the next segment's file, zero-filled (named SPARE until it is used), or -1
        self._preparing: threading.Thread | None = None
        # Where a flush is written and fdatasync'ed. "thread": on the journal thread, while the
        # loop goes on. "loop": on the event loop itself (no thread hand-off, about half the CPU
        # of a flush; the loop waits for the disk). "auto": on the loop in quiet moments (a
        # single record, and no flush in the last QUIET seconds: nobody else's request is likely
        # to wait behind it), on the thread when busy.
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
        self._waiters: list[asyncio.Future[None]] = []
        self._flushing = False  # a flush is on the journal thread; the next waits in _buffer
        self._closed = False
        self._flushed = asyncio.Event()
        self._inbox: queue.SimpleQueue[_Flush | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None  # started with the first flush

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

    def append_nowait(self, payload: bytes) -> asyncio.Future[None]:
        """Queue a record; the returned future resolves once it is durable (or fails)."""
        if self._closed:
            raise JournalUnavailable("the journal is closed")
        frame = frames.encode(payload)
        if self.queued_bytes + len(frame) > self.max_bytes:
            self.refresh()  # the bound is checked against the writer's progress only when near it
            if self.queued_bytes + len(frame) > self.max_bytes:
                raise JournalFull(f"journal backlog reached its bound of {self.max_bytes} bytes")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._buffer.append(frame)
        self._buffered += len(frame)
        self._waiters.append(future)
        if self.group_window:
            now = time.monotonic()
            self._gap += (min(now - self._last_append, _GAP_CAP) - self._gap) * _GAP_WEIGHT
            self._last_append = now
            if len(self._buffer) == 1:
                self._first_at = now
        if not self._flushing:
            self._flushing = True
            self._flushed.clear()
            if self._gap < self.group_window:  # busy: others will join within the window
                self._timer = loop.call_later(self.group_window, self._hand_over, loop)
            else:
                loop.call_soon(self._hand_over, loop)  # with whatever else this turn of the loop appends
        return future

    async def append(self, payload: bytes) -> None:
        await self.append_nowait(payload)

    async def start(self) -> None:
        """Make the folder and zero-fill the first segment's file now, before the first record
        (else the first flush does it). A failure here is the first flush's to report."""
        if self.preallocate and self._spare < 0:
            await asyncio.to_thread(self._prepare_spare)

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        """Give what is buffered to the journal thread (one flush at a time). On the event loop."""
        self._timer = None
        flush = (loop, b"".join(self._buffer), self._waiters)
        self._buffer, self._buffered, self._waiters = [], 0, []
        self._inflight = len(flush[1])
        if self.sync == "loop" or (
            self.sync == "auto" and len(flush[2]) == 1 and time.monotonic() - self._last_flush > QUIET
        ):
            self._flush_done(flush, *self._attempt(flush[1]))
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="journal", daemon=True)
            self._thread.start()
        self._inbox.put(flush)

    def _flush_done(self, flush: _Flush, segment: Segment | None, error: BaseException | None) -> None:
        """The journal thread is done with a flush: settle its waiters, hand over the next. On the loop."""
        loop, data, waiters = flush
        self._inflight = 0
        self._last_flush = time.monotonic()
        try:
            if segment is None:
                reason = error.strerror if isinstance(error, OSError) and error.strerror else error
                self.last_error = f"{type(error).__name__}: {reason}"
                failure = JournalUnavailable(self.last_error)
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(failure)
                        waiter.exception()  # mark retrieved: nobody may be awaiting a quarantine record
            else:
                self.last_error = None
                segment.durable += len(data)
                self.appended_bytes += len(data)
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)
                self.on_durable()
        finally:
            if self._buffer:
                wait = self._first_at + self.group_window - time.monotonic() if self._gap < self.group_window else 0
                if wait > 0:  # busy: what came during this flush waits out its window for more
                    self._timer = loop.call_later(wait, self._hand_over, loop)
                else:
                    self._hand_over(loop)
            else:
                self._flushing = False
                self._flushed.set()

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
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
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
        way; making it now if nobody did), or -1. Makes the folder if need be."""
        if self._preparing is not None:
            self._preparing.join()
            self._preparing = None
        if self._spare < 0 and self.preallocate:
            self._prepare_spare()
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
            zeros = bytes(min(self.segment_bytes, 1 << 20))
            left = self.segment_bytes
            while left > 0:
                left -= os.write(fd, zeros[: min(left, len(zeros))])
            os.fsync(fd)
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
