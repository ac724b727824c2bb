"""uvicorn's httptools protocol with deadlines: a slow or stalled client holds nothing for long.

uvicorn (0.54) closes an idle keep-alive connection after ``timeout_keep_alive`` and does nothing
else about slow clients: a client that connects and sends nothing, or half its headers, keeps its
connection forever; one that never finishes its body keeps its request's task waiting forever;
one that never reads our answers (pipelining requests) keeps the task blocked on the full write
buffer forever. httptools also puts no bound on the size of the request line and headers.

Here, with T = ``RECEIVER_CLIENT_TIMEOUT_SECONDS``:

- **request**: T for the request line and headers, counted from the connection (or from the
  request's first byte); then ``408`` with a JSON reason if some bytes came, and the connection
  is closed;
- **body**: T + :data:`BODY_GRACE` from the headers for the whole body, then the connection is
  closed. The callbacks answer ``408`` themselves at T and quarantine what came
  (``callbacks._read``); this deadline covers every other route, and the rest of a body after
  an early answer (``413``, ``404``), which uvicorn reads and discards;
- **response**: an answer the client leaves unread for T (the write buffer still full, or not
  yet flushed) aborts the connection;
- request line and headers still incomplete after :data:`MAX_HEAD_BYTES` get ``431`` (a head
  that arrives whole in one read of the socket is let through: a read is bounded, and so is
  memory either way); bytes that are not HTTP get ``400``: both with a JSON reason (uvicorn
  answers those in plain text).

A stalled connection costs a file descriptor and a few hundred bytes, never a worker: the event
loop serves everyone else meanwhile. Every connection closed here is counted in
``receiver_http_connections_closed`` by reason.
"""

from __future__ import annotations

import asyncio
import http
import json
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from .. import metrics

MAX_HEAD_BYTES = 32 << 10  # the platform's headers are about 1 KiB
BODY_GRACE = 1.0
DEFAULT_TIMEOUT = 10.0


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.client_timeout: float = getattr(config, "client_timeout", DEFAULT_TIMEOUT)
        self._deadline: asyncio.TimerHandle | None = None  # request or body
        self._write_deadline: asyncio.TimerHandle | None = None
        self._in_head = False  # between a request's first byte and the end of its headers
        self._head_bytes = 0
        self._running: RequestResponseCycle | None = None

    # --- the request ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.client_timeout, "timeout_request")

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)  # headers still incomplete: all of this chunk was head
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(431, "headers_too_large", {"max_bytes": MAX_HEAD_BYTES})

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        self._arm(self.client_timeout, "timeout_request")

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._arm(self.client_timeout + BODY_GRACE, "timeout_body")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "bad_request", "not a valid HTTP/1.1 request")

    # --- the response --------------------------------------------------------------------------

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.get_write_buffer_size() and self._write_deadline is None:
            self._write_deadline = self.loop.call_later(self.client_timeout, self._unread)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_deadline is None:
            self._write_deadline = self.loop.call_later(self.client_timeout, self._unread)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None
        super().connection_lost(exc)
        # uvicorn tells only the newest request that the client is gone; with pipelined requests
        # the one running may be an older one, which would then write to a closed transport.
        running = self._running
        if running is not None and running is not self.cycle and not running.response_complete:
            running.disconnected = True
            running.message_event.set()

    # --- deadlines -----------------------------------------------------------------------------

    def _arm(self, seconds: float, reason: str) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(seconds, self._expired, reason)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, reason: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if reason == "timeout_request" and self._in_head:
            self._refuse(408, "request_timeout", {"seconds": self.client_timeout}, reason)
            return
        metrics.CLIENT_CLOSED.labels(reason).inc()
        self._close()

    def _unread(self) -> None:
        """T after an answer, or after the write buffer filled up: still not taken by the client."""
        self._write_deadline = None
        if self.flow.write_paused or self.transport.get_write_buffer_size():
            metrics.CLIENT_CLOSED.labels("timeout_response").inc()
            self.transport.abort()

    def _refuse(self, status: int, error: str, detail: object, reason: str | None = None) -> None:
        """Answer with a JSON reason (unless an answer is under way) and close the connection."""
        metrics.CLIENT_CLOSED.labels(reason or error).inc()
        if self.cycle is None or self.cycle.response_complete:
            body = json.dumps({"error": error, "detail": detail}).encode()
            phrase = http.HTTPStatus(status).phrase
            head = f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            self.transport.write(head.encode() + b"connection: close\r\n\r\n" + body)
        self._close()

    def _close(self) -> None:
        self._disarm()
        self._in_head = False
        self.transport.close()
        if self.transport.get_write_buffer_size() and self._write_deadline is None:
            self._write_deadline = self.loop.call_later(self.client_timeout, self._unread)
