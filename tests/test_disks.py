"""Whether the journal shares a disk with the local PostgreSQL's files (receiver/disks.py), and the
writer's warning when it does."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from receiver import disks, writer_process

OTHER_DEVICE = Path("/proc")  # never the disk of a folder of the tests


@pytest.fixture
def server_dir(tmp_path: Path) -> Path:
    """A folder laid out like a data directory, on the tests' disk."""
    folder = tmp_path / "pgdata"
    (folder / "pg_wal").mkdir(parents=True)
    return folder


def running_in(cwd: Path) -> Iterator[int]:
    """A process whose working directory is ``cwd``, as a PostgreSQL backend's is its data directory."""
    proc = subprocess.Popen(["sleep", "60"], cwd=cwd)
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def backend(server_dir: Path) -> Iterator[int]:
    yield from running_in(server_dir)


def test_a_journal_on_the_servers_disk_shares_its_tables_and_wal(
    tmp_path: Path, server_dir: Path, backend: int
) -> None:
    shared = disks.shared_disk(tmp_path / "journal", backend)  # not made yet: its parent's disk
    assert shared is not None
    assert shared.data_directory == str(server_dir)
    assert shared.parts == ("tables", "wal")
    assert set(shared.disks) == disks.disks_of(os.stat(tmp_path).st_dev)


def test_a_wal_linked_to_another_disk_is_not_counted(tmp_path: Path, server_dir: Path, backend: int) -> None:
    (server_dir / "pg_wal").rmdir()
    (server_dir / "pg_wal").symlink_to(OTHER_DEVICE)
    shared = disks.shared_disk(tmp_path, backend)
    assert shared is not None and shared.parts == ("tables",)


def test_a_server_on_another_disk_shares_nothing(tmp_path: Path) -> None:
    for pid in running_in(OTHER_DEVICE):
        assert disks.shared_disk(tmp_path, pid) is None


def test_a_process_gone_tells_nothing(tmp_path: Path, server_dir: Path) -> None:
    proc = subprocess.Popen(["true"], cwd=server_dir)
    proc.wait()
    assert disks.shared_disk(tmp_path, proc.pid) is None


def test_the_writer_warns_with_the_kernels_write_back(tmp_path: Path, server_dir: Path, backend: int) -> None:
    with capture_logs() as logs:
        writer_process.warn_if_shared_disk(tmp_path / "journal", backend)
    [event] = logs
    assert event["event"] == "writer.journal_shares_disk" and event["log_level"] == "warning"
    assert event["data_directory"] == str(server_dir) and event["shared"] == ["tables", "wal"]
    assert event["dirty_background_bytes"] == disks.write_back()["dirty_background_bytes"]
    assert "RECEIVER_JOURNAL_DIR" in event["advice"]


def test_the_writer_says_nothing_of_a_server_on_another_disk(tmp_path: Path) -> None:
    for pid in running_in(OTHER_DEVICE):
        with capture_logs() as logs:
            writer_process.warn_if_shared_disk(tmp_path, pid)
        assert logs == []


def block_tree(sysfs: Path) -> None:
    """A /sys of two disks: sda with partitions sda1 (8:1) and sda2 (8:2), sdb (8:16) whole, and
    an LVM volume dm-0 (253:0) over sda2 and sdb."""
    block = sysfs / "devices" / "pci" / "block"
    for disk, partitions in (("sda", ("sda1", "sda2")), ("sdb", ())):
        (block / disk / "slaves").mkdir(parents=True)
        for partition in partitions:
            (block / disk / partition).mkdir()
            (block / disk / partition / "partition").write_text("1\n")
    dm = sysfs / "devices" / "virtual" / "block" / "dm-0"
    (dm / "slaves").mkdir(parents=True)
    (dm / "slaves" / "sda2").symlink_to(block / "sda" / "sda2")
    (dm / "slaves" / "sdb").symlink_to(block / "sdb")
    links = sysfs / "dev" / "block"
    links.mkdir(parents=True)
    for number, target in (("8:1", block / "sda" / "sda1"), ("8:2", block / "sda" / "sda2"),
                           ("8:16", block / "sdb"), ("253:0", dm)):  # fmt: skip
        (links / number).symlink_to(target)


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        (os.makedev(8, 1), {"sda"}),  # a partition: its disk
        (os.makedev(8, 16), {"sdb"}),  # a whole disk
        (os.makedev(253, 0), {"sda", "sdb"}),  # a volume: the disks under it
        (os.makedev(0, 27), {"0:27"}),  # no block device (tmpfs): itself
    ],
)
def test_a_file_systems_disks(tmp_path: Path, device: int, expected: set[str]) -> None:
    block_tree(tmp_path)
    assert disks.disks_of(device, tmp_path) == expected


@pytest.mark.parametrize(
    ("journal", "server", "shared"),
    [
        (os.makedev(8, 1), os.makedev(8, 2), ("sda",)),  # two partitions of one disk
        (os.makedev(8, 1), os.makedev(253, 0), ("sda",)),  # a partition, and a volume over its disk
        (os.makedev(8, 1), os.makedev(8, 16), None),  # two disks
    ],
)
def test_file_systems_of_their_own_on_one_disk_share_it(
    tmp_path: Path, server_dir: Path, backend: int, journal: int, server: int, shared: tuple[str, ...] | None
) -> None:
    sysfs = tmp_path / "sys"
    block_tree(sysfs)
    real = disks.disks_of

    def disks_of(dev: int, root: Path = sysfs) -> set[str]:
        return real(dev if dev == journal else server, root)  # the server's folder is on the tests' disk

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(disks, "device", lambda path: journal)
        patch.setattr(disks, "disks_of", disks_of)
        found = disks.shared_disk(tmp_path / "journal", backend, sysfs)
    assert (found.disks if found else None) == shared
