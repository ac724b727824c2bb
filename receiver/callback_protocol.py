"""The protocol a connection of ``receiver serve`` starts with: a callback that comes whole in
one read is answered here; anything else goes to uvicorn's protocol, bytes untouched.

The platform opens a new connection for each callback and sends it, head and body, in one piece
of a few hundred bytes. uvicorn's protocol is built for every kind of request: per connection it
makes flow control, addresses, timers and a request-response cycle, per request a scope with a
copy of the application's state; served with a new connection per request, that cost a worker
about as much CPU as everything else the acknowledgement does (the journal, the parse, the log
line, the kernel's accept and close). :class:`CallbackProtocol` does only what such a
connection needs: httptools parses the read, and if it holds exactly one request that the
callbacks' lane claims (:class:`receiver.http.callbacks.Lane`: a known endpoint, a declared
length within the limit), the lane takes it and its answer is written as bytes once the
journal's flush is done. The first read that is anything else (another path, a head or body in
pieces, pipelined requests, ``Expect: 100-continue``, an upgrade, bytes that are not HTTP) hands
the connection to :class:`receiver.uvicorn_adapter.GuardedHttpToolsProtocol` with that read as
it came, and it stays there: its deadlines, limits, pipelining and refusals apply from then on,
and its own lane still answers callbacks.

What it keeps of uvicorn's contract: it is in ``server_state.connections`` (a shutdown asks it
to close, and waits for it), it counts ``total_requests``, an answer carries the server's
default headers, a request waiting for its flush when the client goes is not answered, and at
shutdown such an answer still goes out, with ``connection: close``. The deadlines it needs
(a connection that sends nothing, a kept-alive one left idle, an answer left unread) are
checked by one sweep a worker instead of timers per connection: a deadline is met within a
quarter of its length.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import urllib.parse
from functools import partial
from typing import Any

import httptools
import structlog
import uvicorn
from uvicorn.server import ServerState

from . import metrics
from .uvicorn_adapter import (
    _INTERNAL,
    KEPT_ALIVE,
    LANE,
    LOOP,
    GuardedHttpToolsProtocol,
    Lane,
    LaneRequest,
    _address,
    answer,
)

__all__ = ["CallbackProtocol"]

log = structlog.get_logger("receiver")

_INTERNAL_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(_INTERNAL))]
_PREFIX = b"POST /"  # every callback is a POST: any other read goes to uvicorn's protocol at once
_ASGI = {"version": "3.0", "spec_version": "2.3"}


class CallbackProtocol(asyncio.Protocol):
    """See the module's text. Built by uvicorn for each connection (``Config(http=...)``)."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.config = config
        self.server_state = server_state
        self.app_state = app_state
        self.loop = _loop or app_state.get(LOOP) or asyncio.get_event_loop()
        self.lane: Lane | None = app_state.get(LANE)
        self.sweep = _sweep(self.loop, config)  # the worker's deadlines
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set by connection_made
        self.parser: httptools.HttpRequestParser | None = None
        self.served = 0  # requests answered on this connection
        self.waiting: LaneRequest | None = None  # a request the lane holds until its flush
        self.version = "1.1"  # of the request parsed
        self.keep_alive = True  # the connection stays open after its answer
        self.held = b""  # bytes that came while an answer was awaited
        self.closing = False  # shutdown: the answer awaited is the last
        self.write_paused = False  # the transport's write buffer is over its high-water mark
        self.since = 0.0  # when the connection became idle (loop time)
        self.addresses: tuple[str, Any, Any] | None = None  # scheme, client, server: asked once
        # The request being parsed.
        self.begun = self.complete = 0
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.refused = False  # something in the head the lane does not take

    # --- the connection --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        self.server_state.connections.add(self)  # type: ignore[arg-type]  # uvicorn calls shutdown() on it
        self.since = self.loop.time()
        self.sweep.idle.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)
        self.sweep.forget(self)
        self.waiting = None  # its answer has nobody to go to
        self.parser = None

    def data_received(self, data: bytes) -> None:
        if self.waiting is not None:  # the client sent on before its answer: held until then
            self.held += data
            self.transport.pause_reading()
            return
        lane = self.lane
        if lane is None or not data.startswith(_PREFIX) or self.write_paused:
            self._hand_over(data)  # not a callback, or a client that does not read its answers
            return
        parser = self.parser
        if parser is None:
            parser = self.parser = httptools.HttpRequestParser(self)
        self.begun = self.complete = 0
        self.refused = False
        try:
            parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self._hand_over(data)  # not HTTP, or an upgrade: uvicorn's protocol answers it
            return
        if self.begun != 1 or self.complete != 1 or self.refused:
            self._hand_over(data)  # in pieces, pipelined, or not the lane's
            return
        version = self.version
        url = httptools.parse_url(self.url)
        raw_path = url.path
        try:
            path = raw_path.decode("ascii")
        except UnicodeDecodeError:
            self._hand_over(data)
            return
        root_path = self.config.root_path
        if self.addresses is None:  # once a connection: uvloop asks the socket each time (system calls)
            transport = self.transport
            self.addresses = (
                "https" if transport.get_extra_info("sslcontext") else "http",
                _client(transport), _address(transport.get_extra_info("sockname")),
            )  # fmt: skip
        scheme, client, server = self.addresses
        scope: dict[str, Any] = {
            "type": "http", "asgi": _ASGI, "http_version": version, "method": "POST", "scheme": scheme,
            "path": root_path + (urllib.parse.unquote(path) if "%" in path else path),
            "raw_path": root_path.encode("ascii") + raw_path, "query_string": url.query or b"",
            "root_path": root_path, "headers": self.headers, "client": client, "server": server,
            KEPT_ALIVE: self.served,
        }  # fmt: skip
        request = lane.claim(scope)
        if request is None:
            self._hand_over(data)
            return
        body = b"".join(self.body)
        self.body = []
        self.waiting = request
        self.sweep.idle.discard(self)
        try:
            request.finish(body, partial(self._respond, request))
        except Exception:  # a defect: nothing was acknowledged
            log.exception("lane.failed")
            self._respond(request, 500, _INTERNAL_HEADERS, _INTERNAL)

    def _hand_over(self, data: bytes) -> None:
        """From now on uvicorn's protocol serves this connection, starting with ``data``."""
        self.server_state.connections.discard(self)
        self.sweep.forget(self)
        self.parser = None
        protocol = GuardedHttpToolsProtocol(self.config, self.server_state, self.app_state, self.loop)
        protocol._served = self.served
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        if self.write_paused:  # the transport told us, and will not tell it again
            protocol.pause_writing()
        if data:
            protocol.data_received(data)

    # --- httptools' callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.begun += 1
        self.url = b""
        self.headers = []
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"expect" or name == b"transfer-encoding" or name == b"upgrade":
            self.refused = True  # uvicorn's protocol knows what to do with these
        self.headers.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        # Asked now: once the message is complete, the parser has reset what it knew of it.
        parser = self.parser
        assert parser is not None
        self.version = parser.get_http_version()
        self.keep_alive = self.version != "1.0" and parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete += 1

    # --- the answer ------------------------------------------------------------------------------

    def _respond(
        self, request: LaneRequest, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        if self.waiting is not request:
            return  # answered already, or the client is gone
        self.waiting = None
        self.server_state.total_requests += 1
        self.served += 1
        transport = self.transport
        if transport.is_closing():
            return
        keep_alive = self.keep_alive and not self.closing
        data = answer(status, self.server_state.default_headers, headers, body, keep_alive)
        if not keep_alive and not self.held and self.addresses is not None and self.addresses[0] == "http" and self.addresses[1]:
            # The answer leaves with the connection's FIN, in one segment. Not when the client
            # sent more after its request: the close of a socket with unread bytes is a reset,
            # which would take a corked answer with it (an answer already sent gets there first).
            _cork(transport)
        transport.write(data)
        if transport.is_closing():  # the write found the client gone: what it sent after is nobody's
            return
        sweep = self.sweep
        if transport.get_write_buffer_size():
            sweep.unread[self] = self.loop.time()
        if not keep_alive:
            transport.close()
            return
        self.since = self.loop.time()
        sweep.idle.add(self)
        if self.held:
            held, self.held = self.held, b""
            transport.resume_reading()
            self.data_received(held)

    def shutdown(self) -> None:
        """uvicorn's server is stopping: an answer awaited still goes out, then the connection
        closes; an idle one closes now."""
        self.closing = True
        if self.waiting is None:
            self.transport.close()

    # The transport's flow control: a client that leaves its answers unread gets no more of
    # them here (its next read goes to uvicorn's protocol, which waits for it to read); an
    # answer left unread is cut off by the sweep (see _Sweep.unread).
    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False


class _Sweep:
    """The deadlines of a worker's :class:`CallbackProtocol` connections, checked every quarter
    of the shortest: an idle connection that never sent anything is closed after the client
    timeout (as uvicorn's protocol would: its request deadline), one that was kept alive after
    an answer after uvicorn's keep-alive timeout, an answer left unread after the client timeout."""

    def __init__(self, loop: asyncio.AbstractEventLoop, config: uvicorn.Config) -> None:
        self.loop = loop
        self.client_timeout: float = getattr(config, "client_timeout", 10.0)
        self.keep_alive: float = float(config.timeout_keep_alive)
        self.interval = max(0.05, min(self.client_timeout, self.keep_alive) / 4)
        self.idle: set[CallbackProtocol] = set()
        self.unread: dict[CallbackProtocol, float] = {}
        self.handle = loop.call_later(self.interval, self.run)

    def forget(self, protocol: CallbackProtocol) -> None:
        self.idle.discard(protocol)
        self.unread.pop(protocol, None)

    def run(self) -> None:
        self.handle = self.loop.call_later(self.interval, self.run)
        now = self.loop.time()
        for protocol in [
            p for p in self.idle if now - p.since >= (self.keep_alive if p.served else self.client_timeout)
        ]:
            self.idle.discard(protocol)
            if not protocol.served:  # uvicorn's keep-alive timeout is not counted either
                metrics.CLIENT_CLOSED.labels("timeout_request").inc()
            protocol.transport.close()
        for protocol, since in list(self.unread.items()):
            transport = protocol.transport
            if not transport.get_write_buffer_size():  # read by now
                del self.unread[protocol]
            elif now - since >= self.client_timeout:
                del self.unread[protocol]
                metrics.CLIENT_CLOSED.labels("timeout_response").inc()
                with contextlib.suppress(Exception):
                    transport.abort()


_current: list[_Sweep] = []  # the sweep of the loop last asked for (a worker runs one loop)


def _sweep(loop: asyncio.AbstractEventLoop, config: uvicorn.Config) -> _Sweep:
    if _current and _current[0].loop is loop:
        return _current[0]
    if _current:
        _current[0].handle.cancel()  # a loop before it (tests): its sweep ends
    _current[:] = [_Sweep(loop, config)]
    return _current[0]


def _cork(transport: asyncio.BaseTransport) -> None:
    """Hold what is written next until the connection closes (``TCP_CORK``), so that the last
    answer of a connection and its FIN reach the client as one segment: one packet fewer each
    way for a platform that opens a connection per callback (the kernel's work for each, on
    both ends, is a large part of what such a callback costs). Plain TCP only: over TLS the
    close waits for the client's ``close_notify``, which it could not send before it had the
    answer; and the close follows the write at once, or the kernel would hold the answer for
    up to 200 ms."""
    if _TCP_CORK is None:  # not Linux: the answer goes as it is written
        return
    with contextlib.suppress(OSError, AttributeError, TypeError):
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 1)


_TCP_CORK: int | None = getattr(socket, "TCP_CORK", None)


def _client(transport: asyncio.BaseTransport) -> tuple[str, int | None] | None:
    client = _address(transport.get_extra_info("peername"))
    return client if client and client[1] is not None else None  # no Unix peer, as uvicorn's
