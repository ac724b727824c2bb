"""The ASGI application: one per worker process."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Mapping
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from .. import logs, metrics
from ..config import Settings
from ..uvicorn_adapter import LANE, LOOP
from ..worker import Worker
from . import blacklist, callbacks, events, health, openapi, prometheus, query
from .middleware import Observe
from .responses import DATABASE_AWAY, Refusal, error_response

log = structlog.get_logger("receiver")


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings()
    # The worker's threads (the log writer; the journal's, where no syncer process runs) take
    # turns with the event loop for the GIL; with Python's default 5 ms switch interval either
    # side can wait that long for the other, and every request in flight with it.
    sys.setswitchinterval(0.0005)
    logs.configure(settings.log_level, settings.log_format)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[Mapping[str, Any]]:
        worker = await Worker.start(settings)
        app.state.worker = worker
        # What the handlers read, by name.
        for name in ("settings", "journal", "pool", "registry", "api_keys", "quarantine", "events_hub",
                     "blacklist_mirror", "writer"):  # fmt: skip
            setattr(app.state, name, getattr(worker, name))
        try:
            # The lifespan state reaches uvicorn's protocol: the callbacks' direct lane.
            yield {LANE: callbacks.Lane(app.state, settings.trusted_proxies), LOOP: asyncio.get_running_loop()}
        finally:
            await worker.stop()

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
