"""The ASGI application: one per worker process."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from .. import logs, metrics, writer_process
from ..apikeys import KeyCache
from ..applications import Registry
from ..blacklist import numbers as blacklist_numbers
from ..blacklist.mirror import Mirror
from ..config import Settings
from ..correlation import sweep
from ..events.hub import Hub
from ..journal import Journal
from ..quarantine import Quarantine
from . import blacklist, callbacks, events, health, openapi, prometheus, query
from .middleware import Observe
from .responses import DATABASE_AWAY, Refusal, error_response

log = structlog.get_logger("receiver")


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings()
    # The journal's thread hands each fsync'd flush back to the event loop; with Python's
    # default 5 ms switch interval a busy loop makes that hand-off wait, and every request
    # of the flush with it.
    sys.setswitchinterval(0.0005)
    logs.configure(settings.log_level, settings.log_format)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        dsn = settings.database_url
        if not dsn:
            raise RuntimeError("RECEIVER_DATABASE_URL is not set: start the service with `receiver serve`")
        journal = Journal(
            settings.journal_path, max_bytes=settings.journal_max_bytes, segment_bytes=settings.journal_segment_bytes
        )
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
        if writer is not None:
            journal.on_durable = writer.wake
        metrics.JOURNAL_MAX.set(settings.journal_max_bytes)
        app.state.settings, app.state.pool, app.state.registry = settings, pool, registry
        app.state.journal, app.state.writer = journal, writer
        app.state.api_keys = KeyCache()
        app.state.quarantine = quarantine = Quarantine(journal, bodies_per_second=settings.quarantine_bodies_per_second)
        app.state.events_hub = hub = Hub(dsn)
        app.state.blacklist_mirror = mirror = Mirror(dsn, pool) if settings.blacklist_mirror else None
        task = asyncio.create_task(writer.run()) if writer is not None else None
        # Pending messages past their report window become unreported: a timer, not a cost per
        # callback. Every worker runs one; one sweeps at a time (an advisory lock).
        sweeper = sweep.start(pool, settings.report_window, settings.sweep_interval_seconds)
        blacklist_numbers.prepare(settings.default_region)
        # What is loaded by now (modules, phonenumbers' tables) lives as long as the worker: out
        # of the garbage collector's sight, a full collection does not walk it (that takes about
        # 35 ms on a small VM, a stall for every request in flight).
        if not gc.get_freeze_count():  # once per process (tests run many applications in one)
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            await sweep.stop(sweeper)
            await hub.close()
            if mirror is not None:
                await mirror.close()
            quarantine.flush()  # the counts of refusals whose bodies were not kept, before the journal closes
            await journal.close()
            drained: bool | None = None
            if writer is not None and task is not None:
                drained = await writer.stop(settings.shutdown_drain_seconds)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                writer.reader.close()
            log.info("worker.stopped", drained=drained, backlog_bytes=journal.backlog_bytes)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), timeout=5)
            metrics.TALLY.flush()  # counted in memory until now
            metrics.worker_stopped()

    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Refusal)
        return exc.response()

    async def http_error(request: Request, exc: Exception) -> Response:
        """Starlette's own refusals (no such route, wrong method) in the same JSON shape as ours."""
        assert isinstance(exc, HTTPException)
        error = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        response = error_response(exc.status_code, error, exc.detail)
        response.headers.update(exc.headers or {})
        return response

    async def client_gone(request: Request, exc: Exception) -> Response:
        """The client left (or was cut off) before its body was whole: nobody to answer."""
        return error_response(400, "incomplete_body", None)

    async def database_away(request: Request, exc: Exception) -> Response:
        log.warning("query.database_unavailable", error=type(exc).__name__)
        metrics.DATABASE_ERRORS.labels("query").inc()
        return error_response(503, "database_unavailable", "PostgreSQL is not reachable; try again shortly")

    routes = [
        *callbacks.routes, *health.routes, *prometheus.routes, *query.routes, *events.routes, *blacklist.routes,
        *openapi.routes,
    ]
    handlers: dict[Any, Any] = {
        Refusal: refused,
        HTTPException: http_error,
        ClientDisconnect: client_gone,
        **dict.fromkeys(DATABASE_AWAY, database_away),
    }
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(callbacks.Callbacks, trusted_proxies=settings.trusted_proxies),
            Middleware(Observe, routes=routes, trusted_proxies=settings.trusted_proxies),
        ],
        lifespan=lifespan,
        exception_handlers=handlers,
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool connections come back as they left: the query API sets no session state, so skip
    asyncpg's default reset, a round trip to PostgreSQL on every release."""
