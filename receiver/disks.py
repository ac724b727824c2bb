"""Whether the journal shares a disk with the local PostgreSQL's files.

Each ``fdatasync`` of the journal waits for the disk to flush whatever was written before it.
Where PostgreSQL's files are on the same disk, the acknowledgements wait for its writes too: a
commit's WAL, a checkpoint, the kernel writing back the pages a burst left dirty. Measured on a
2-CPU VM (docs/operations.md, "PostgreSQL on the same machine"), that made the p99 at half the
maximum several times what it was with the journal on a memory file system. The writer process
asks once a run of the service (at its start at its lowered priority, or, with PostgreSQL away
then, once a lowered writer's own connection comes), through a backend of its server when that
runs on this machine, and says so in its log (``writer.journal_shares_disk``).

A backend's working directory is its server's data directory (PostgreSQL changes into it at
start), so ``/proc/<backend>/cwd`` says where the tables and, through ``pg_wal``, the WAL are,
with no privilege in the database. A process this one may not inspect (another user's server)
answers nothing, and nothing is said.

Two file systems can share a disk: partitions of it, or volumes (LVM, dm-crypt) over it. Each
file system's device is traced to the disks under it through ``/sys/dev/block`` (a partition's
disk, a mapped device's ``slaves``); a device with nothing there (tmpfs, overlayfs, a network
file system) is compared as itself. What the kernel cannot see, two virtual disks of one host
volume, is not told apart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SharedDisk", "device", "disks_of", "shared_disk", "write_back"]


SYSFS = Path("/sys")


@dataclass(frozen=True)
class SharedDisk:
    data_directory: str  # the server's data directory, as this machine sees it
    disks: tuple[str, ...]  # the disks both are on: "vda", or "major:minor" of a device without one
    parts: tuple[str, ...]  # what of the server's is on them: "tables", "wal"


def shared_disk(journal: Path, backend: int, sysfs: Path = SYSFS) -> SharedDisk | None:
    """The disks ``journal`` shares with the PostgreSQL server of the local process ``backend``,
    or None: other disks, or nothing to tell (a process gone or not ours to inspect)."""
    cwd = Path(f"/proc/{backend}/cwd")
    try:
        mine = disks_of(device(journal), sysfs)
        data_directory = os.readlink(cwd)
        tables = mine & disks_of(cwd.stat().st_dev, sysfs)
    except OSError:
        return None
    try:
        wal = mine & disks_of((cwd / "pg_wal").stat().st_dev, sysfs)  # pg_wal may be a link to another disk
    except OSError:
        wal = set()
    parts = [name for name, shared in (("tables", tables), ("wal", wal)) if shared]
    if not parts:
        return None
    return SharedDisk(data_directory, tuple(sorted(tables | wal)), tuple(parts))


def disks_of(dev: int, sysfs: Path = SYSFS) -> set[str]:
    """The disks under the block device ``dev`` (a file system's ``st_dev``): a disk is itself,
    a partition is on its disk, a mapped device (LVM, dm-crypt, RAID) on its ``slaves``' disks;
    a device the kernel lists no block device for (tmpfs, overlayfs) is its own "major:minor"."""
    number = f"{os.major(dev)}:{os.minor(dev)}"
    link = sysfs / "dev" / "block" / number
    if not link.exists():
        return {number}
    return _disks(link.resolve(), depth=0) or {number}


def _disks(node: Path, depth: int) -> set[str]:
    if depth > 8:  # a loop in a tree that is not the kernel's
        return set()
    if (node / "partition").exists():  # .../block/vda/vda1: on its parent
        node = node.parent
    slaves = node / "slaves"
    below = sorted(slaves.iterdir()) if slaves.is_dir() else []
    if not below:
        return {node.name}
    found: set[str] = set()
    for slave in below:
        found |= _disks(slave.resolve(), depth + 1)
    return found


VM = Path("/proc/sys/vm")


def write_back(vm: Path = VM) -> dict[str, int]:
    """The kernel's thresholds for starting to write dirty pages back (``vm.dirty_background_*``):
    by default a share of memory, often hundreds of megabytes, written back in piles. Those it
    does not say are left out."""
    found: dict[str, int] = {}
    for name in ("dirty_background_bytes", "dirty_background_ratio", "dirty_expire_centisecs"):
        try:
            found[name] = int((vm / name).read_text())
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
