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
    device = os.stat(tmp_path).st_dev
    assert shared.device == f"{os.major(device)}:{os.minor(device)}"


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
    assert event["dirty_background_bytes"] == int(Path("/proc/sys/vm/dirty_background_bytes").read_text())
    assert "RECEIVER_JOURNAL_DIR" in event["advice"]


def test_the_writer_says_nothing_of_a_server_on_another_disk(tmp_path: Path) -> None:
    for pid in running_in(OTHER_DEVICE):
        with capture_logs() as logs:
            writer_process.warn_if_shared_disk(tmp_path, pid)
        assert logs == []
