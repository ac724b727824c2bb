"""Liveness and readiness."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .. import writer_process
from ..db import migrate

FILLING = 0.5  # /readyz reports "filling" from here
FULL = 0.9  # and stops being ready from here


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    journal = state.journal
    fill = journal.refresh() / journal.max_bytes
    database: dict[str, object] = {"reachable": False}
    try:
        async with asyncio.timeout(2):
            async with state.pool.acquire() as conn:
                database = {"reachable": True, "pending_migrations": await migrate.pending(conn)}
    except Exception as error:  # noqa: BLE001 - any failure means "not reachable"
        database["error"] = type(error).__name__
    journal_state = {
        "writable": journal.last_error is None,
        "backlog_bytes": journal.backlog_bytes,
        "max_bytes": journal.max_bytes,
        "fill": round(fill, 4),
        "filling": fill >= FILLING,
    }
    if journal.last_error:
        journal_state["error"] = journal.last_error
    ready = (
        bool(database["reachable"])
        and not database.get("pending_migrations")
        and journal.last_error is None
        and fill < FULL
    )
    writer = state.writer
    if writer is not None:  # a task of this worker
        writer_state: dict[str, object] = {"running": True, "error": writer.last_error, "boosted": False}
    else:
        writer_state = await asyncio.to_thread(writer_process.read_status, state.settings.journal_path)
    body = {"ready": ready, "database": database, "journal": journal_state, "writer": writer_state}
    return JSONResponse(body, status_code=200 if ready else 503)


routes = [Route("/healthz", healthz), Route("/readyz", readyz)]
