"""Scheduling groups: the writer lowers a session's autogroup, and tries again while the kernel
defers the change (for a process that is not root it takes one such change a tenth of a second,
machine-wide, and says EAGAIN meanwhile)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
from collections.abc import Iterator

import pytest
from support import autogroup_nice

from receiver import writer_process


@pytest.fixture
def session_leader() -> Iterator[int]:
    """A process that leads a session of its own, as the writer and each PostgreSQL backend do."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield proc.pid
    proc.kill()
    proc.wait()


def test_a_session_leaders_group_goes_to_niceness_19(session_leader: int) -> None:
    assert autogroup_nice(session_leader) == "0"
    assert writer_process.lower_autogroup(session_leader)
    assert autogroup_nice(session_leader) == "19"


def test_a_process_in_someone_elses_session_keeps_its_group() -> None:
    # A child of a session leader shares the leader's group (as a process under a terminal does):
    # lowering it would lower everyone in the session.
    leader = subprocess.Popen(
        ["sh", "-c", "sleep 60 & echo $!; wait"], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert leader.stdout is not None
        member = int(leader.stdout.readline())
        assert writer_process.lower_autogroup(member)
        assert autogroup_nice(member) == autogroup_nice(leader.pid) == "0"
    finally:
        os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()


def refusing(monkeypatch: pytest.MonkeyPatch, *errors: int) -> list[int]:
    """The kernel's answers to the next writes, one errno each (then success); the pids written."""
    written: list[int] = []
    answers = list(errors)

    def write(pid: int, nice: int) -> None:
        written.append(pid)
        if answers:
            raise OSError(answers.pop(0), "refused")

    monkeypatch.setattr(writer_process, "_write_autogroup", write)
    return written


def test_a_deferred_change_is_tried_again(monkeypatch: pytest.MonkeyPatch, session_leader: int) -> None:
    written = refusing(monkeypatch, errno.EAGAIN, errno.EAGAIN)
    assert writer_process.lower_autogroup(session_leader, pause=0)
    assert written == [session_leader] * 3


def test_a_change_deferred_every_time_gives_up(monkeypatch: pytest.MonkeyPatch, session_leader: int) -> None:
    written = refusing(monkeypatch, *[errno.EAGAIN] * 10)
    assert not writer_process.lower_autogroup(session_leader, pause=0)
    assert len(written) == writer_process.AUTOGROUP_TRIES


def test_a_group_not_ours_is_left_at_once(monkeypatch: pytest.MonkeyPatch, session_leader: int) -> None:
    written = refusing(monkeypatch, errno.EPERM, errno.EPERM)
    assert writer_process.lower_autogroup(session_leader, pause=0)
    assert written == [session_leader]
