"""The platform's side: ``POST /callbacks/{token}/{status-report|status-reports|uplink}``.

This is the hot path (a campaign brings millions of these in minutes), so it is a raw ASGI
callable placed in front of Starlette's router: no ``Request`` or ``Response`` objects, one
pass over the headers, a prebuilt answer. It does only what makes the event durable and the
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
from typing import Any, Literal

import orjson
import structlog
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import ingest, logs, metrics, netaddr
from ..applications import Application
from ..journal.appender import JournalUnavailable
from ..journal.envelope import ENDPOINT_KINDS, Kind
from ..uvicorn_adapter import KEPT_ALIVE
from .middleware import SANE_ID, new_request_id, resolve_client

log = structlog.get_logger("receiver.callbacks")

PREFIX = "/callbacks/"
TEMPLATES = {name: f"/callbacks/{{token}}/{name}" for name in ENDPOINT_KINDS}
_OK_START = {"type": "http.response.start", "status": 200}
_EMPTY_BODY: Message = {"type": "http.response.body", "body": b""}
_JSON = (b"content-type", b"application/json")


class Callbacks:
    """ASGI middleware: answers the three callback endpoints itself, passes everything else on."""

    def __init__(self, app: ASGIApp, trusted_proxies: tuple[netaddr.IPNetwork, ...] = ()) -> None:
        self.app = app
        self.trusted = trusted_proxies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        token, slash, endpoint = scope["path"][len(PREFIX) :].partition("/")
        kind = ENDPOINT_KINDS.get(endpoint)
        if kind is None or not token or not slash:
            await self.app(scope, receive, send)  # the router answers (404)
            return
        start = time.perf_counter()
        received_at = time.time()
        request_id: bytes | None = None
        content_type = content_length = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"content-length":
                content_length = value
            elif name == b"x-request-id" and request_id is None and SANE_ID.fullmatch(value):
                request_id = value
        if request_id is None:
            request_id = new_request_id()
        call = _Call(self, scope, receive, send, endpoint, kind, request_id, start, received_at, content_type)
        await call.run(token, content_length)


class _Call:
    """One callback request, from its headers to its answer and its log line."""

    __slots__ = (
        "client",
        "content_type",
        "endpoint",
        "kind",
        "notes",
        "owner",
        "receive",
        "received_at",
        "request_id",
        "scope",
        "send",
        "start",
        "state",
    )  # fmt: skip

    def __init__(
        self, owner: Callbacks, scope: Scope, receive: Receive, send: Send, endpoint: str, kind: Kind,
        request_id: bytes, start: float, received_at: float, content_type: bytes | None,
    ) -> None:  # fmt: skip
        self.owner, self.scope, self.receive, self.send = owner, scope, receive, send
        self.endpoint, self.kind, self.request_id = endpoint, kind, request_id
        self.start, self.received_at, self.content_type = start, received_at, content_type
        self.state = scope["app"].state
        self.notes: dict[str, object] = {}
        self.client: netaddr.IPAddress | None | Literal[False] = False  # False: not resolved yet

    async def run(self, token: str, content_length: bytes | None) -> None:
        state = self.state
        app = state.registry.known(token, state.pool) or await state.registry.lookup(token, state.pool)
        if app is None:
            await self.refuse(None, ingest.UNKNOWN_APPLICATION)
            return
        self.notes["application"] = app.name
        if app.allowed_sources:
            refusal = ingest.check_source(app, self.address())
            if refusal is not None:
                await self.refuse(app, refusal)
                return
        limit = state.settings.max_body_bytes
        refusal = ingest.check_declared_size(content_length, limit)
        body = await self.read(limit) if refusal is None else b""
        if isinstance(body, ingest.Refusal):
            await self.refuse(app, body)
            return
        if refusal is not None:
            await self.refuse(app, refusal)
            return
        self.notes["bytes"] = len(body)
        if app.push_key_pairs:
            app, refusal = await self.authenticate(app, token, body)
            if refusal is not None:
                await self.refuse(app, refusal)
                return
        outcome = ingest.accept(app, self.kind, self.content_type, body, self.received_at)
        if isinstance(outcome, ingest.Refusal):
            await self.refuse(app, outcome)
            return
        self.notes.update(outcome.notes)
        for item in outcome.rejected:
            self.quarantine(app, item)
        try:
            if outcome.payload is not None:
                # A client that reuses its connection sends its next request only after this
                # answer: others that could share this flush are waiting for it, not coming.
                await state.journal.append_nowait(outcome.payload, wait_for_company=not self.scope.get(KEPT_ALIVE))
        except JournalUnavailable as error:
            log.error("callback.not_durable", reason=str(error), request_id=self.request_id.decode())
            await self.answer(503, "not_durable", "the event could not be stored; nothing was acknowledged")
            return
        if outcome.answer is not None:
            await self.answer(outcome.answer.status, outcome.answer.error, outcome.answer.detail)
            return
        await self.send({**_OK_START, "headers": [(b"content-length", b"0"), (b"x-request-id", self.request_id)]})
        await self.send(_EMPTY_BODY)
        self.observe(200)

    def address(self) -> netaddr.IPAddress | None:
        if self.client is False:
            self.client = resolve_client(self.scope, self.owner.trusted)
        return self.client

    async def read(self, limit: int) -> bytes | ingest.Refusal:
        """The whole body: at most ``limit`` bytes (413), within the client timeout (408)."""
        receive = self.receive
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

    async def authenticate(self, app: Application, token: str, body: bytes) -> tuple[Application, ingest.Refusal | None]:
        """A push signed with an access key we do not know yet may follow a rotation: look the
        application up again (rate-limited) and check once more."""
        refusal = self.verify(app, body)
        if refusal is None or refusal.notes.get("signature") != "unknown_access_key":
            return app, refusal
        state = self.state
        fresh = await state.registry.lookup(token, state.pool, refresh=True)
        if fresh is None or fresh.push_key_pairs == app.push_key_pairs:
            return app, refusal
        if not fresh.push_key_pairs:
            return fresh, None  # verification was turned off meanwhile
        return fresh, self.verify(fresh, body)

    def verify(self, app: Application, body: bytes) -> ingest.Refusal | None:
        scope = self.scope
        return ingest.check_signature(
            app, method="POST", raw_path=scope.get("raw_path") or scope["path"].encode(),
            query_string=scope.get("query_string", b""), headers=scope["headers"], body=body,
            now=self.received_at, max_skew=self.state.settings.signature_max_skew_seconds,
        )  # fmt: skip

    async def refuse(self, app: Application | None, refusal: ingest.Refusal) -> None:
        if refusal.body is not None:
            self.quarantine(app, refusal)
        self.notes.update(refusal.notes)
        await self.answer(refusal.status, refusal.error, refusal.detail)

    def quarantine(self, app: Application | None, refusal: ingest.Refusal) -> None:
        """Hand a refusal to the quarantine (counted always, its body kept within bounds); never
        blocks, never fails the answer."""
        self.notes["error"] = refusal.error
        content_type = self.content_type.decode("latin-1") if self.content_type is not None else None
        self.state.quarantine.add(
            app.id if app is not None else None, self.endpoint, self.received_at, refusal.error, refusal.detail,
            content_type, refusal.body or b"", body_bytes=refusal.body_bytes,
        )  # fmt: skip

    async def answer(self, status: int, error: str, detail: object) -> None:
        self.notes["error"] = error
        body = orjson.dumps({"error": error, "detail": detail})
        headers = [(b"content-length", str(len(body)).encode()), _JSON, (b"x-request-id", self.request_id)]
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})
        self.observe(status)

    def observe(self, code: int) -> None:
        """The request's metrics and its one log line."""
        seconds = time.perf_counter() - self.start
        owner = self.owner
        metrics.TALLY.count(TEMPLATES[self.endpoint], code, seconds if code < 300 else None)
        client = self.address() if owner.trusted or self.client is not False else None
        peer = self.scope.get("client")
        if client is None and not owner.trusted:
            client_text = peer[0] if peer else "unknown"
        else:
            client_text = client.compressed if client is not None else "unknown"
        if owner.trusted and peer and (client is None or peer[0] != client.compressed):
            self.notes["peer"] = peer[0]  # a proxy's: the client is what it forwarded
        logs.callback({
            "request_id": self.request_id.decode(), "endpoint": self.endpoint, "code": code,
            "ms": round(seconds * 1000, 2), "client": client_text, **self.notes,
        })  # fmt: skip


async def _answered_by_callbacks(request: Any) -> Any:  # pragma: no cover - Callbacks answers every POST
    raise AssertionError("POST /callbacks/... is answered by receiver.http.callbacks.Callbacks")


# In the router too: another method on these paths gets its 405 there, and the observing
# middleware knows their templates.
routes = [Route(template, _answered_by_callbacks, methods=["POST"]) for template in TEMPLATES.values()]
