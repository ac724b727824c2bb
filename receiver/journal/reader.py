"""Reads every worker's journal back, in order within each worker, for the writer.

The writer (a process of its own, or a task beside the worker) reads straight from the segment
files: each worker's folder, whether that worker is alive, dead or gone, so a dead worker's
records are stored without waiting for anyone to take its place. Only whole records that pass
their CRC are read; a record a worker is still writing is read once it is whole.

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
_LIVENESS_EVERY = 1.0  # seconds between looks at whether a drained folder's worker is gone
WRITER_LOCK = "writer.lock"


@dataclass(eq=False)
class _Folder:
    path: Path
    segment: int = 0  # the segment the cursor is in (0: before the first)
    offset: int = 0  # bytes of that segment already stored
    cursor_fd: int = -1
    checked_at: float = float("-inf")  # when we last tried its lock


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
            start = folder.offset if number == folder.segment else 0
            try:
                size = os.stat(path).st_size
            except FileNotFoundError:
                continue
            pending += max(0, size - start)
            if found is not None or size <= start:
                if not last and size <= start and found is None:
                    self._advance(folder, numbers[i + 1], 0)  # wholly stored: on to the next
                    _unlink(path)
                continue
            payloads, end = _read_records(path, start, size, limit) if limit > 0 else ([], start)
            if payloads:
                found = payloads, Part(folder, number, end)
            elif not last and limit > 0:
                log.warning("journal segment %s: skipping %d damaged or torn bytes", path, size - start)
                pending -= size - start
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
        """Delete a folder whose records are all stored once its worker is gone."""
        now = time.monotonic()
        if not force and now - folder.checked_at < _LIVENESS_EVERY:
            return
        folder.checked_at = now
        gone = JournalDir.try_adopt(folder.path)
        if gone is None:
            return  # its worker is alive (or the folder went meanwhile)
        if _unread_bytes(folder) and not self._skip_torn_tail(folder):
            gone.release()  # written to since we looked: not yet
            return
        _close_cursor(folder)
        gone.remove()
        self._folders.pop(folder.path, None)

    def _skip_torn_tail(self, folder: _Folder) -> bool:
        """With its worker gone, unread bytes at the end of the last segment that hold no whole
        record never will: a write cut short by the crash (never acknowledged). Skip them (True)."""
        numbers = _segment_numbers(folder.path)
        if not numbers:
            return False
        path = _segment_path(folder.path, numbers[-1])
        start = folder.offset if numbers[-1] == folder.segment else 0
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            return False
        if _unread_bytes(folder) != size - start or _read_records(path, start, size, 1)[0]:
            return False  # unread records elsewhere, or whole ones here: read them first
        log.warning("journal segment %s: skipping a torn tail of %d bytes", path, size - start)
        self._advance(folder, numbers[-1], size)
        return True

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
    unread = 0
    for number in _segment_numbers(folder.path):
        if number >= folder.segment:
            start = folder.offset if number == folder.segment else 0
            with contextlib.suppress(FileNotFoundError):
                unread += max(0, os.stat(_segment_path(folder.path, number)).st_size - start)
    return unread


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


def _read_records(path: Path, start: int, size: int, limit: int) -> tuple[list[bytes], int]:
    try:
        with open(path, "rb") as file:
            file.seek(start)
            data = file.read(min(size - start, _READ_WINDOW))
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

