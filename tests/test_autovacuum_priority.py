"""The writer lowers the autovacuum workers of a PostgreSQL server of this machine as it lowers
its own backend: a pass over the day's partitions after a burst would otherwise take a CPU from
the acknowledgements (docs/performance.md, "Its own process, below the workers")."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from receiver import procs, writer_process


def _child(title: str) -> subprocess.Popen[bytes]:
    """A child of this process whose command line reads ``title ...``, as PostgreSQL's do."""
    return subprocess.Popen(["bash", "-c", f'exec -a "{title}" sleep 60'], start_new_session=True)


@pytest.fixture
def children() -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    procs = {
        "autovacuum": _child("postgres: autovacuum worker receiver"),
        "checkpointer": _child("postgres: checkpointer"),
        "backend": _child("postgres: receiver receiver [local] SELECT"),
    }
    for proc in procs.values():  # the exec has happened once the command line says so
        for _ in range(200):
            if Path(f"/proc/{proc.pid}/cmdline").read_bytes().startswith(b"postgres:"):
                break
            os.sched_yield()
    try:
        yield procs
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()


def _lowered(pid: int) -> tuple[int, bool]:
    return os.getpriority(os.PRIO_PROCESS, pid), os.sched_getscheduler(pid) == os.SCHED_IDLE


def test_only_the_autovacuum_workers_among_the_servers_children_are_lowered(
    children: dict[str, subprocess.Popen[bytes]],
) -> None:
    lowered: set[int] = set()
    writer_process.lower_autovacuum(os.getpid(), 19, lowered)
    assert _lowered(children["autovacuum"].pid) == (19, True)
    group = Path(f"/proc/{children['autovacuum'].pid}/autogroup")
    if group.exists():  # a kernel with autogroups: its scheduling group at 19 too
        assert group.read_text().split()[-1] == "19"
    assert lowered == {children["autovacuum"].pid}
    assert _lowered(children["checkpointer"].pid) == (0, False)
    assert _lowered(children["backend"].pid) == (0, False)


def test_a_worker_that_is_gone_is_forgotten(children: dict[str, subprocess.Popen[bytes]]) -> None:
    lowered = {children["autovacuum"].pid, 999_999_999}
    writer_process.lower_autovacuum(os.getpid(), 19, lowered)
    assert lowered == {children["autovacuum"].pid}


def test_a_process_started_now_says_it_started_now() -> None:
    before = time.time()
    child = subprocess.Popen(["sleep", "5"])
    try:
        started = procs.started_at(child.pid)
        assert started is not None and before - 0.1 <= started <= time.time() + 0.1  # to the kernel's tick
    finally:
        child.kill()
        child.wait()
    assert procs.started_at(999_999_999) is None


def test_the_parent_of_a_process_and_of_none() -> None:
    assert procs.parent(os.getpid()) == os.getppid()
    assert procs.parent(999_999_999) is None
    writer_process.lower_autovacuum(None, 19, set())  # no server of this machine: nothing to do
