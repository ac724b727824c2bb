"""How the writer gives the CPU to the acknowledgements during a burst.

The writer process runs in Linux's SCHED_IDLE class, beside the workers: it gets a CPU only
when no worker wants it. Its PostgreSQL backend does not follow it there on every system: with
autogroups on (``kernel.sched_autogroup_enabled``, the default of many distributions) each
backend is a scheduling group of its own, weighed like all the workers together, so a batch the
writer hands over takes a CPU from the acknowledgements for as long as PostgreSQL works on it.

So the writer watches its own scheduler statistics: while it waits for a CPU for most of the
time it wants one (the workers are keeping the CPUs busy), it stores at most ``busy_share`` of
the time, resting after each store in proportion to how long the store took. The journal holds
the rest durably; once the burst is over the writer waits for nobody and stores at full speed.
A backlog past ``max_backlog_bytes`` is stored at full speed whatever the CPUs do: resting must
never bring the journal's bound (and its ``503``) nearer. The journal fills while the writer
rests, so a rest ends as soon as the backlog passes it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

SCHEDSTAT = Path("/proc/thread-self/schedstat")  # ns on a CPU, ns waiting for one, slices


def schedstat(path: Path = SCHEDSTAT) -> tuple[int, int] | None:
    """Nanoseconds this thread has run and waited on a run queue, or None where the system
    does not say (not Linux, or schedstats unavailable)."""
    try:
        ran, waited, _slices = path.read_text().split()
        return int(ran), int(waited)
    except (OSError, ValueError):
        return None


class Pacing:
    """Decides, after each store, how long the writer rests before the next one."""

    # A store while the writer waited for a CPU more than this share of the time it wanted one
    # counts as contended: the acknowledgements want the CPUs.
    CONTENDED = 0.5

    def __init__(
        self,
        busy_share: float,
        max_backlog_bytes: int,
        stats: Callable[[], tuple[int, int] | None] = schedstat,
    ) -> None:
        self.busy_share = busy_share
        self.max_backlog_bytes = max_backlog_bytes
        self._stats = stats
        self._last = stats()

    def contention(self) -> float:
        """The share of the time since the last call that this thread, wanting a CPU, waited
        for one (0 where the system does not say)."""
        now = self._stats()
        last, self._last = self._last, now
        if now is None or last is None:
            return 0.0
        ran, waited = now[0] - last[0], now[1] - last[1]
        return waited / (ran + waited) if ran + waited > 0 else 0.0

    def rest(self, store_seconds: float, backlog_bytes: int) -> float:
        """Seconds to rest after a store that took ``store_seconds``, with ``backlog_bytes``
        still in the journal."""
        contended = self.contention() > self.CONTENDED
        if not contended or not self.may_rest(backlog_bytes):
            return 0.0
        return store_seconds * (1 - self.busy_share) / self.busy_share

    def may_rest(self, backlog_bytes: int) -> bool:
        """Whether the writer may rest (begin a rest, or go on with one) with ``backlog_bytes``
        in the journal."""
        return self.busy_share < 1 and backlog_bytes < self.max_backlog_bytes
