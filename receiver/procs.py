"""Processes by pid."""

from __future__ import annotations

import os


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
