"""Everything the receiver needs from uvicorn beyond its public API, in one place.

uvicorn's public API covers most of serving: :class:`uvicorn.Config` (the loop, the HTTP protocol
class as an import string, ``ssl_context_factory``, ``timeout_graceful_shutdown``, workers) and
:class:`uvicorn.Server` (``run``, ``should_exit``, ``started``). :mod:`receiver.server` uses only
those. Four things it does not offer need uvicorn's internals, and they live here:

1. **Deadlines for slow clients** (:class:`GuardedHttpToolsProtocol`). uvicorn has no timeout for
   a request's head or body, nor for an answer the client never reads, and no bound on the size
   of the head. ``Config(http=...)`` accepts any protocol class, but the only way to get HTTP
   parsing with it is to subclass ``HttpToolsProtocol`` and hook into its httptools callbacks
   (``on_message_begin``, ``on_headers_complete``, ``on_message_complete``), its flow control
   (``pause_writing``/``resume_writing``, ``self.flow.write_paused``), ``on_response_complete``
   (to time an answer left unread), ``send_400_response`` (so that bytes that are not HTTP get a
   JSON answer), and ``_start_asgi_task`` (private: the only place that sees which pipelined
   request is running, which ``connection_lost`` must tell the client is gone: uvicorn tells only
   ``self.cycle``, the newest, and the running one would write to a closed transport). The
   deadline reads ``client_timeout`` from the :class:`uvicorn.Config`, set by :func:`configure`:
   with several workers the config is pickled into each spawned worker and the class is imported
   there by name, so the setting must travel on the config.
2. **SIGHUP reloads TLS certificates instead of restarting the workers** (:class:`Supervisor`).
   ``uvicorn.supervisors.Multiprocess`` answers SIGHUP by replacing every worker (dropping their
   connections); it dispatches each signal to a method ``handle_<name>``, so overriding
   ``handle_hup`` (and reading ``processes``) is the only way to pass the signal on instead.
3. **A direct lane for the callbacks** (:class:`GuardedHttpToolsProtocol`, :data:`LANE`). uvicorn
   runs every request as an asyncio task of its own around an ASGI cycle; for a status report,
   which needs nothing but its body, a few checks and the journal's flush, that machinery cost
   more CPU than the rest of the acknowledgement. The application's lifespan may put a
   :class:`Lane` in its state (the ASGI lifespan state, which uvicorn hands every protocol as
   ``app_state``); a request the lane claims, once its head is complete, is answered by the lane
   itself, with no task, scope copy or cycle: see :class:`GuardedHttpToolsProtocol`. Everything
   else about the connection (deadlines, limits, keep-alive, pipelining, TLS, shutdown) stays
   uvicorn's. Claiming replays the scope fields uvicorn's ``on_headers_complete`` sets (method,
   HTTP version, path, raw path, query string), and the answer carries the server's default
   headers (``ServerState.default_headers``: the date). While the lane answers, a stand-in for
   uvicorn's cycle (:class:`_LaneCycle`) is the protocol's ``cycle``, so uvicorn's own code
   queues a pipelined request behind it, tells it when the client is gone, and asks it to close
   at shutdown. The connections of ``receiver serve`` start on
   :class:`receiver.callback_protocol.CallbackProtocol`, which answers a callback that comes
   whole in one read through the same lane, with less than this protocol, and hands the
   connection to this protocol at the first read that is anything else.
4. **Ending open event streams at shutdown** (:func:`server_exit_flag`). uvicorn waits for open
   responses before it shuts the application down, and an event stream never ends by itself;
   the application never sees the :class:`uvicorn.Server` (a spawned worker builds its own). The
   server's SIGTERM/SIGINT handler is its bound ``handle_exit``, installed with
   ``signal.signal`` (``capture_signals``): the handler's ``__self__`` is the server, whose public
   ``should_exit`` says when to close the streams.

pyproject.toml pins the uvicorn versions these were checked against (``>=0.47,<0.56``);
:data:`INTERNALS` lists every name used here, and tests/test_uvicorn_adapter.py fails, naming
it, when one is gone or has changed its kind or parameters.

The slow-client deadlines, with T = ``RECEIVER_CLIENT_TIMEOUT_SECONDS``:

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
import contextlib
import http
import json
import os
import signal
import urllib.parse
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

import httptools
import structlog
import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from . import metrics

__all__ = [
    "HTTP", "INTERNALS", "LANE", "LOOP", "STARTUP_FAILURE", "GuardedHttpToolsProtocol", "Lane", "LaneRequest", "Respond",
    "Supervisor", "configure", "server_exit_flag",
]  # fmt: skip

HTTP = f"{__name__}:GuardedHttpToolsProtocol"  # Config(http=...): imported by name in each worker
CALLBACKS = "receiver.callback_protocol:CallbackProtocol"
log = structlog.get_logger("receiver")

MAX_HEAD_BYTES = 32 << 10  # the platform's headers are about 1 KiB
BODY_GRACE = 1.0
DEFAULT_TIMEOUT = 10.0
# Scope key: how many requests the connection carried before this one (0 for a new connection).
KEPT_ALIVE = "receiver.earlier_requests"
# Lifespan-state key of the application's :class:`Lane`, if it has one.
LANE = "receiver.lane"
# Lifespan-state key of the worker's event loop: a connection's protocol takes it from there
# (asking asyncio for it costs a ``getpid`` system call each time, on Python before 3.12).
LOOP = "receiver.loop"

# The lane's answer: (status, headers, body); the protocol adds the status line, the server's
# default headers, content-length and, when the connection ends with it, connection: close.
Respond = Callable[[int, list[tuple[bytes, bytes]], bytes], None]


class LaneRequest(Protocol):
    def finish(self, body: bytes, respond: Respond) -> None:
        """The whole body is here: answer, now or later, by calling ``respond`` once."""


class Lane(Protocol):
    def claim(self, scope: dict[str, Any]) -> LaneRequest | None:
        """A request whose head is complete (``scope`` as uvicorn fills it): take it, or leave it
        to the ASGI application (None)."""


# What this module relies on beyond uvicorn's public API: (owner, name, kind, parameters). The
# kinds: "method" (a function of the class, with these parameters after self), "attribute" (set
# on instances; checked on a live one by the test), "class attribute" (exists on the class).
INTERNALS: tuple[tuple[type, str, str, tuple[str, ...]], ...] = (
    (HttpToolsProtocol, "__init__", "method", ("config", "server_state", "app_state", "_loop")),
    (HttpToolsProtocol, "connection_made", "method", ("transport",)),
    (HttpToolsProtocol, "data_received", "method", ("data",)),
    (HttpToolsProtocol, "on_message_begin", "method", ()),
    (HttpToolsProtocol, "on_headers_complete", "method", ()),
    (HttpToolsProtocol, "on_message_complete", "method", ()),
    (HttpToolsProtocol, "send_400_response", "method", ("msg",)),
    (HttpToolsProtocol, "on_response_complete", "method", ()),
    (HttpToolsProtocol, "pause_writing", "method", ()),
    (HttpToolsProtocol, "resume_writing", "method", ()),
    (HttpToolsProtocol, "_start_asgi_task", "method", ("cycle", "app")),
    (HttpToolsProtocol, "connection_lost", "method", ("exc",)),
    (HttpToolsProtocol, "on_body", "method", ("body",)),
    (HttpToolsProtocol, "_unset_keepalive_if_required", "method", ()),
    (HttpToolsProtocol, "shutdown", "method", ()),
    (HttpToolsProtocol, "parser", "attribute", ()),
    (HttpToolsProtocol, "url", "attribute", ()),
    (HttpToolsProtocol, "scope", "attribute", ()),
    (HttpToolsProtocol, "app_state", "attribute", ()),
    (HttpToolsProtocol, "root_path", "attribute", ()),
    (HttpToolsProtocol, "expect_100_continue", "attribute", ()),
    (HttpToolsProtocol, "server_state", "attribute", ()),
    (HttpToolsProtocol, "loop", "attribute", ()),
    (HttpToolsProtocol, "transport", "attribute", ()),
    (HttpToolsProtocol, "flow", "attribute", ()),
    (HttpToolsProtocol, "connections", "attribute", ()),
    (HttpToolsProtocol, "server", "attribute", ()),
    (HttpToolsProtocol, "client", "attribute", ()),
    (HttpToolsProtocol, "scheme", "attribute", ()),
    (HttpToolsProtocol, "logger", "attribute", ()),
    (HttpToolsProtocol, "cycle", "attribute", ()),
    (FlowControl, "write_paused", "attribute", ()),
    (RequestResponseCycle, "response_complete", "attribute", ()),
    (RequestResponseCycle, "disconnected", "attribute", ()),
    (RequestResponseCycle, "message_event", "attribute", ()),
    (RequestResponseCycle, "keep_alive", "attribute", ()),
    (ServerState, "default_headers", "attribute", ()),
    (ServerState, "connections", "attribute", ()),  # and total_requests: the callback protocol keeps them
    (ServerState, "total_requests", "attribute", ()),
    (Multiprocess, "__init__", "method", ("config", "sockets")),
    (Multiprocess, "handle_signals", "method", ()),
    (Multiprocess, "handle_hup", "method", ()),
    (Multiprocess, "config", "attribute", ()),
    (Multiprocess, "processes", "attribute", ()),
    (Process, "pid", "class attribute", ()),
    (Process, "exitcode", "class attribute", ()),
    (uvicorn.Server, "capture_signals", "method", ()),
    (uvicorn.Server, "handle_exit", "method", ("sig", "frame")),
    (uvicorn.Server, "should_exit", "attribute", ()),
)


def configure(config: uvicorn.Config, *, client_timeout: float, callbacks: bool = False) -> uvicorn.Config:
    """Serve ``config`` with :class:`GuardedHttpToolsProtocol` and these deadlines; with
    ``callbacks``, every connection starts on :class:`receiver.callback_protocol.CallbackProtocol`,
    which answers the callbacks that come whole in one read and hands the rest to it."""
    config.http = CALLBACKS if callbacks else HTTP
    config.client_timeout = client_timeout  # type: ignore[attr-defined]  # read by the protocol, in each worker
    return config


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with deadlines: a slow or stalled client holds nothing for
    long (the rules are in the module's docstring)."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.client_timeout: float = getattr(config, "client_timeout", DEFAULT_TIMEOUT)
        # The request's or the body's deadline: a time and a reason, moved by an assignment as a
        # request goes. One timer a connection checks it (see _arm).
        self._deadline: float | None = None
        self._deadline_reason = ""
        self._timer: asyncio.TimerHandle | None = None
        self._write_deadline: asyncio.TimerHandle | None = None
        self._in_head = False  # between a request's first byte and the end of its headers
        self._head_bytes = 0
        self._ended_in_read = False  # a request ended in the read being parsed
        self._running: RequestResponseCycle | None = None
        self._served = 0  # requests on this connection
        # The application's direct lane (filled in by its lifespan before anything is served).
        self._lane: Lane | None = app_state.get(LANE)
        self._claimed: LaneRequest | None = None  # the lane's request while its body is read
        self._claimed_keep_alive = True
        self._lane_body: list[bytes] = []

    # --- the request ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn's
        # uvicorn's, but the addresses come from the transport's own cache: uvicorn asks a socket
        # object for them, which costs a new connection an object and two system calls (about
        # 10 µs of the ~100 µs a new connection costs this protocol).
        self.connections.add(self)
        self.transport = transport
        self.flow = FlowControl(transport)
        self.server = _address(transport.get_extra_info("sockname"))
        client = _address(transport.get_extra_info("peername"))
        self.client = client if client and client[1] is not None else None  # type: ignore[assignment]  # no Unix peer
        self.scheme = "https" if transport.get_extra_info("sslcontext") else "http"
        if self.logger.level <= TRACE_LOG_LEVEL:
            prefix = f"{self.client[0]}:{self.client[1]} - " if self.client else ""
            self.logger.log(TRACE_LOG_LEVEL, "%sHTTP connection made", prefix)
        self._arm(self.client_timeout, "timeout_request")

    def data_received(self, data: bytes) -> None:
        self._ended_in_read = False
        super().data_received(data)
        if self._claimed is not None:
            self._unclaim()  # its body did not come whole with its head: the application reads it
        if self._in_head and not self.transport.is_closing() and not self._ended_in_read:
            # Headers still incomplete: all of this chunk was head. Not so when an earlier request
            # ended in it (pipelined): that chunk is not counted (a read is bounded).
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(431, "headers_too_large", {"max_bytes": MAX_HEAD_BYTES})

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # How many requests this connection carried before this one: a request on a kept-alive
        # connection does not wait for company in the journal (see http/callbacks.py).
        self.scope[KEPT_ALIVE] = self._served  # type: ignore[literal-required]  # an extra key
        self._served += 1
        self._unset_keepalive_if_required()  # a lane may have answered within this read, arming it
        self._in_head = True
        self._head_bytes = 0
        self._arm(self.client_timeout, "timeout_request")

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._arm(self.client_timeout + BODY_GRACE, "timeout_body")
        if self._lane is not None and self._claim(self._lane):
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._claimed is not None:
            self._lane_body.append(body)
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._ended_in_read = True
        request = self._claimed
        if request is None:
            super().on_message_complete()
            self._disarm()
            return
        self._claimed = None
        self._disarm()
        body = self._take_body()
        cycle = self.cycle = _LaneCycle(self._claimed_keep_alive)  # type: ignore[assignment]  # what uvicorn reads of a cycle
        respond = partial(self._lane_respond, cycle)
        try:
            request.finish(body, respond)
        except Exception:  # a defect: nothing was acknowledged
            log.exception("lane.failed")
            respond(500, [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(_INTERNAL))], _INTERNAL)

    # --- the direct lane -----------------------------------------------------------------------

    def _claim(self, lane: Lane) -> bool:
        """Offer the request whose head just ended to the lane, unless it must wait its turn
        (an answer under way, or the client not reading its answers), expects ``100 Continue``
        or asks for an upgrade."""
        cycle, parser = self.cycle, self.parser
        if (cycle is not None and not cycle.response_complete) or self.expect_100_continue or parser.should_upgrade():
            return False
        if self.flow.write_paused:  # the client is not reading: uvicorn's cycle waits for it, reading paused
            return False
        scope: Any = self.scope  # the fields uvicorn's on_headers_complete sets, as it sets them
        version = parser.get_http_version()
        try:
            scope["method"] = parser.get_method().decode("ascii")
            url = httptools.parse_url(self.url)
        except (UnicodeDecodeError, httptools.HttpParserError):
            return False  # uvicorn answers it
        if version != "1.1":
            scope["http_version"] = version
        raw_path = url.path
        path = raw_path.decode("ascii")
        scope["path"] = self.root_path + (urllib.parse.unquote(path) if "%" in path else path)
        scope["raw_path"] = self.root_path.encode("ascii") + raw_path
        scope["query_string"] = url.query or b""
        request = lane.claim(scope)
        if request is None:
            return False
        self._claimed = request
        self._claimed_keep_alive = version != "1.0" and parser.should_keep_alive()
        return True

    def _unclaim(self) -> None:
        """Hand a claimed request to the ASGI application after all, with what came of its body."""
        self._claimed = None
        body = self._take_body()
        if self.transport.is_closing():
            return
        super().on_headers_complete()
        if body:
            super().on_body(body)

    def _take_body(self) -> bytes:
        body = b"".join(self._lane_body)
        self._lane_body = []
        return body

    def _lane_respond(self, cycle: _LaneCycle, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        if cycle.response_complete:
            return
        cycle.response_complete = True
        if cycle.disconnected or self.transport.is_closing():
            return  # nobody to answer
        self.transport.write(answer(status, self.server_state.default_headers, headers, body, cycle.keep_alive))
        if not cycle.keep_alive:
            self.transport.close()
        self.on_response_complete()

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
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
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
        """A deadline ``seconds`` (at least the client timeout T) from now. The timer is never
        set more than T ahead, so it fires at or before any deadline armed after it: a request
        moves its deadline with an assignment, and a connection costs one timer every T."""
        now = self.loop.time()
        self._deadline, self._deadline_reason = now + seconds, reason
        if self._timer is None:
            self._schedule(now, now + seconds)

    def _schedule(self, now: float, deadline: float) -> None:
        self._timer = self.loop.call_at(min(deadline, now + self.client_timeout), self._due)

    def _disarm(self) -> None:
        self._deadline = None  # the timer, if it fires, finds nothing due

    def _due(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None:
            return
        now = self.loop.time()
        if now < deadline:  # armed again since: check again then
            self._schedule(now, deadline)
            return
        self._deadline = None
        self._expired(self._deadline_reason)

    def _expired(self, reason: str) -> None:
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


def _address(info: object) -> tuple[str, int | None] | None:
    """An address as uvicorn puts it in a scope: (host, port) of an IP socket, (path, None) of
    a Unix one."""
    if isinstance(info, tuple | list) and len(info) >= 2:
        return (str(info[0]), int(info[1]))
    if isinstance(info, str):
        return (info, None)
    return None


_STATUS_LINES = {int(s): b"HTTP/1.1 %d %s\r\n" % (s, s.phrase.encode()) for s in http.HTTPStatus}


def answer(
    status: int, default_headers: list[tuple[bytes, bytes]], headers: list[tuple[bytes, bytes]], body: bytes,
    keep_alive: bool,
) -> bytes:  # fmt: skip
    """A lane's answer as bytes: the status line, the server's default headers, the lane's, and
    ``connection: close`` when the connection ends with it."""
    parts = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status]
    for name, value in default_headers:
        parts += (name, b": ", value, b"\r\n")
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    parts += (b"\r\n", body)
    return b"".join(parts)


_INTERNAL = b'{"error":"internal_error","detail":"the request failed; nothing was acknowledged"}'


class _LaneCycle:
    """Stands in for uvicorn's ``RequestResponseCycle`` while the lane answers a request: what
    uvicorn's protocol reads and sets of its current cycle (a pipelined request waits behind
    it, the client's leaving is marked on it, shutdown clears ``keep_alive``)."""

    __slots__ = ("disconnected", "keep_alive", "response_complete")

    def __init__(self, keep_alive: bool) -> None:
        self.keep_alive = keep_alive
        self.disconnected = False
        self.response_complete = False

    @property
    def message_event(self) -> _LaneCycle:
        return self  # uvicorn sets it when the connection is lost: nothing waits on it here

    def set(self) -> None:
        pass


class Supervisor(Multiprocess):
    """uvicorn's worker supervisor; SIGHUP is passed on to the workers, which reload their TLS
    certificate in place: no worker restarts, no connection is closed. A worker that gets it
    before it has set up TLS dies of it and is replaced at once, having accepted nothing yet."""

    def handle_hup(self) -> None:
        log.info("serve.sighup", tls=self.config.is_ssl, workers=len(self.processes))
        if not self.config.is_ssl:
            return  # nothing to reload
        for process in self.processes:
            if process.pid is not None and process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGHUP)


def server_exit_flag() -> Callable[[], bool] | None:
    """The running :class:`uvicorn.Server`'s ``should_exit``, which its SIGTERM/SIGINT handler
    sets; None when this process is not served by uvicorn from its main thread (tests, other
    servers: there the application's shutdown is the only end)."""
    handler = signal.getsignal(signal.SIGTERM)
    server = getattr(handler, "__self__", None)
    if not isinstance(server, uvicorn.Server):
        return None
    return lambda: server.should_exit
