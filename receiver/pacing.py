"""How the writer gives the CPU to the acknowledgements during a burst.

The writer process runs in Linux's SCHED_IDLE class, beside the workers: it should get a CPU
only when no worker wants it. Its PostgreSQL backend does not follow it there on every system:
with autogroups on (``kernel.sched_autogroup_enabled``, the default of many distributions) each
backend is a scheduling group of its own, weighed like all the workers together, so a batch the
writer hands over takes a CPU from the acknowledgements for as long as PostgreSQL works on it.
And even lowered, the writer and its backend delay a waking worker by up to a millisecond or
two at a time: measured on a 2-core machine, a ping-pong of two ordinary processes had a p99 of
0.2 ms alone and 0.5-0.9 ms beside a SCHED_IDLE pair (docs/performance.md, "It rests while
the others keep the CPUs busy"). Requests queue behind each such delay for as long as a store
lasts.

So the writer watches two signals after each store. It is contended when it waited for a CPU
for most of the time it wanted one, or when the other processes of the machine left fewer than
one and a half CPUs idle (``/proc/stat``, less the writer's and its backend's own CPU time):
the workers are busy, and a store would take the CPU a waking worker needs. While contended it
stores at most ``busy_share`` of the time, resting after each store in proportion to how long
the store took, and in small batches (``CONTENDED_BATCH`` records), so that a store holds a CPU for milliseconds, not for the second a batch grown with
the backlog takes. The journal holds the rest durably; once the burst is over the writer waits
for nobody and stores at full speed, in batches as large as the backlog allows. A backlog past
``max_backlog_bytes`` is stored at full speed whatever the CPUs do: resting must never bring
the journal's bound (and its ``503``) nearer. The journal fills while the writer rests, so a
rest ends as soon as the backlog passes it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from .procs import stat_fields

SCHEDSTAT = Path("/proc/thread-self/schedstat")  # ns on a CPU, ns waiting for one, slices
PROC_STAT = Path("/proc/stat")  # the machine's CPU time, in clock ticks
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def schedstat(path: Path = SCHEDSTAT) -> tuple[int, int] | None:
    """Nanoseconds this thread has run and waited on a run queue, or None where the system
    does not say (not Linux, or schedstats unavailable)."""
    try:
        ran, waited, _slices = path.read_text().split()
        return int(ran), int(waited)
    except (OSError, ValueError):
        return None


def _own_seconds() -> float:
    times = os.times()
    return times.user + times.system


def process_seconds(pid: int) -> float:
    """CPU seconds a process of this machine has used; 0 where the system does not say."""
    fields = stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / _TICKS if fields else 0.0  # utime, stime


class OthersBusy:
    """The share of the machine's CPU time that the other processes used since the last
    reading: every CPU's busy time (``/proc/stat``) less this process's and its helpers' (the
    writer's local PostgreSQL backend). None where the system does not say.

    The kernel counts in clock ticks (100 a second): a reading covers at least ``window``
    seconds, and a call sooner gives the last reading again, so that a short store's few ticks
    do not decide."""

    def __init__(
        self,
        helpers: Callable[[], Iterable[int]] = tuple,
        *,
        stat: Path = PROC_STAT,
        own: Callable[[], float] = _own_seconds,
        window: float = 0.25,
    ) -> None:
        self.helpers = helpers
        self.stat = stat
        self.own = own
        self.window = window
        self._last = self._sample()
        self._at = time.monotonic()
        self._share: float | None = None

    def _sample(self) -> tuple[float, float, float] | None:
        try:
            line = self.stat.read_text().split("\n", 1)[0].split()
            # user nice system idle iowait irq softirq steal (guest time is inside user)
            ticks = [int(value) for value in line[1:9]]
        except (OSError, ValueError):
            return None
        if not line or line[0] != "cpu" or len(ticks) < 5:
            return None
        total = sum(ticks) / _TICKS
        busy = total - (ticks[3] + ticks[4]) / _TICKS
        return total, busy, self.own() + sum(process_seconds(pid) for pid in self.helpers())

    def restart(self, assume: float | None) -> None:
        """Begin a new reading now; until it covers ``window`` seconds, the share is ``assume``."""
        self._last = self._sample()
        self._at = time.monotonic()
        self._share = assume

    def __call__(self) -> float | None:
        if time.monotonic() - self._at < self.window:
            return self._share
        now = self._sample()
        last, self._last, self._at = self._last, now, time.monotonic()
        if now is None or last is None or now[0] <= last[0]:
            self._share = None
        else:
            self._share = max(0.0, (now[1] - last[1]) - (now[2] - last[2])) / (now[0] - last[0])
        return self._share


class Pacing:
    """Decides, after each store, how long the writer rests before the next one."""

    # A store while the writer waited for a CPU more than this share of the time it wanted one
    # counts as contended: the acknowledgements want the CPUs.
    CONTENDED = 0.5
    # So does a store while the other processes left fewer than this many CPUs idle: a store
    # keeps about one busy (the writer and its backend in turn), and the workers' wakeups need
    # a free one at once.
    SPARE_CPUS = 1.5
    # While contended, a store takes at most this many records: a few milliseconds of the
    # writer's and its backend's CPU (about 90 µs a report), the longest a worker waits for it.
    CONTENDED_BATCH = 100

    def __init__(
        self,
        busy_share: float,
        max_backlog_bytes: int,
        stats: Callable[[], tuple[int, int] | None] = schedstat,
        others: Callable[[], float | None] | None = None,
        cpus: int | None = None,
    ) -> None:
        self.busy_share = busy_share
        self.max_backlog_bytes = max_backlog_bytes
        self._stats = stats
        self._others = others
        cpus = cpus or os.cpu_count() or 1
        self.others_busy = max(0.0, 1 - self.SPARE_CPUS / cpus)  # the others' share that counts as busy
        self._last = stats()
        self.contended = False  # as of the last store

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
        waited = self.contention() > self.CONTENDED
        others = self._others() if self._others is not None else None
        self.contended = waited or (others is not None and others > self.others_busy)
        if not self.contended or not self.may_rest(backlog_bytes):
            return 0.0
        return store_seconds * (1 - self.busy_share) / self.busy_share

    def burst_begins(self) -> None:
        """The writer found records after finding none: the CPUs count as busy (small stores,
        rests) until a reading of the other processes covers the time since, so that the first
        stores of a burst are not sized by the quiet before it."""
        self.contended = True
        if isinstance(self._others, OthersBusy):
            self._others.restart(assume=1.0)

    def batch_limit(self, limit: int, backlog_bytes: int) -> int:
        """The most records the next store may take, ``limit`` being the writer's own choice."""
        if self.contended and self.may_rest(backlog_bytes):
            return min(limit, self.CONTENDED_BATCH)
        return limit

    def may_rest(self, backlog_bytes: int) -> bool:
        """Whether the writer may rest (begin a rest, or go on with one) with ``backlog_bytes``
        in the journal."""
        return self.busy_share < 1 and backlog_bytes < self.max_backlog_bytes
