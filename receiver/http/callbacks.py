"""The platform's side: ``POST /callbacks/{token}/{status-report|status-reports|uplink}``.

This is the hot path (a campaign brings millions of these in minutes). A callback whose body
comes whole with its head, in one read of the socket (the platform's are a few hundred bytes),
is answered by :class:`Lane` on the protocol itself: the one a connection starts with
(:mod:`receiver.callback_protocol`), or uvicorn's (:mod:`receiver.uvicorn_adapter`) once the
connection was handed to it: no ASGI task, scope copy or ``Request``/``Response`` objects, one
pass over the headers, the answer written as bytes. Any other (a body in pieces, chunked, after ``Expect: 100-continue``)
goes the ASGI way, through :class:`Callbacks`, a raw ASGI callable in front of Starlette's
router. Both run the same :class:`_Call`, which does only what makes the event durable and the
answer right: find the application in memory, check the source, read the bounded body, check
the signature when configured, then :func:`receiver.ingest.accept` (media type, protocol),
append the record to the journal and wait for its group ``fdatasync``, and answer ``200`` with
an empty body. A refusal gets its 4xx with a JSON reason and goes to the quarantine; an event
the journal cannot take gets ``503``, never ``200``.

Every request is observed as the rest of the service observes them (``X-Request-Id``, the
request metrics, one ``callback`` log line) but more cheaply: the log line's write is batched
(:mod:`receiver.logs`). Other methods on these paths, and any other path, go to the router.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from functools import partial
from typing import Any, Literal

import orjson
import structlog
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import ingest, logs, metrics, netaddr
from ..applications import Application
from ..journal.appender import JournalUnavailable
from ..journal.envelope import ENDPOINT_KINDS, Kind
from ..uvicorn_adapter import KEPT_ALIVE, Respond
from .middleware import SANE_ID, new_request_id, resolve_client

log = structlog.get_logger("receiver.callbacks")

PREFIX = "/callbacks/"
TEMPLATES = {name: f"/callbacks/{{token}}/{name}" for name in ENDPOINT_KINDS}
_JSON = (b"content-type", b"application/json")


def _route(method: str, path: str) -> tuple[str, str, Kind] | None:
    """(token, endpoint, kind) of a callback request; None for anything else."""
    if method != "POST" or not path.startswith(PREFIX):
        return None
    token, slash, endpoint = path[len(PREFIX) :].partition("/")
    kind = ENDPOINT_KINDS.get(endpoint)
    if kind is None or not token or not slash:
        return None  # the router answers (404)
    return token, endpoint, kind


class Callbacks:
    """ASGI middleware: answers the three callback endpoints itself, passes everything else on."""

    def __init__(self, app: ASGIApp, trusted_proxies: tuple[netaddr.IPNetwork, ...] = ()) -> None:
        self.app = app
        self.trusted = trusted_proxies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = _route(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        await _Call(self.trusted, scope["app"].state, scope, *route).run(receive, send)


class Lane:
    """The same endpoints on the HTTP protocol directly (:data:`receiver.uvicorn_adapter.LANE`,
    read by the callback protocol and by uvicorn's): a callback whose body comes whole with its
    head is answered without an ASGI task. It claims
    what the ASGI path would answer the same way from the body alone; a body of undeclared
    length (chunked) or above the limit is left to the ASGI path, which reads it within bounds."""

    def __init__(self, state: Any, trusted_proxies: tuple[netaddr.IPNetwork, ...] = ()) -> None:
        self.state = state
        self.trusted = trusted_proxies
        self.limit: int = state.settings.max_body_bytes

    def claim(self, scope: dict[str, Any]) -> _Call | None:
        route = _route(scope["method"], scope["path"])
        if route is None:
            return None
        call = _Call(self.trusted, self.state, scope, *route)
        length = call.content_length
        if length is None or not length.isdigit() or int(length) > self.limit:
            return None
        return call


class _Call:
    """One callback request, from its headers to its answer and its log line.

    :meth:`begin` is the whole way from a body to an answer, without waiting on anything but
    the journal's flush; the two rare cases that need the database (an application not in
    memory, a signature by an access key not known yet) continue in a task. The answer goes
    to ``respond``: the lane's writer, or the ASGI path's future."""

    __slots__ = (
        "client",
        "content_length",
        "content_type",
        "endpoint",
        "kind",
        "notes",
        "received_at",
        "request_id",
        "respond",
        "scope",
        "start",
        "state",
        "token",
        "trusted",
    )  # fmt: skip

    def __init__(
        self, trusted: tuple[netaddr.IPNetwork, ...], state: Any, scope: Scope, token: str, endpoint: str, kind: Kind
    ) -> None:
        self.start = time.perf_counter()
        self.received_at = time.time()
        self.trusted, self.state, self.scope = trusted, state, scope
        self.token, self.endpoint, self.kind = token, endpoint, kind
        request_id: bytes | None = None
        self.content_type = self.content_length = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                self.content_type = value
            elif name == b"content-length":
                self.content_length = value
            elif name == b"x-request-id" and request_id is None and SANE_ID.fullmatch(value):
                request_id = value
        self.request_id: bytes = request_id or new_request_id()
        self.notes: dict[str, object] = {}
        self.client: netaddr.IPAddress | None | Literal[False] = False  # False: not resolved yet
        self.respond: Respond = _unanswerable

    # --- the ASGI path -------------------------------------------------------------------------

    async def run(self, receive: Receive, send: Send) -> None:
        """Look the application up and check it before reading the body, then :meth:`proceed`."""
        answered: asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes]] = asyncio.get_running_loop().create_future()

        def respond(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
            if not answered.done():  # the first answer is the answer
                answered.set_result((status, headers, body))

        self.respond = respond
        state = self.state
        app = state.registry.known(self.token, state.pool) or await state.registry.lookup(self.token, state.pool)
        limit = state.settings.max_body_bytes
        refusal = self.admit(app) or ingest.check_declared_size(self.content_length, limit)
        if refusal is not None or app is None:
            self.refuse(app, refusal or ingest.UNKNOWN_APPLICATION)
        else:
            body = await self.read(receive, limit)
            if isinstance(body, ingest.Refusal):
                self.refuse(app, body)
            else:
                self.proceed(app, body)  # admitted above
        status, headers, body = await answered
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def read(self, receive: Receive, limit: int) -> bytes | ingest.Refusal:
        """The whole body: at most ``limit`` bytes (413), within the client timeout (408)."""
        message = await receive()  # the whole body, usually: the platform's are a few hundred bytes
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False) and message["type"] == "http.request":
            return body if len(body) <= limit else ingest.too_large(limit, body, len(body))
        chunks = [body]
        size = len(body)
        timeout = self.state.settings.client_timeout_seconds
        try:
            async with asyncio.timeout(timeout):  # a client that trickles or stalls holds nothing for long
                while message["type"] == "http.request" and message.get("more_body", False):
                    if size > limit:
                        return ingest.too_large(limit, b"".join(chunks), size)
                    message = await receive()
                    chunk = message.get("body", b"")
                    chunks.append(chunk)
                    size += len(chunk)
        except TimeoutError:
            detail = {"seconds": timeout, "received_bytes": size}
            return ingest.Refusal(408, "request_timeout", detail, body=b"".join(chunks))
        if message["type"] != "http.request":  # the client left: nobody gets the answer, the quarantine keeps what came
            return ingest.Refusal(400, "incomplete_body", {"received_bytes": size}, body=b"".join(chunks))
        if size > limit:
            return ingest.too_large(limit, b"".join(chunks), size)
        return b"".join(chunks)

    # --- the lane ------------------------------------------------------------------------------

    def finish(self, body: bytes, respond: Respond) -> None:
        """The body came whole with the head (the lane claimed it)."""
        self.respond = respond
        state = self.state
        try:
            app = state.registry.known(self.token, state.pool)
            if app is None:
                self.later(self.looked_up(body))  # not in memory: the database is asked
            else:
                self.begin(app, body)
        except Exception as error:  # noqa: BLE001 - a defect: answered (500), logged and counted like any request
            self.failed(error)

    async def looked_up(self, body: bytes) -> None:
        state = self.state
        self.begin(await state.registry.lookup(self.token, state.pool), body)

    # --- from the body to the answer -----------------------------------------------------------

    def admit(self, app: Application | None) -> ingest.Refusal | None:
        if app is None:
            return ingest.UNKNOWN_APPLICATION
        self.notes["application"] = app.name
        return ingest.check_source(app, self.address()) if app.allowed_sources else None

    def begin(self, app: Application | None, body: bytes, *, verified: bool = False) -> None:
        """:meth:`admit`, then :meth:`proceed`."""
        refusal = self.admit(app)
        if refusal is not None or app is None:
            self.refuse(app, refusal or ingest.UNKNOWN_APPLICATION)
        else:
            self.proceed(app, body, verified=verified)

    def proceed(self, app: Application, body: bytes, *, verified: bool = False) -> None:
        """Check, parse, journal and answer an admitted request: now, or once the journal's
        flush is done."""
        self.notes["bytes"] = len(body)
        if app.push_key_pairs and not verified:
            refusal = self.verify(app, body)
            if refusal is not None and refusal.notes.get("signature") == "unknown_access_key":
                self.later(self.verified_again(app, body, refusal))
                return
            if refusal is not None:
                self.refuse(app, refusal)
                return
        outcome = ingest.accept(app, self.kind, self.content_type, body, self.received_at)
        if isinstance(outcome, ingest.Refusal):
            self.refuse(app, outcome)
            return
        self.notes.update(outcome.notes)
        for item in outcome.rejected:
            self.quarantine(app, item)
        if outcome.payload is None:
            self.answered(outcome, None)
            return
        try:
            # A client that reuses its connection sends its next request only after this
            # answer: others that could share this flush are waiting for it, not coming.
            self.state.journal.append_then(
                outcome.payload, partial(self.answered, outcome), wait_for_company=not self.scope.get(KEPT_ALIVE)
            )
        except JournalUnavailable as error:
            self.answered(outcome, error)

    def answered(self, outcome: ingest.Accepted, error: BaseException | None) -> None:
        if error is not None:
            log.error("callback.not_durable", reason=str(error), request_id=self.request_id.decode())
            self.answer(503, "not_durable", "the event could not be stored; nothing was acknowledged")
        elif outcome.answer is not None:
            self.answer(outcome.answer.status, outcome.answer.error, outcome.answer.detail)
        else:
            self.give(200, [(b"content-length", b"0"), (b"x-request-id", self.request_id)], b"")
            self.observe(200)

    async def verified_again(self, app: Application, body: bytes, refusal: ingest.Refusal) -> None:
        """A push signed with an access key we do not know yet may follow a rotation: look the
        application up again (rate-limited) and check once more."""
        state = self.state
        fresh = await state.registry.lookup(self.token, state.pool, refresh=True)
        if fresh is None or fresh.push_key_pairs == app.push_key_pairs:
            self.refuse(app, refusal)
        elif fresh.push_key_pairs and (refusal_again := self.verify(fresh, body)) is not None:
            self.refuse(fresh, refusal_again)
        else:
            self.begin(fresh, body, verified=True)  # signed by a new key, or verification turned off meanwhile

    def later(self, step: Coroutine[Any, Any, None]) -> None:
        """Go on in a task (the rare case that waits for the database)."""
        task = asyncio.get_running_loop().create_task(step)
        _pending.add(task)
        task.add_done_callback(self.ended)

    def ended(self, task: asyncio.Task[None]) -> None:
        _pending.discard(task)
        error = asyncio.CancelledError() if task.cancelled() else task.exception()
        if error is not None:
            self.failed(error)

    def failed(self, error: BaseException) -> None:
        log.error("callback.failed", error=type(error).__name__, request_id=self.request_id.decode(), exc_info=error)
        self.answer(500, "internal_error", "the request failed; nothing was acknowledged")

    def address(self) -> netaddr.IPAddress | None:
        if self.client is False:
            self.client = resolve_client(self.scope, self.trusted)
        return self.client

    def verify(self, app: Application, body: bytes) -> ingest.Refusal | None:
        scope = self.scope
        return ingest.check_signature(
            app, method="POST", raw_path=scope.get("raw_path") or scope["path"].encode(),
            query_string=scope.get("query_string", b""), headers=scope["headers"], body=body,
            now=self.received_at, max_skew=self.state.settings.signature_max_skew_seconds,
        )  # fmt: skip

    def refuse(self, app: Application | None, refusal: ingest.Refusal) -> None:
        if refusal.body is not None:
            self.quarantine(app, refusal)
        self.notes.update(refusal.notes)
        self.answer(refusal.status, refusal.error, refusal.detail)

    def quarantine(self, app: Application | None, refusal: ingest.Refusal) -> None:
        """Hand a refusal to the quarantine (counted always, its body kept within bounds); never
        blocks, never fails the answer."""
        self.notes["error"] = refusal.error
        content_type = self.content_type.decode("latin-1") if self.content_type is not None else None
        self.state.quarantine.add(
            app.id if app is not None else None, self.endpoint, self.received_at, refusal.error, refusal.detail,
            content_type, refusal.body or b"", body_bytes=refusal.body_bytes,
        )  # fmt: skip

    def answer(self, status: int, error: str, detail: object) -> None:
        self.notes["error"] = error
        body = orjson.dumps({"error": error, "detail": detail})
        self.give(status, [(b"content-length", b"%d" % len(body)), _JSON, (b"x-request-id", self.request_id)], body)
        self.observe(status)

    def give(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Hand the answer over, once. The lane's ``respond`` holds this call (to answer this
        request and no other): letting go of it here leaves no reference cycle, so a request's
        objects (the call, its scope, the connection's protocol and transport) are freed by
        reference counting when it ends, not by the garbage collector some requests later."""
        respond, self.respond = self.respond, _answered
        respond(status, headers, body)

    def observe(self, code: int) -> None:
        """The request's metrics and its one log line."""
        seconds = time.perf_counter() - self.start
        trusted = self.trusted
        metrics.TALLY.count(TEMPLATES[self.endpoint], code, seconds if code < 300 else None)
        client = self.address() if trusted or self.client is not False else None
        peer = self.scope.get("client")
        if client is None and not trusted:
            client_text = peer[0] if peer else "unknown"
        else:
            client_text = client.compressed if client is not None else "unknown"
        if trusted and peer and (client is None or peer[0] != client.compressed):
            self.notes["peer"] = peer[0]  # a proxy's: the client is what it forwarded
        logs.callback({
            "request_id": self.request_id.decode(), "endpoint": self.endpoint, "code": code,
            "ms": round(seconds * 1000, 2), "client": client_text, **self.notes,
        })  # fmt: skip


_pending: set[asyncio.Task[None]] = set()  # the tasks of :meth:`_Call.later`, kept until done


def _unanswerable(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    raise AssertionError("answered before the call knew where to")


def _answered(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    """A second answer (after a defect in writing the first) has nobody to go to."""


async def _answered_by_callbacks(request: Any) -> Any:  # pragma: no cover - Callbacks answers every POST
    raise AssertionError("POST /callbacks/... is answered by receiver.http.callbacks.Callbacks")


# In the router too: another method on these paths gets its 405 there, and the observing
# middleware knows their templates.
routes = [Route(template, _answered_by_callbacks, methods=["POST"]) for template in TEMPLATES.values()]
