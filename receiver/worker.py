"""What one HTTP worker runs, wired in one place: the journal it acknowledges into, the
applications it knows, the quarantine, the query API's pool, the event hub, the blacklist copy,
and (when the writer is not a process of its own) the writer and the unreported sweep beside it.

:mod:`receiver.http.app` starts a :class:`Worker` in its lifespan and serves from it; the writer
process is wired in :mod:`receiver.writer_process`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
from dataclasses import dataclass

import asyncpg
import structlog

from . import metrics, partitions, procs, writer_process
from .apikeys import KeyCache
from .applications import Registry
from .blacklist import numbers as blacklist_numbers
from .blacklist.mirror import Mirror
from .config import Settings
from .correlation import sweep
from .events.hub import Hub
from .journal import Journal
from .quarantine import Quarantine
from .writer import Writer

log = structlog.get_logger("receiver")


@dataclass(eq=False)
class Worker:
    settings: Settings
    journal: Journal
    pool: asyncpg.Pool
    registry: Registry
    api_keys: KeyCache
    quarantine: Quarantine
    events_hub: Hub
    blacklist_mirror: Mirror | None
    writer: Writer | None  # None: the writer is a process of its own
    _tasks: tuple[asyncio.Task[None], ...] = ()

    @classmethod
    async def start(cls, settings: Settings) -> Worker:
        supervisor = multiprocessing.parent_process()
        if supervisor is not None and supervisor.pid is not None:  # a worker of `receiver serve --workers N`
            procs.own_session(supervisor.pid)
        dsn = settings.database_url
        if not dsn:
            raise RuntimeError("RECEIVER_DATABASE_URL is not set: start the service with `receiver serve`")
        journal = Journal(
            settings.journal_path, max_bytes=settings.journal_max_bytes, segment_bytes=settings.journal_segment_bytes,
            sync=settings.journal_sync, group_window=settings.journal_group_window_seconds,
            preallocate=settings.journal_preallocate,
        )  # fmt: skip
        await journal.start()
        pool = await asyncpg.create_pool(dsn, min_size=0, max_size=4, timeout=5, reset=_keep_session)
        registry = Registry(settings.data_dir / "applications.json")
        try:
            async with pool.acquire(timeout=5) as conn:
                await registry.load(conn)
        except Exception as error:  # noqa: BLE001 - the database may be down: work from the snapshot
            registry.load_snapshot()
            log.warning("registry.from_snapshot", error=type(error).__name__, applications=len(registry))
        # Under `receiver serve` the writer is a process of its own; otherwise a task of this worker.
        writer = writer_process.build(settings) if settings.writer == "inline" else None
        tasks: tuple[asyncio.Task[None], ...] = ()
        if writer is not None:
            journal.on_durable = writer.wake
            # Pending messages past their report window become unreported: a timer beside the
            # writer, not a cost per callback. One sweeps at a time (an advisory lock).
            tasks = (
                asyncio.create_task(writer.run(), name="receiver-writer"),
                sweep.start(pool, settings.report_window, settings.sweep_interval_seconds),
                partitions.start(pool),
            )
        metrics.JOURNAL_MAX.set(settings.journal_max_bytes)
        worker = cls(
            settings, journal, pool, registry, KeyCache(),
            Quarantine(journal, bodies_per_second=settings.quarantine_bodies_per_second), Hub(dsn),
            Mirror(dsn, pool) if settings.blacklist_mirror else None, writer, tasks,
        )  # fmt: skip
        blacklist_numbers.prepare(settings.default_region)
        # What is loaded now (modules, phonenumbers' tables) lives as long as the worker: out of
        # the garbage collector's sight, a full collection no longer walks it (about 35 ms on a
        # small VM, a stall for every request in flight).
        if not gc.get_freeze_count():  # once per process (tests run many applications in one)
            gc.collect()
            gc.freeze()
        return worker

    async def stop(self) -> None:
        """Finish what was acknowledged: the journal closes after its last flush; an inline writer
        stores what it can within ``RECEIVER_SHUTDOWN_DRAIN_SECONDS``."""
        if len(self._tasks) > 1:
            await sweep.stop(self._tasks[1])
            await partitions.stop(self._tasks[2])
        await self.events_hub.close()
        if self.blacklist_mirror is not None:
            await self.blacklist_mirror.close()
        self.quarantine.flush()  # the counts of refusals whose bodies were not kept, before the journal closes
        await self.journal.close()
        drained: bool | None = None
        if self.writer is not None:
            drained = await self.writer.stop(self.settings.shutdown_drain_seconds)
            self._tasks[0].cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tasks[0]
            self.writer.reader.close()
        log.info("worker.stopped", drained=drained, backlog_bytes=self.journal.backlog_bytes)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.pool.close(), timeout=5)
        metrics.TALLY.flush()  # counted in memory until now
        metrics.worker_stopped()


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool connections come back as they left: the query API sets no session state, so skip
    asyncpg's default reset, a round trip to PostgreSQL on every release."""
