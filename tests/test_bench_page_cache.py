"""The ingest benchmark's page-cache watch: how much was dirty during a latency run, and the
largest write-back and when (a stall of the journal's syncs lines up with it)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from bench.ingest import Bench, build_parser, journal_disk, journal_of, write_back
from bench.support import PageCacheWatch, dirty_kib, page_cache_summary

MEMINFO = """MemTotal:       24568320 kB
Dirty:            188356 kB
Writeback:          2048 kB
WritebackTmp:          0 kB
"""


def test_dirty_and_writeback_are_read_from_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(MEMINFO)
    assert dirty_kib(meminfo) == (188356, 2048)


def test_the_summary_gives_the_largest_write_back_and_when() -> None:
    samples = [(100.0, 100 * 1024, 0), (101.5, 40 * 1024, 60 * 1024), (102.0, 130 * 1024, 1024)]
    assert page_cache_summary(samples, start=100.2) == {
        "dirty_max_mib": 130.0, "writeback_max_mib": 60.0, "writeback_max_at_s": 1.3,
    }  # fmt: skip
    assert page_cache_summary([], start=0) == {}


def test_the_watch_samples_while_in_use_and_stops_after(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(MEMINFO)
    with PageCacheWatch(interval=0.01, meminfo=meminfo) as watch:
        time.sleep(0.1)
    taken = len(watch.samples)
    assert taken >= 3 and watch.samples[0][1:] == (188356, 2048)
    time.sleep(0.05)
    assert len(watch.samples) == taken


def test_the_layout_says_when_the_kernel_starts_writing_back(tmp_path: Path) -> None:
    (tmp_path / "dirty_background_bytes").write_text("0\n")
    (tmp_path / "dirty_background_ratio").write_text("10\n")
    assert write_back(tmp_path) == "; write-back from 10 % of memory dirty"
    (tmp_path / "dirty_background_bytes").write_text("16777216\n")
    assert write_back(tmp_path) == "; write-back from 16 MiB dirty"
    assert write_back(tmp_path / "missing") == ""


def test_the_layout_says_whether_the_journal_shares_postgresqls_disk(tmp_path: Path) -> None:
    pgdata = tmp_path / "pgdata"
    pgdata.mkdir()
    assert journal_disk(tmp_path / "data-http" / "journal", pgdata) == "; the journal on the disk of PostgreSQL's files"
    assert journal_disk(Path("/proc/self"), pgdata) == "; the journal off the disk of PostgreSQL's files"


def test_the_layout_reads_the_journal_where_the_receiver_keeps_it() -> None:
    """``--set RECEIVER_DATA_DIR`` or ``RECEIVER_JOURNAL_DIR`` moves the receiver's journal: the
    layout line looks there (a relative folder from where the benchmark runs: the receiver's too)."""
    assert journal_of({"RECEIVER_DATA_DIR": "/srv/data"}) == Path("/srv/data/journal")
    assert journal_of({"RECEIVER_DATA_DIR": "/srv/data", "RECEIVER_JOURNAL_DIR": "/fast/j"}) == Path("/fast/j")
    assert journal_of({"RECEIVER_DATA_DIR": "data"}) == Path.cwd() / "data" / "journal"


def test_the_layout_line_names_the_journals_disk_before_anything_runs() -> None:
    """The benchmark prints its layout first, before any server or database is set up."""
    args = build_parser().parse_args([])
    args.set, args.pinned, args.workers = {"RECEIVER_JOURNAL_DIR": "/proc/self"}, False, 2
    bench = Bench(args)
    try:
        assert bench.layout().endswith("; the journal off the disk of PostgreSQL's files")
    finally:
        shutil.rmtree(bench.base, ignore_errors=True)
