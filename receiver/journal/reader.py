"""Reads every worker's journal back, in order within each worker, for the writer.

The writer (a process of its own, or a task beside the worker) reads straight from the segment
files: each worker's folder, whether that worker is alive, dead or gone, so a dead worker's
records are stored without waiting for anyone to take its place. Only whole records that pass
their CRC are read; a record a worker is still writing is read once it is whole. A worker's
last segment is zero-filled past its records (:mod:`.appender`): its size says nothing, so the
reader finds where its records end by reading them, from where it last looked.

The writer takes a batch with :meth:`JournalReader.read`, stores it, then calls
:meth:`JournalReader.commit`, which writes each folder's cursor (``drained``: the segment and
offset stored up to); the next read deletes the segments wholly behind it. A crash between the two replays
the batch, which the idempotent writer turns into no-ops; so the cursor is written without
``fsync``. The worker reads its folder's cursor to know its backlog (:mod:`.appender`).

A folder whose worker has gone (its ``flock`` is free) and whose records are all stored is
deleted. At most one writer reads a journal root at a time (``writer.lock``).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import frames
from .segments import SUFFIX, JournalDir, clear_stale_staging, read_cursor, write_cursor

log = logging.getLogger(__name__)

_READ_WINDOW = 2 * frames.MAX_PAYLOAD
_FIRST_LOOK = 64 << 10  # bytes read first where a last segment's records may end (usually zeros)
_SCAN_CHUNK = 1 << 20
_LIVENESS_EVERY = 1.0  # seconds between looks at whether a drained folder's worker is gone
WRITER_LOCK = "writer.lock"


@dataclass(eq=False)
class _Folder:
    path: Path
    segment: int = 0  # the segment the cursor is in (0: before the first)
    offset: int = 0  # bytes of that segment already stored
    cursor_fd: int = -1
    checked_at: float = float("-inf")  # when we last tried its lock
    scanned: tuple[int, int] = (0, 0)  # (segment, offset): its whole records go at least this far


@dataclass(frozen=True, slots=True)
class Part:
    """A run of whole records of one segment of one folder."""

    folder: _Folder
    segment: int
    end: int


@dataclass
class Batch:
    payloads: list[bytes]
    parts: list[Part] = field(default_factory=list)


class JournalReader:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._folders: dict[Path, _Folder] = {}
        self._turn = 0  # which folder reads first: each gets its share under load
        self.backlog_bytes = 0  # as of the last read: durable bytes not yet stored, every folder
        self._lock_fd = -1

    # --- the one-writer lock ---------------------------------------------------------------

    def try_lock(self) -> bool:
        """Become the one writer of this journal root (True), or not now (another holds it)."""
        if self._lock_fd >= 0:
            return True
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / WRITER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def close(self) -> None:
        for folder in self._folders.values():
            _close_cursor(folder)
        self._folders.clear()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # --- reading ---------------------------------------------------------------------------

    def scan(self) -> None:
        """Pick up new folders, forget vanished ones, clear abandoned staging folders."""
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            names = []
        seen = set()
        for name in names:
            path = self.root / name
            if name.startswith("w-"):
                seen.add(path)
                if path not in self._folders:
                    segment, offset = read_cursor(path)
                    self._folders[path] = _Folder(path, segment, offset)
            elif name.startswith(".tmp-"):
                clear_stale_staging(path)
        for path in [p for p in self._folders if p not in seen]:
            _close_cursor(self._folders.pop(path))

    def read(self, max_records: int) -> Batch:
        """The next whole records, up to ``max_records``, taken from each folder in turn (possibly
        none). Nothing advances until :meth:`commit`."""
        self.scan()
        folders = list(self._folders.values())
        if folders:
            self._turn = (self._turn + 1) % len(folders)
            folders = folders[self._turn :] + folders[: self._turn]
        batch = Batch([])
        backlog = 0
        for folder in folders:
            payloads, part, pending = self._read_folder(folder, max_records - len(batch.payloads))
            backlog += pending
            if part is not None:
                batch.payloads.extend(payloads)
                batch.parts.append(part)
        self.backlog_bytes = backlog
        return batch

    def _read_folder(self, folder: _Folder, limit: int) -> tuple[list[bytes], Part | None, int]:
        """Up to ``limit`` records from the folder's oldest unread segment; and the folder's
        unread bytes. Segments behind the cursor are deleted; a drained folder of a gone worker too."""
        numbers = _segment_numbers(folder.path)
        pending = 0
        found: tuple[list[bytes], Part] | None = None
        for i, number in enumerate(numbers):
            path = _segment_path(folder.path, number)
            last = i == len(numbers) - 1  # the one its worker may still append to
            if number < folder.segment:
                _unlink(path)  # stored before a crash kept us from deleting it
                continue
            start, end = _unread_span(folder, number, last)
            if end is None:
                continue
            pending += max(0, end - start)
            if found is not None or end <= start:
                if not last and end <= start and found is None:
                    self._advance(folder, numbers[i + 1], 0)  # wholly stored: on to the next
                    _unlink(path)
                continue
            payloads, stop = _read_records(path, start, end, limit) if limit > 0 else ([], start)
            if payloads:
                found = payloads, Part(folder, number, stop)
            elif not last and limit > 0:
                if not _zeros_at(path, start):  # else: the unused, zero-filled end of the file
                    log.warning("journal segment %s: skipping %d damaged or torn bytes", path, end - start)
                pending -= end - start
                self._advance(folder, numbers[i + 1], 0)
                _unlink(path)
        if found is None and (pending == 0 or limit > 0):  # drained, or only a tail that is no record
            self._retire_if_gone(folder)
        return (found[0], found[1], pending) if found is not None else ([], None, pending)

    def retire_gone(self) -> None:
        """Delete now every folder whose records are all stored and whose worker is gone."""
        self.scan()
        for folder in list(self._folders.values()):
            if not _unread_bytes(folder):
                self._retire_if_gone(folder, force=True)

    def _retire_if_gone(self, folder: _Folder, *, force: bool = False) -> None:
        """Delete a folder whose records are all stored once its worker is gone. What follows its
        last whole record then never becomes one: a write cut short by the crash, never
        acknowledged, or the zero-filled rest of the file."""
        now = time.monotonic()
        if not force and now - folder.checked_at < _LIVENESS_EVERY:
            return
        folder.checked_at = now
        gone = JournalDir.try_adopt(folder.path)
        if gone is None:
            return  # its worker is alive (or the folder went meanwhile)
        if _unread_bytes(folder):
            gone.release()  # written to since we looked: not yet
            return
        numbers = _segment_numbers(folder.path)
        if numbers:
            path = _segment_path(folder.path, numbers[-1])
            end = _unread_span(folder, numbers[-1], last=True)[1] or 0
            if not _zeros_at(path, end):
                log.warning("journal segment %s: skipping a torn tail after offset %d", path, end)
        _close_cursor(folder)
        gone.remove()
        self._folders.pop(folder.path, None)

    def commit(self, batch: Batch) -> None:
        """The batch is stored: move each folder's cursor past it."""
        for part in batch.parts:
            self._advance(part.folder, part.segment, part.end)

    def _advance(self, folder: _Folder, segment: int, offset: int) -> None:
        folder.segment, folder.offset = segment, offset
        if folder.cursor_fd < 0:
            with contextlib.suppress(OSError):
                folder.cursor_fd = os.open(folder.path / "drained", os.O_RDWR | os.O_CREAT, 0o600)
        if folder.cursor_fd >= 0:
            with contextlib.suppress(OSError):
                write_cursor(folder.cursor_fd, segment, offset)

    def drained(self) -> bool:
        """True when every durable record of every folder is stored."""
        self.scan()
        return not any(_unread_bytes(folder) for folder in self._folders.values())


def _unread_bytes(folder: _Folder) -> int:
    """Bytes of whole records not yet stored, every segment of the folder."""
    unread = 0
    numbers = _segment_numbers(folder.path)
    for i, number in enumerate(numbers):
        if number >= folder.segment:
            start, end = _unread_span(folder, number, last=i == len(numbers) - 1)
            unread += max(0, (end or 0) - start)
    return unread


def _unread_span(folder: _Folder, number: int, last: bool) -> tuple[int, int | None]:
    """Where a segment's unread part starts (past the cursor) and ends: a last segment, which
    may be zero-filled past its records, where its whole records end; any other, at its size.
    None: no such file."""
    start = folder.offset if number == folder.segment else 0
    if last:
        return start, _records_end(folder, number, start)
    return start, _size(_segment_path(folder.path, number))


def _records_end(folder: _Folder, number: int, start: int) -> int | None:
    """Where the whole, intact records of the folder's segment ``number`` end, reading from
    where the last look stopped (records, once whole, never change); None: no such file."""
    seen_number, seen = folder.scanned
    offset = max(start, seen) if seen_number == number else start
    path = _segment_path(folder.path, number)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        chunk = _FIRST_LOOK
        while True:
            data = os.pread(fd, chunk, offset)
            end, cut = frames.scan(data)
            offset += end
            if len(data) < chunk or not (end == len(data) or cut):
                break  # the file, or its records, end here
            chunk = max(_SCAN_CHUNK, cut)
    finally:
        os.close(fd)
    folder.scanned = (number, offset)
    return offset


def _size(path: Path) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


def _zeros_at(path: Path, offset: int) -> bool:
    """True when the file ends at ``offset`` or its zero-filled tail starts there."""
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            return frames.is_zero_header(file.read(frames.HEADER.size))
    except FileNotFoundError:
        return True


def _segment_numbers(folder: Path) -> list[int]:
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    numbers = []
    for name in names:
        if name.endswith(SUFFIX) and name[: -len(SUFFIX)].isdigit():
            numbers.append(int(name[: -len(SUFFIX)]))
    return sorted(numbers)


def _segment_path(folder: Path, number: int) -> Path:
    return folder / f"{number:012d}{SUFFIX}"


def _read_records(path: Path, start: int, end: int, limit: int) -> tuple[list[bytes], int]:
    """Up to ``limit`` records from ``start`` (``end``: where they end, or the file's size)."""
    try:
        with open(path, "rb") as file:
            file.seek(start)
            data = file.read(min(end - start, _READ_WINDOW))
    except FileNotFoundError:
        return [], start
    payloads: list[bytes] = []
    end = start
    for payload, stop in frames.decode(data):
        payloads.append(payload)
        end = start + stop
        if len(payloads) >= limit:
            break
    return payloads, end


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _close_cursor(folder: _Folder) -> None:
    if folder.cursor_fd >= 0:
        with contextlib.suppress(OSError):
            os.close(folder.cursor_fd)
        folder.cursor_fd = -1

