"""Processes by pid, and a worker's place among them."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def alive(pid: int) -> bool:
    """True while a process with this pid exists (ours or another user's)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (the state first, then the
    parent's pid, ...); None where the process is gone or the system does not say."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def parent(pid: int) -> int | None:
    """The parent of ``pid`` (None when it is gone)."""
    fields = stat_fields(pid)
    return int(fields[1]) if fields else None


def started_at(pid: int) -> float | None:
    """When ``pid`` started, in seconds since the epoch (to the kernel's tick, 10 ms): its start
    after boot taken from now, on the clock that counts from boot. None when it is gone or the
    system does not say."""
    try:
        fields = stat_fields(pid)
        if not fields:
            return None
        since_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - since_boot)
    except (OSError, IndexError, ValueError, AttributeError):  # no CLOCK_BOOTTIME (not Linux), a name not text
        return None


def own_session(parent: int) -> None:
    """Move this process (a worker its supervisor spawned) into a session of its own, bound to
    ``parent``'s life; where it cannot (not Linux, no death signal, already a group leader) it
    stays where it is.

    Under Linux's autogroups (``kernel.sched_autogroup_enabled``) a session is a scheduling
    group, and the scheduler shares a CPU between groups before it looks at the processes in
    them: workers that share their supervisor's session share one group's weight between them,
    against the whole weight of each PostgreSQL backend (each in a session of its own). Out of
    the supervisor's session, no terminal's Ctrl-C and no signal to its process group reaches
    this process any more, so it asks the kernel for SIGTERM (a graceful stop: what it
    acknowledged is in its journal) when the supervisor dies, however it dies."""
    if not sys.platform.startswith("linux"):
        return
    # The death signal first: without it (a sandbox that refuses prctl), leaving the group
    # could leave an orphan, so the worker stays where it is.
    try:
        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the request above: nobody would tell us
        os.kill(os.getpid(), signal.SIGTERM)
        return
    with contextlib.suppress(OSError):
        os.setsid()
