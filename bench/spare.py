"""What a journal's next segment, zero-filled ahead, costs the syncs of the journal meanwhile.

    .venv/bin/python -m bench.spare [--rounds 8] [--dir FOLDER]

A thread appends 400 bytes and ``fdatasync``s, every half millisecond, as a worker's syncer does
under load, while a segment of 8 MiB is zero-filled beside it on the same disk: written whole and
then synced (the way it was), or a piece at a time with ``O_DSYNC`` (``appender.zero_fill``, the
way it is). Prints, per round, how long the fill took and the syncs' p50, p99 and slowest while
it ran (and 0.3 s after), alternating the two. ``--dir`` picks the disk (default: a folder under
``$TMPDIR``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from receiver.journal.appender import zero_fill

SEGMENT = 8 << 20
RECORD = b"x" * 400


def whole(path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        zeros = bytes(1 << 20)
        left = size
        while left > 0:
            left -= os.write(fd, zeros[: min(left, len(zeros))])
        os.fsync(fd)
    finally:
        os.close(fd)


def in_pieces(path: Path, size: int) -> None:
    zero_fill(path, size)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def round_(folder: Path, fill: str) -> tuple[float, list[float]]:
    """One fill beside the syncs: (its milliseconds, the syncs' milliseconds meanwhile)."""
    journal = os.open(folder / "journal", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(journal, bytes(SEGMENT))
    os.fsync(journal)
    spare = folder / "spare"
    os.close(os.open(spare, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    times: list[float] = []
    stop = threading.Event()

    def sync() -> None:
        offset = 0
        while not stop.is_set():
            began = time.perf_counter()
            os.pwrite(journal, RECORD, offset)
            os.fdatasync(journal)
            times.append((time.perf_counter() - began) * 1000)
            offset = (offset + len(RECORD)) % (SEGMENT - len(RECORD))
            time.sleep(0.0005)

    syncer = threading.Thread(target=sync)
    syncer.start()
    try:
        time.sleep(0.5)
        before = len(times)
        began = time.perf_counter()
        (whole if fill == "whole" else in_pieces)(spare, SEGMENT)
        took = (time.perf_counter() - began) * 1000
        time.sleep(0.3)
    finally:
        stop.set()
        syncer.join()
        os.close(journal)
        spare.unlink()
    return took, sorted(times[before:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8, help="rounds of each fill, alternating (default 8)")
    parser.add_argument("--dir", type=Path, help="a folder on the disk to measure")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="receiver-bench-spare-", dir=args.dir))
    try:
        print("fill | fill ms | syncs | sync p50 ms | sync p99 ms | slowest sync ms")
        print("---|---:|---:|---:|---:|---:")
        for _ in range(args.rounds):
            for fill in ("whole", "in pieces"):
                took, times = round_(folder, fill)
                p50, p99 = times[len(times) // 2], times[int(len(times) * 0.99)]
                print(f"{fill} | {took:.0f} | {len(times)} | {p50:.2f} | {p99:.2f} | {times[-1]:.2f}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
