"""Journal folders and segment files, and who owns them.

Layout under the journal root::

    writer.lock                flock()ed by the one writer that reads this root
    w-<uuid>/lock              flock()ed by the live worker that owns this folder
    w-<uuid>/000000000001.seg  segment files, in order; the worker appends to the last
    w-<uuid>/spare             the next segment's file, zero-filled ahead, renamed when it is needed
    w-<uuid>/drained           the writer's cursor: stored up to this segment and offset

A worker creates its folder under a temporary name, locks it, then renames it into place, so
no other process can see it unlocked. The kernel drops the lock when the owner dies (even by
``kill -9``); the writer, which reads every folder whoever owns it, deletes a folder once its
records are stored and its lock is free.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

SUFFIX = ".seg"
SPARE = "spare"


@dataclass(eq=False)
class Segment:
    """One of a worker's own segment files. ``durable``: bytes known to be on disk."""

    path: Path
    number: int
    durable: int = 0


class JournalDir:
    """A locked journal folder: a worker's own, or one whose worker has gone (to delete it)."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = path
        self._lock_fd = lock_fd

    @classmethod
    def create(cls, root: Path) -> JournalDir:
        root.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        staging = root / f".tmp-{name}"
        staging.mkdir()
        fd = os.open(staging / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        final = root / f"w-{name}"
        staging.rename(final)
        fsync_dir(root)
        return cls(final, fd)

    @classmethod
    def try_adopt(cls, path: Path) -> JournalDir | None:
        try:
            fd = os.open(path / "lock", os.O_RDWR)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        if not path.exists():  # removed by the adopter that held the lock before us
            os.close(fd)
            return None
        return cls(path, fd)

    def remove(self) -> None:
        """Delete the folder (every segment must be drained) and release the lock."""
        for path in self.path.iterdir():
            path.unlink()
        self.path.rmdir()
        with contextlib.suppress(OSError):
            fsync_dir(self.path.parent)
        self.release()

    def release(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def clear_stale_staging(path: Path) -> None:
    """Remove a staging folder left by a worker that died between ``mkdir`` and ``rename`` (it
    holds no segment); a young one may be a live worker's about to be renamed, and stays."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:  # renamed into place by its (live) worker since the root was listed
        return
    if age > 60:
        stale = JournalDir.try_adopt(path)
        if stale is not None:
            stale.remove()


# A folder's cursor, written by the writer after each stored batch: the segment number and the
# offset in it up to which records are stored. 16 bytes written in place, read by the worker.
_CURSOR = struct.Struct("<QQ")
CURSOR_FILE = "drained"


def write_cursor(fd: int, segment: int, offset: int) -> None:
    os.pwrite(fd, _CURSOR.pack(segment, offset), 0)


def read_cursor(folder: Path, fd: int = -1) -> tuple[int, int]:
    """(segment, offset) stored up to; (0, 0) when nothing is stored yet or the file is unreadable."""
    try:
        data = os.pread(fd, _CURSOR.size, 0) if fd >= 0 else (folder / CURSOR_FILE).read_bytes()
    except OSError:
        return 0, 0
    if len(data) < _CURSOR.size:
        return 0, 0
    segment, offset = _CURSOR.unpack_from(data)
    return int(segment), int(offset)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
