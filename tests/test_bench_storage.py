"""The growth benchmark (bench/storage.py) says where the database's files are, and how that file
system's discards and compression bear on what it measures, and it knows how much room a fill takes."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import storage

MOUNTS = """\
/dev/vda / ext4 rw,relatime,discard,errors=remount-ro 0 0
/dev/vdb /srv/pg xfs rw,noatime 0 0
/dev/loop0 /mnt/z btrfs rw,noatime,compress-force=zstd:1,discard=async,space_cache=v2 0 0
/dev/loop1 /mnt/z/plain btrfs rw,noatime,compress=no,space_cache=v2 0 0
"""


@pytest.mark.parametrize(
    ("path", "described"),
    [
        ("/var/lib/pg", "ext4 at / (online discard)"),
        ("/srv/pg/data", "xfs at /srv/pg (no online discard)"),
        (
            "/mnt/z/pg",
            "btrfs at /mnt/z (online discard, queued, compressed: zstd:1; a GB of the database takes less on the disk)",
        ),
        ("/mnt/z/plain/pg", "btrfs at /mnt/z/plain (no online discard)"),  # the longest mount point wins
    ],
)
def test_the_file_system_of_the_database(path: str, described: str) -> None:
    assert storage.file_system(path, MOUNTS) == described


def test_a_fill_needs_room_for_the_reports_it_adds() -> None:
    assert storage.space_needed(0, 1_000_000) == 1_700_000_000
    assert storage.space_needed(1_000_000, 10_000_000) == 9 * 1_700_000_000
    assert storage.space_needed(10_000_000, 1_000_000) == 0  # nothing to add


def test_the_bytes_read_from_the_disks(tmp_path: Path) -> None:
    vmstat = tmp_path / "vmstat"
    vmstat.write_text("nr_free_pages 1000\npgpgin 2048\npgpgout 4096\n")
    assert storage.disk_reads(vmstat) == 2 * 1024 * 1024  # pgpgin counts KiB
    assert storage.disk_reads(tmp_path / "none") == 0
