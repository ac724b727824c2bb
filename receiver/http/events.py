"""``GET /v1/events``: the event feed, as pages of JSON or as a live Server-Sent Events stream.

| route | |
|---|---|
| ``GET /v1/events?after=&limit=&kinds=`` | ``{"events": [...], "next": CURSOR}`` |
| ``GET /v1/events`` with ``Accept: text/event-stream``, or ``GET /v1/events/stream`` | the same, live |

A stream starts after ``Last-Event-ID`` (what an SSE client sends when it reconnects), else
after ``after``; it reads a page, sends it, and waits for the worker's hub to say that events
were committed (or polls, see :mod:`receiver.events.hub`). A comment line every
``HEARTBEAT_SECONDS`` keeps proxies from closing an idle stream and finds clients that left.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import asyncpg
import structlog
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from ..api.models import Event, EventPage, EventQuery
from ..events import feed
from ..events.hub import Hub
from ..protocol import ProtocolError
from .auth import requires_key
from .responses import DATABASE_AWAY, error_response, model_response

log = structlog.get_logger("receiver.events")

HEARTBEAT_SECONDS = 15.0
STREAM_PAGE = 500
# While some committed events are held back behind a running transaction, or PostgreSQL is
# away, a stream reads again this often instead of waiting for a notification.
RETRY_SECONDS = 1.0


@requires_key
async def events(request: Request) -> Response:
    if "text/event-stream" in request.headers.get("accept", ""):
        return await _stream(request)
    try:
        query = _query(request)
        kinds = feed.parse_kinds(query.kinds)
        async with request.app.state.pool.acquire(timeout=5) as conn:
            after = await _start(conn, query.after)
            page = await feed.page(conn, after, limit=query.limit, kinds=kinds)
    except ProtocolError as error:
        return error_response(400, error.code, error.detail)
    return model_response(EventPage(events=page.events, next=page.next.cursor()))


def _query(request: Request) -> EventQuery:
    params = request.query_params
    return EventQuery.parse({**params, "kinds": params.getlist("kinds")})


@requires_key
async def stream(request: Request) -> Response:
    return await _stream(request)


async def _stream(request: Request) -> Response:
    try:
        query = _query(request)
        kinds = feed.parse_kinds(query.kinds)
        resume = request.headers.get("last-event-id") or query.after
        async with request.app.state.pool.acquire(timeout=5) as conn:
            after = await _start(conn, resume)
    except ProtocolError as error:
        return error_response(400, error.code, error.detail)
    hub: Hub = request.app.state.events_hub
    return StreamingResponse(
        _frames(request, hub, after, kinds),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _start(conn: asyncpg.Connection, after: str | None) -> feed.Position:
    if not after:
        return feed.START
    if after == "now":
        return await feed.now(conn)
    return feed.parse_cursor(after)


async def _frames(
    request: Request, hub: Hub, after: feed.Position, kinds: tuple[str, ...] | None
) -> AsyncIterator[str]:
    """The stream: pages from ``after`` as frames, for as long as the client stays and the worker runs.

    A client that leaves is noticed by Starlette, which cancels this generator where it waits."""
    pool = request.app.state.pool
    subscription = hub.subscribe()
    sent, last_write = 0, time.monotonic()
    away = False
    try:
        yield f"retry: {int(RETRY_SECONDS * 1000)}\n\n"
        while not hub.closed:
            try:
                # One snapshot for the page and the check of what it held back: a transaction
                # that ends in between (with no NOTIFY of its own) must still count as holding.
                async with pool.acquire(timeout=5) as conn, conn.transaction(isolation="repeatable_read", readonly=True):
                    page = await feed.page(conn, after, limit=STREAM_PAGE, kinds=kinds)
                    held = not page.more and await feed.held_back(conn)
                if away:
                    log.info("events.stream_database_back")
                    away = False
            except DATABASE_AWAY as error:
                if not away:
                    log.warning("events.stream_database_away", error=type(error).__name__)
                    away = True
                page, held = feed.Page([], after, more=False), True
            after = page.next
            if page.events:
                yield "".join(_frame(event) for event in page.events)
                sent += len(page.events)
                last_write = time.monotonic()
            if page.more:
                continue
            quiet = HEARTBEAT_SECONDS - (time.monotonic() - last_write)
            if quiet <= 0:
                yield ": keep-alive\n\n"
                last_write = time.monotonic()
                quiet = HEARTBEAT_SECONDS
            await subscription.wait(min(quiet, RETRY_SECONDS) if held or not hub.listening else quiet)
    finally:
        subscription.close()
        log.debug("events.stream_closed", events=sent, shutdown=hub.closed)


def _frame(event: Event) -> str:
    return f"id: {event.id}\nevent: {event.kind}\ndata: {event.model_dump_json(by_alias=True)}\n\n"


routes: list[BaseRoute] = [
    Route("/v1/events", events, methods=["GET"]),
    Route("/v1/events/stream", stream, methods=["GET"]),
]
