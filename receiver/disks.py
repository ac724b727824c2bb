"""Whether the journal shares a disk with the local PostgreSQL's files.

Each ``fdatasync`` of the journal waits for the disk to flush whatever was written before it.
Where PostgreSQL's files are on the same disk, the acknowledgements wait for its writes too: a
commit's WAL, a checkpoint, the kernel writing back the pages a burst left dirty. Measured on a
2-CPU VM (docs/operations.md, "PostgreSQL on the same machine"), that made the p99 at half the
maximum several times what it was with the journal off that disk. The writer process asks once,
at its start (or, with PostgreSQL away then, once its own connection comes), through a backend
of its server when that runs on this machine, and says so in its log
(``writer.journal_shares_disk``).

A backend's working directory is its server's data directory (PostgreSQL changes into it at
start), so ``/proc/<backend>/cwd`` says where the tables and, through ``pg_wal``, the WAL are,
with no privilege in the database. A process this one may not inspect (another user's server)
answers nothing, and nothing is said.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SharedDisk", "device", "shared_disk", "write_back"]


@dataclass(frozen=True)
class SharedDisk:
    data_directory: str  # the server's data directory, as this machine sees it
    device: str  # "major:minor" of the disk both are on
    parts: tuple[str, ...]  # what of the server's is on it: "tables", "wal"


def shared_disk(journal: Path, backend: int) -> SharedDisk | None:
    """The disk ``journal`` shares with the PostgreSQL server of the local process ``backend``,
    or None: another disk, or nothing to tell (a process gone or not ours to inspect)."""
    cwd = Path(f"/proc/{backend}/cwd")
    try:
        mine = device(journal)
        data_directory = os.readlink(cwd)
        tables = cwd.stat().st_dev
    except OSError:
        return None
    parts = ["tables"] if tables == mine else []
    try:
        if (cwd / "pg_wal").stat().st_dev == mine:  # pg_wal may be a link to another disk
            parts.append("wal")
    except OSError:
        pass
    if not parts:
        return None
    return SharedDisk(data_directory, f"{os.major(mine)}:{os.minor(mine)}", tuple(parts))


def write_back() -> dict[str, int]:
    """The kernel's thresholds for starting to write dirty pages back (``vm.dirty_background_*``):
    by default a share of memory, often hundreds of megabytes, written back in piles."""
    found: dict[str, int] = {}
    for name in ("dirty_background_bytes", "dirty_background_ratio", "dirty_expire_centisecs"):
        try:
            found[name] = int(Path(f"/proc/sys/vm/{name}").read_text())
        except (OSError, ValueError):
            pass
    return found


def device(path: Path) -> int:
    """The device of ``path``, or of its nearest existing parent (a journal folder not made yet)."""
    for candidate in (path, *path.parents):
        try:
            return candidate.stat().st_dev
        except FileNotFoundError:
            continue
    raise FileNotFoundError(path)
