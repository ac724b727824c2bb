"""Prometheus metrics (``GET /metrics``), added up over every worker process.

Under ``receiver serve`` the workers run in multiprocess mode (``receiver.metrics_dir`` sets the
shared folder before they start): each one writes its values to memory-mapped files, and the
worker that answers ``/metrics`` reads all of them. Counters and histograms of a worker that
died stay counted; its gauges go (``mark_process_dead``: at its shutdown, and for workers that
were killed, at the next scrape). Without that folder (the tests, the app run in-process) the
values are this process's own.

Every update here is O(1): a dictionary look-up and a write to a memory-mapped file.

What is stored in PostgreSQL (status reports by status, replies, blacklist changes) is counted
when the transaction that stores it commits, never before: a batch the writer retries after a
failure is not counted twice (:func:`on_commit`).
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .journal import envelope
from .metrics_dir import ENV
from .procs import alive

if TYPE_CHECKING:
    from .blacklist.rules import Diff
    from .journal.reader import Batch, JournalReader

# The library chose its mode when first imported: trust that, not the environment now.
MULTIPROCESS = values.ValueClass is not values.MutexValue

# --- HTTP ------------------------------------------------------------------------------------

REQUESTS = Counter(
    "receiver_http_requests",
    "HTTP requests answered, by route template (never the raw path: it holds the token) and status code",
    ["endpoint", "code"],
)
ACK_SECONDS = Histogram(
    "receiver_callback_ack_seconds",
    "Callbacks answered 2xx: time from the request's arrival to the answer (the event is durable by then)",
    ["endpoint"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

# --- journal and writer ----------------------------------------------------------------------

JOURNAL_BACKLOG = Gauge(
    "receiver_journal_backlog_bytes",
    "Journal bytes acknowledged but not yet in PostgreSQL, every worker's (as the writer last read them)",
    multiprocess_mode="livesum",
)
JOURNAL_OLDEST = Gauge(
    "receiver_journal_oldest_age_seconds",
    "Age of the oldest journal record not yet in PostgreSQL (0 when drained), as the writer last read them",
    multiprocess_mode="livemax",
)
JOURNAL_MAX = Gauge(
    "receiver_journal_max_bytes",
    "Per worker: backlog at which callbacks get 503 (RECEIVER_JOURNAL_MAX_BYTES)",
    multiprocess_mode="livemax",
)
BATCH_RECORDS = Histogram(
    "receiver_writer_batch_records",
    "Journal records per committed writer transaction (its _sum: records stored, duplicates included)",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000),
)
WRITER_LAG = Histogram(
    "receiver_writer_lag_seconds",
    "At each commit: time since the newest record of the batch was received",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0),
)
WRITER_RESTED = Counter(
    "receiver_writer_rested_seconds",
    "Time the writer rested between stores to leave the CPUs to the acknowledgements (a burst)",
)
DATABASE_ERRORS = Counter(
    "receiver_database_errors",
    "PostgreSQL failures: writer (a batch failed, retried later), poison (a record refused for its data,"
    " quarantined), query (a /v1 call got 503)",
    ["stage"],
)

# --- events ----------------------------------------------------------------------------------

STATUS_REPORTS = Counter(
    "receiver_status_reports",
    "Distinct status reports stored, by status (upper case; unusual or too many distinct codes: 'other')",
    ["status"],
)
UPLINKS = Counter("receiver_uplinks", "Distinct replies (uplink SMS) stored")
BLACKLIST_CHANGES = Counter(
    "receiver_blacklist_changes",
    "Blacklist entries added or removed, by source: keyword (an unsubscribe reply: an opt-out), platform"
    " (a blacklist status code), manual",
    ["action", "source"],
)
BLACKLIST_CHECKS = Counter(
    "receiver_blacklist_checks",
    "POST /v1/blacklist/check answered, by what answered: memory (the worker's copy of the blacklist)"
    " or database (the copy loading, applying a change, out of touch, or off: RECEIVER_BLACKLIST_MIRROR)",
    ["answered_by"],
)

# --- delivery states over time, and sends after an opt-out ----------------------------------------

UNREPORTED = Counter(
    "receiver_messages_unreported",
    "Registered sends marked unreported: no delivered or failed state once RECEIVER_REPORT_WINDOW"
    " (72 h) after their createTime had passed (counted by the sweep that marks them)",
)
SENDS_AFTER_OPTOUT = Counter(
    "receiver_sends_after_optout",
    "Registered sends found to have gone to a number blacklisted, for their channel, at their createTime",
)
STUCK_PENDING = "receiver_messages_stuck_pending"
STUCK_PENDING_HELP = (
    "Registered sends pending longer than RECEIVER_STUCK_PENDING_AFTER but inside their report window,"
    " by application (the send's, else the one listing its channel; empty: none) and channel; read from PostgreSQL"
    " at each scrape (absent when it does not answer)"
)
MAX_STUCK_LABELS = 200  # label pairs per scrape: the largest counts


def stuck_pending_text(rows: Sequence[tuple[str, str, int]]) -> bytes:
    """The stuck-pending gauge's exposition, from :func:`receiver.correlation.sweep.stuck_pending`."""
    family = GaugeMetricFamily(STUCK_PENDING, STUCK_PENDING_HELP, labels=["application", "channel"])
    for application, channel, messages in rows:
        family.add_metric([application, channel], messages)
    registry = CollectorRegistry()
    registry.register(_Collected(family))  # values in memory only: no multiprocess file
    return generate_latest(registry)


class _Collected(Collector):
    def __init__(self, family: GaugeMetricFamily) -> None:
        self.family = family

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield self.family


def sends_after_optout(n: int) -> None:
    """Counted when the enclosing transaction commits."""
    if n:
        later(lambda: SENDS_AFTER_OPTOUT.inc(n))


# --- refusals and slow clients -------------------------------------------------------------------

QUARANTINED = Counter(
    "receiver_quarantined",
    "Refused requests (and rejected batch items) counted in quarantine_counts, by endpoint and error;"
    " counted when stored, once, whether or not their bodies were kept",
    ["endpoint", "error"],
)
QUARANTINE_BODIES_NOT_KEPT = Counter(
    "receiver_quarantine_bodies_not_kept",
    "Refusals journaled as a count only, without their body: rate_limit"
    " (RECEIVER_QUARANTINE_BODIES_PER_SECOND) or journal_filling (backlog over half its bound)",
    ["reason"],
)
QUARANTINE_LOST = Counter(
    "receiver_quarantine_lost",
    "Refusals neither stored nor counted in PostgreSQL: the journal was full or closed",
)
QUARANTINE_TRIMMED = Counter(
    "receiver_quarantine_trimmed",
    "Quarantine rows deleted to keep the table to RECEIVER_QUARANTINE_MAX_ROWS (their counts stay)",
)
CLIENT_CLOSED = Counter(
    "receiver_http_connections_closed",
    "Connections the server closed on a client: timeout_request (headers not complete in time, or"
    " nothing sent), timeout_body, timeout_response (the client did not read our answer),"
    " headers_too_large, bad_request (not HTTP)",
    ["reason"],
)


# --- the callback path's own counts --------------------------------------------------------------


class Tally:
    """Callback requests (``receiver_http_requests`` by code, ``receiver_callback_ack_seconds``)
    counted in plain process memory, a dictionary update per request, and added to the
    Prometheus values (which workers share through files) at most a second later and before
    each scrape this worker answers: every update of those costs a lock and a write to a
    memory-mapped file, several per request."""

    def __init__(self, flush_after: float = 1.0) -> None:
        self.flush_after = flush_after
        self._codes: collections.Counter[tuple[str, int]] = collections.Counter()
        self._acks: dict[str, tuple[list[int], list[float]]] = {}  # endpoint -> per-bucket counts, [sum]
        self._bounds = [*ACK_SECONDS._upper_bounds]
        self._timer: asyncio.TimerHandle | None = None

    def count(self, endpoint: str, code: int, seconds: float | None) -> None:
        self._codes[(endpoint, code)] += 1
        if seconds is not None:
            ack = self._acks.get(endpoint)
            if ack is None:
                ack = self._acks[endpoint] = ([0] * len(self._bounds), [0.0])
            ack[0][bisect.bisect_left(self._bounds, seconds)] += 1
            ack[1][0] += seconds
        if self._timer is None:
            with contextlib.suppress(RuntimeError):  # no running loop: flushed at the next scrape
                self._timer = asyncio.get_running_loop().call_later(self.flush_after, self.flush)

    def flush(self) -> None:
        self._timer = None
        codes, self._codes = self._codes, collections.Counter()
        acks, self._acks = self._acks, {}
        for (endpoint, code), n in codes.items():
            REQUESTS.labels(endpoint, str(code)).inc(n)
        for endpoint, (buckets, total) in acks.items():
            _add_observations(ACK_SECONDS.labels(endpoint), buckets, total[0])


def _add_observations(histogram: Histogram, buckets: list[int], total: float) -> None:
    """Add counted observations to a histogram child: what ``observe()`` does one at a time.
    prometheus_client has no public call for it; tests/test_observability.py checks that this
    and ``observe()`` still give the same exposition."""
    histogram._sum.inc(total)
    for value, n in zip(histogram._buckets, buckets, strict=True):
        if n:
            value.inc(n)


TALLY = Tally()


# --- status labels: bounded, whatever the network sends ----------------------------------------

_STATUS_SHAPE = re.compile(r"[A-Z0-9][A-Z0-9:_-]{0,6}")  # DELIVRD, E200027, MK:0036, RTE_ERR, 1, 24 ...
MAX_STATUS_LABELS = 100  # per process
_statuses: set[str] = set()


def status_label(status: str | None) -> str:
    """The label for a status code: the code itself (stripped, upper case) when it has the shape of
    one (1 to 7 letters, digits, ``:``, ``_``, ``-``) and fewer than :data:`MAX_STATUS_LABELS`
    distinct codes were seen before it; ``other`` otherwise. The status is an open string from
    the network: unbounded labels would grow every scrape and the files behind them."""
    code = status.strip().upper() if status else ""
    if code in _statuses:
        return code
    if len(_statuses) >= MAX_STATUS_LABELS or not _STATUS_SHAPE.fullmatch(code):
        return "other"
    _statuses.add(code)
    return code


# --- counted at commit -------------------------------------------------------------------------

_pending: ContextVar[list[Callable[[], None]] | None] = ContextVar("receiver_metrics_pending", default=None)


@contextlib.contextmanager
def on_commit() -> Iterator[None]:
    """Hold back the updates made by :func:`later` inside the block; apply them only if the block
    ends without an exception (for the writer: the transaction committed)."""
    pending: list[Callable[[], None]] = []
    token = _pending.set(pending)
    try:
        yield
    finally:
        _pending.reset(token)
    for update in pending:
        update()


def later(update: Callable[[], None]) -> None:
    """Apply ``update`` when the enclosing :func:`on_commit` block succeeds (at once outside one)."""
    pending = _pending.get()
    if pending is None:
        update()
    else:
        pending.append(update)


async def after_insert(
    conn: asyncpg.Connection, new_reports: list[asyncpg.Record], new_uplinks: list[asyncpg.Record]
) -> None:
    """The writer's step: count the events inserted now (a duplicate inserts nothing)."""
    statuses = collections.Counter(status_label(row["status"]) for row in new_reports)
    uplinks = len(new_uplinks)

    def update() -> None:
        for label, n in statuses.items():
            STATUS_REPORTS.labels(label).inc(n)
        if uplinks:
            UPLINKS.inc(uplinks)

    later(update)


def blacklist_changed(changes: Diff) -> None:
    if not changes.history:
        return
    counts = collections.Counter((change.action, change.entry.source) for change in changes.history)

    def update() -> None:
        for (action, source), n in counts.items():
            BLACKLIST_CHANGES.labels(action, source).inc(n)

    later(update)


# --- the writer's view of the journal ----------------------------------------------------------


def received_at(payload: bytes) -> float | None:
    """A journal record's receipt time (unix seconds)."""
    at = envelope.received_at(payload)
    if at is not None:
        return at
    try:
        return float(json.loads(payload)["at"])  # a version 1 record
    except (ValueError, KeyError, TypeError):
        return None


def journal_state(reader: JournalReader, batch: Batch) -> None:
    """Backlog and age of the oldest record not yet stored; ``batch`` is what the writer read
    next, empty when the journal is drained."""
    JOURNAL_BACKLOG.set(reader.backlog_bytes)
    oldest = received_at(batch.payloads[0]) if batch.payloads else None
    JOURNAL_OLDEST.set(max(0.0, time.time() - oldest) if oldest is not None else 0.0)


def batch_stored(payloads: Sequence[bytes]) -> None:
    BATCH_RECORDS.observe(len(payloads))
    newest = received_at(payloads[-1]) if payloads else None
    if newest is not None:
        WRITER_LAG.observe(max(0.0, time.time() - newest))


# --- /metrics ----------------------------------------------------------------------------------

_registry: CollectorRegistry | None = None


def render() -> tuple[bytes, str]:
    """The exposition text, over every worker in multiprocess mode. Blocking file reads: call it
    off the event loop."""
    global _registry
    if not MULTIPROCESS:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    reap_dead_workers()
    if _registry is None:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        _registry = registry
    return generate_latest(_registry), CONTENT_TYPE_LATEST


_LIVE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


def reap_dead_workers() -> list[int]:
    """Drop the gauges of workers that died without saying so (``kill -9``, OOM killer): their
    counters and histograms stay, as they must."""
    folder = os.environ.get(ENV)
    if not MULTIPROCESS or not folder:
        return []
    dead = set()
    for path in Path(folder).glob("gauge_live*_*.db"):
        match = _LIVE_FILE.fullmatch(path.name)
        if match and not alive(int(match.group(1))):
            dead.add(int(match.group(1)))
    for pid in dead:
        multiprocess.mark_process_dead(pid, folder)
    return sorted(dead)


def worker_stopped() -> None:
    """A worker's last word: its gauges stop counting."""
    folder = os.environ.get(ENV)
    if MULTIPROCESS and folder:
        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(os.getpid(), folder)
