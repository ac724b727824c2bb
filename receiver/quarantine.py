"""Refused requests on their way to the quarantine table: every one counted, bodies within bounds.

Each worker journals a record per refusal; the writer stores it, counts it in
``quarantine_counts`` in the same transaction, and keeps the table to its newest
``RECEIVER_QUARANTINE_MAX_ROWS`` rows. A flood of garbage must not fill the journal that holds
the good events (a full journal answers 503), so the bodies journaled are bounded, per worker:

- per kind (application, endpoint, error), at most ``RECEIVER_QUARANTINE_BODIES_PER_SECOND``
  records with a body, in bursts of up to 10 seconds' worth (a batch of 50 rejected items is
  kept whole);
- none while the journal's backlog is over half its bound (PostgreSQL slow or away).

A refusal over those bounds is counted here and, within a second, journaled as one small record
per kind carrying the count: the counts stay exact, and the journal takes at most one such
record per kind and second. Only refusals met by a full or closed journal are lost, and those
are counted in the metric ``receiver_quarantine_lost``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from . import metrics, records
from .journal.appender import Journal, JournalUnavailable

log = structlog.get_logger(__name__)

Kind = tuple[int | None, str, str]  # application id, endpoint, error
BURST_SECONDS = 10.0


@dataclass(slots=True)
class _Unkept:
    count: int
    first_at: float
    last_at: float
    reason: str


class Quarantine:
    def __init__(
        self,
        journal: Journal,
        *,
        bodies_per_second: float,
        flush_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.journal = journal
        self.rate = bodies_per_second
        self.burst = max(1.0, bodies_per_second * BURST_SECONDS)
        self.flush_seconds = flush_seconds
        self.clock = clock
        self._buckets: dict[Kind, tuple[float, float]] = {}  # tokens, when last refilled
        self._unkept: dict[Kind, _Unkept] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(
        self,
        application_id: int | None,
        endpoint: str,
        received_at: float,
        error: str,
        detail: object,
        content_type: str | None,
        raw: bytes,
        *,
        body_bytes: int | None = None,
    ) -> None:
        """Journal one refusal, or count it for the next summary. Never blocks, never raises."""
        kind = (application_id, endpoint, error)
        reason = self._no_body(kind)
        if reason is None:
            payload = records.quarantine(
                application_id, endpoint, received_at, error, detail, content_type, raw, body_bytes=body_bytes
            )
            self._append(payload, kind, 1)
            return
        metrics.QUARANTINE_BODIES_NOT_KEPT.labels(reason).inc()
        unkept = self._unkept.get(kind)
        if unkept is None:
            self._unkept[kind] = _Unkept(1, received_at, received_at, reason)
        else:
            unkept.count += 1
            unkept.first_at = min(unkept.first_at, received_at)
            unkept.last_at = max(unkept.last_at, received_at)
            unkept.reason = reason
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.flush_seconds, self.flush)

    def flush(self) -> None:
        """Journal the counts of refusals whose bodies were not kept (every second, and at shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        unkept, self._unkept = self._unkept, {}
        for kind, u in unkept.items():
            application_id, endpoint, error = kind
            detail = {"bodies_not_kept": u.reason}
            payload = records.quarantine_count(application_id, endpoint, error, u.count, u.first_at, u.last_at, detail)
            self._append(payload, kind, u.count)

    def _no_body(self, kind: Kind) -> str | None:
        """Why this refusal's body is not kept, or None to keep it."""
        journal = self.journal
        if journal.queued_bytes > journal.max_bytes // 2:
            return "journal_filling"
        if self.rate <= 0:
            return "rate_limit"
        now = self.clock()
        tokens, then = self._buckets.get(kind, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens < 1:
            self._buckets[kind] = (tokens, now)
            return "rate_limit"
        self._buckets[kind] = (tokens - 1, now)
        return None

    def _append(self, payload: bytes, kind: Kind, count: int) -> None:
        try:
            durable = self.journal.append_nowait(payload)
        except (JournalUnavailable, ValueError) as error:
            self._lost(kind, count, error)
            return
        # A write or sync that fails later (disk full, I/O error) fails this future, which no
        # request awaits: count what it held as lost then.
        def settled(done: asyncio.Future[None]) -> None:
            if not done.cancelled() and done.exception() is not None:
                self._lost(kind, count, done.exception())

        durable.add_done_callback(settled)

    @staticmethod
    def _lost(kind: Kind, count: int, error: BaseException | None) -> None:
        metrics.QUARANTINE_LOST.inc(count)
        log.warning("quarantine.lost", endpoint=kind[1], error=kind[2], refusals=count, reason=str(error))
