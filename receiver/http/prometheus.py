"""``GET /metrics``: the Prometheus exposition of every worker (see ``receiver.metrics``), and the
gauges read from PostgreSQL at the scrape."""

from __future__ import annotations

import asyncio

import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import metrics
from ..correlation import sweep

log = structlog.get_logger("receiver")

DATABASE_SECONDS = 2.0  # a scrape waits no longer for PostgreSQL: the gauges read from it are left out


async def metrics_endpoint(request: Request) -> Response:
    metrics.TALLY.flush()  # this worker's callback counts of the last second
    body, content_type = await asyncio.to_thread(metrics.render)  # reads the workers' files: off the loop
    return Response(body + await _from_database(request), media_type=content_type)


async def _from_database(request: Request) -> bytes:
    settings = request.app.state.settings
    try:
        async with asyncio.timeout(DATABASE_SECONDS):
            async with request.app.state.pool.acquire() as conn:
                rows = await sweep.stuck_pending(conn, settings.report_window, settings.stuck_pending_after)
    except Exception as error:  # noqa: BLE001 - PostgreSQL away or slow: the file-backed metrics still answer
        log.warning("metrics.database_unavailable", error=type(error).__name__)
        return b""
    return metrics.stuck_pending_text(rows)


routes = [Route("/metrics", metrics_endpoint, methods=["GET"])]
