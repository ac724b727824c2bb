"""The ingest benchmark's zero-loss accounting: which ids wrk saw acknowledged (bench/ingest.lua
writes the result file; bench.ingest reads it and checks every acknowledged id in PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.ingest import acked_ids, read_wrk_result

SUMMARY = "summary 10000000 9 0 0 0 1 0\nlatency 2500 4000 7000 9000 2600.5 12000\n"


def test_every_number_not_listed_was_acknowledged(tmp_path: Path) -> None:
    result = tmp_path / "wrk.txt"
    # thread 1 sent 5: 1 was never sent (wrk's check of the script), 4 got a 503; thread 2 sent 4, all 2xx
    result.write_text(SUMMARY + "thread r-1_ 5 3 1,4\nthread r-2_ 4 4 \n")
    info, threads = read_wrk_result(result)
    assert (info["requests"], info["errors"], info["counted"]) == (9, {"status": 1}, False)
    assert acked_ids(threads) == {"r-1_2", "r-1_3", "r-1_5", "r-2_1", "r-2_2", "r-2_3", "r-2_4"}
    assert sum(t[1] for t in threads.values()) == 7


def test_a_server_whose_ids_are_not_checked_is_counted(tmp_path: Path) -> None:
    result = tmp_path / "wrk.txt"
    result.write_text(SUMMARY + "counted p-1_ 5 4\ncounted p-2_ 4 4\n")
    info, threads = read_wrk_result(result)
    assert info["counted"] and sum(t[1] for t in threads.values()) == 8


@pytest.mark.parametrize(
    "lines",
    [
        "thread r-1_ 5 4 1,4\n",  # 5 sent, 2 not acknowledged, yet 4 acknowledged: the script is wrong
        "thread r-1_ 5 3 1,4\ncounted r-2_ 4 4\n",  # half the threads accounted, half counted
        "thread r-1_ 5 3 1,4\nstray r-1_ 2\n",  # answers that named none of its requests: no echo
    ],
)
def test_an_accounting_that_does_not_add_up_stops_the_run(tmp_path: Path, lines: str) -> None:
    result = tmp_path / "wrk.txt"
    result.write_text(SUMMARY + lines)
    with pytest.raises(RuntimeError):
        read_wrk_result(result)
