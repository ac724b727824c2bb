"""Per-request observation: request id, metrics, and one log line per callback.

A pure ASGI middleware (Starlette's ``BaseHTTPMiddleware`` costs a task and a queue per request):

- **client address**: the socket peer, or behind trusted proxies the address they forwarded
  (``receiver.netaddr``; ``RECEIVER_TRUSTED_PROXIES``);
- **request id**: the incoming ``X-Request-Id`` when it is sane (1 to 128 characters of
  ``A-Z a-z 0-9 . _ : @ / + = -``), else a new one; bound to structlog's context for every line
  logged while the request runs, and echoed in the response's ``X-Request-Id``;
- **metrics**: requests by route template and status code, and for callbacks answered 2xx the
  time to that answer (``receiver.metrics``);
- **the callback line**: for another method on a callback path (the ``POST``s are observed by
  :mod:`receiver.http.callbacks` in the same shape), one ``callback`` line at info level.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from typing import Any

import structlog
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import metrics, netaddr

log = structlog.get_logger("receiver.callbacks")

HEADER = b"x-request-id"
SANE_ID = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")
# A request without a usable X-Request-Id gets one: 32 hex digits, unique per process (a random
# half fixed at start, a counter), without a system call per request.
_ID_PREFIX = os.urandom(8).hex().encode()
_ids = itertools.count()


def new_request_id() -> bytes:
    return b"%s%016x" % (_ID_PREFIX, next(_ids))
_NOTES = "receiver.notes"
_CLIENT = "receiver.client"
_FORWARDED_FOR = b"x-forwarded-for"
UNMATCHED = "unmatched"


def request_id(scope: Scope) -> str:
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        if name == HEADER:
            if SANE_ID.fullmatch(value):
                return value.decode("ascii")
            break
    return new_request_id().decode()


def resolve_client(scope: Scope, trusted: tuple[netaddr.IPNetwork, ...]) -> netaddr.IPAddress | None:
    peer = scope.get("client")
    host = peer[0] if peer else None
    forwarded = [v.decode("latin-1") for k, v in scope["headers"] if k == _FORWARDED_FOR] if trusted else []
    return netaddr.client_address(host, forwarded, trusted)


class Observe:
    def __init__(
        self, app: ASGIApp, routes: list[BaseRoute], trusted_proxies: tuple[netaddr.IPNetwork, ...] = ()
    ) -> None:
        self.app = app
        self.trusted = trusted_proxies
        self.templates = {id(route): route.path for route in routes if isinstance(route, Route)}
        # callback route template -> the name in its log line (status-report, status-reports, uplink)
        self.callbacks = {
            p: p.rsplit("/", 1)[-1] for p in self.templates.values() if p.startswith("/callbacks/")
        }
        self._requests: dict[tuple[str, int], Any] = {}  # labelled children, looked up once
        self._acks: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        scope[_CLIENT] = resolve_client(scope, self.trusted)
        rid = request_id(scope)
        tokens = structlog.contextvars.bind_contextvars(request_id=rid)
        answer: list[Any] = [500, None]  # status code, time of the answer
        header = (HEADER, rid.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer[0] = message["status"]
                message["headers"] = [*message.get("headers", ()), header]  # a copy: never the response's own
                await send(message)
                answer[1] = time.perf_counter()
                return
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            try:
                self._observe(scope, start, answer[0], answer[1])
            finally:
                structlog.contextvars.reset_contextvars(**tokens)

    def _observe(self, scope: Scope, start: float, code: int, answered: float | None) -> None:
        route = scope.get("route")
        endpoint = self.templates.get(id(route), UNMATCHED) if route is not None else UNMATCHED
        counter = self._requests.get((endpoint, code))
        if counter is None:
            counter = self._requests[(endpoint, code)] = metrics.REQUESTS.labels(endpoint, str(code))
        counter.inc()
        name = self.callbacks.get(endpoint)
        if name is None:
            return
        seconds = (answered or time.perf_counter()) - start
        if 200 <= code < 300:
            histogram = self._acks.get(endpoint)
            if histogram is None:
                histogram = self._acks[endpoint] = metrics.ACK_SECONDS.labels(endpoint)
            histogram.observe(seconds)
        notes = scope.get(_NOTES) or {}
        address = scope.get(_CLIENT)
        peer = scope.get("client")
        if self.trusted and peer and (address is None or peer[0] != address.compressed):
            notes = {**notes, "peer": peer[0]}  # a proxy's: the client is what it forwarded
        log.info(
            "callback",
            endpoint=name,
            code=code,
            ms=round(seconds * 1000, 2),
            client=address.compressed if address is not None else "unknown",
            **notes,
        )
