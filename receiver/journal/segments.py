"""Journal folders and segment files, and who owns them.

Layout under the journal root::

    w-<uuid>/lock              flock()ed by the live worker that owns this folder
    w-<uuid>/000000000001.seg  append-only segment files, in order

A worker creates its folder under a temporary name, locks it, then renames it into place, so
no other process can see it unlocked. The kernel drops the lock when the owner dies (even by
``kill -9``), and any worker, of any later run and whatever their number, then adopts the
folder and drains what it holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

SUFFIX = ".seg"


@dataclass(eq=False)
class Segment:
    """One segment file. ``durable``: bytes known to be on disk (all of it once closed);
    ``drained``: bytes already stored in PostgreSQL."""

    path: Path
    durable: int = 0
    drained: int = 0
    closed: bool = False
    owner: JournalDir | None = field(default=None, repr=False)


class JournalDir:
    """A locked journal folder: our own, or an adopted one whose owner died."""

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

    def segment_paths(self) -> list[Path]:
        return sorted(self.path.glob(f"*{SUFFIX}"))

    def next_segment_path(self) -> Path:
        existing = self.segment_paths()
        number = int(existing[-1].stem) + 1 if existing else 1
        return self.path / f"{number:012d}{SUFFIX}"

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


def adopt_orphans(root: Path, *, exclude: set[Path]) -> list[JournalDir]:
    """Lock every journal folder whose owner is gone, and clear abandoned staging folders."""
    adopted: list[JournalDir] = []
    if not root.is_dir():
        return adopted
    for path in sorted(root.iterdir()):
        if path in exclude:
            continue
        if path.name.startswith("w-"):
            orphan = JournalDir.try_adopt(path)
            if orphan is not None:
                adopted.append(orphan)
        elif path.name.startswith(".tmp-"):
            try:
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:  # renamed into place by its (live) worker since we listed the root
                continue
            if age > 60:
                stale = JournalDir.try_adopt(path)
                if stale is not None:  # a worker died between mkdir and rename: it holds no segment
                    stale.remove()
    return adopted


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
