"""The batched log writer: lines leave the process without a write per line, in any process."""

from __future__ import annotations

import os
import time
from pathlib import Path

from receiver.logs import BatchedWriter


def _wait_for(path: Path, text: bytes, timeout: float = 5.0) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = path.read_bytes()
        if text in data:
            return data
        time.sleep(0.01)
    return path.read_bytes()


def test_lines_are_written_by_the_writers_thread_without_a_flush(tmp_path: Path) -> None:
    out = tmp_path / "log"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        writer = BatchedWriter(fd, interval=0.01)
        writer.msg(b'{"event":"one"}')
        writer.msg(b'{"event":"two"}')
        assert _wait_for(out, b"two") == b'{"event":"one"}\n{"event":"two"}\n'
    finally:
        os.close(fd)


def test_a_forked_child_writes_its_lines_with_a_thread_of_its_own(tmp_path: Path) -> None:
    """Threads do not survive a fork: the child starts its own writer thread with its first line
    (else its lines would wait for an exit that never flushes them)."""
    out = tmp_path / "log"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        writer = BatchedWriter(fd, interval=0.01)
        writer.msg(b"parent")  # the parent's thread runs
        assert _wait_for(out, b"parent") == b"parent\n"
        pid = os.fork()
        if pid == 0:  # the child: one line, then exit without atexit handlers (no final flush)
            writer.msg(b"child")
            time.sleep(0.5)
            os._exit(0)
        os.waitpid(pid, 0)
        assert out.read_bytes() == b"parent\nchild\n"
    finally:
        os.close(fd)
