"""The batched log writer: lines leave the process without a write per line, in any process."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from pathlib import Path

import pytest
from support import wait_for

from receiver import logs
from receiver.logs import BatchedWriter


def _wait_for(path: Path, text: bytes) -> bytes:
    wait_for(lambda: text in path.read_bytes(), timeout=5, interval=0.01)
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


def test_a_fork_while_the_writer_is_blocked_leaves_the_child_free_to_write(tmp_path: Path) -> None:
    """The parent's thread may be inside a write that blocks (a full pipe) when the process
    forks: the child must not inherit its lock held, nor the lines the parent still owes."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    with contextlib.suppress(BlockingIOError):
        while True:  # fill the pipe: the writer thread's next write blocks, its lock held
            os.write(write_end, b"." * 4096)
    os.set_blocking(write_end, True)
    writer = BatchedWriter(write_end, interval=0.01)
    writer.msg(b"parent")
    time.sleep(0.2)
    pid = os.fork()
    if pid == 0:  # the child: a line, and the flush its exit runs (atexit)
        writer.msg(b"child")
        writer.flush()
        os._exit(0)
    data, exited = b"", False
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not exited:
        if select.select([read_end], [], [], 0.05)[0]:
            data += os.read(read_end, 1 << 16)
        exited = os.waitpid(pid, os.WNOHANG)[0] != 0
    if not exited:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    while select.select([read_end], [], [], 0.2)[0] and (chunk := os.read(read_end, 1 << 16)):
        data += chunk
    os.close(read_end)
    assert exited, "the child hung at exit"
    assert data.replace(b".", b"").split() == [b"parent", b"child"]  # each line once


def test_a_log_file_is_handed_to_the_disk_every_mebibyte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Left to the kernel, a log file's pages go to the disk 30 seconds after they were written,
    all at once, and the journal's syncs on that disk wait behind them: the writer has the
    kernel start writing them every MiB instead. Not for a pipe: nothing there to write back."""
    started: list[int] = []
    monkeypatch.setattr(logs, "start_write_back", started.append)
    line = b"x" * 1023  # with its newline, 1 KiB
    out = tmp_path / "log"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    read_end, write_end = os.pipe()
    try:
        to_file, to_pipe = BatchedWriter(fd), BatchedWriter(write_end)
        for _ in range(3):
            for _ in range(341):
                to_file.msg(line)
            to_file.flush()
        assert started == [], "nothing before a MiB"
        to_file.msg(line)
        to_file.flush()
        assert started == [fd]
        for _ in range(2048):
            to_file.msg(line)
            to_file.flush()
        assert started == [fd] * 3
        assert out.stat().st_size == (3 * 341 + 1 + 2048) * 1024
        for _ in range(60):
            to_pipe.msg(line)
            to_pipe.flush()
            os.read(read_end, 1 << 16)
        assert started == [fd] * 3
    finally:
        os.close(fd)
        os.close(read_end)
        os.close(write_end)


def test_the_kernel_is_asked_to_write_a_file_back(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT)
    read_end, write_end = os.pipe()
    try:
        os.write(fd, b"x" * (1 << 20))
        assert logs.start_write_back(fd)
        assert not logs.start_write_back(write_end)
    finally:
        for each in (fd, read_end, write_end):
            os.close(each)
