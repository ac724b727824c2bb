"""The platform's side: three callback endpoints, one handler each.

Each handler reads the body, has the protocol module parse it, and acknowledges only once the
journal has the event on disk. A refused request gets a 4xx with a JSON reason and is queued for
the quarantine table; nothing here answers 200 for an event that is not durable.
"""

from __future__ import annotations

import asyncio
import time

import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from .. import netaddr, records
from ..applications import Application
from ..journal import frames
from ..journal.appender import JournalUnavailable
from ..protocol import (
    ProtocolError,
    parse_status_report_batch,
    parse_status_report_form,
    parse_uplink_form,
    signature,
)
from .middleware import client, note, note_batch, note_report, note_uplink
from .responses import Refusal, accepted, error_response

log = structlog.get_logger("receiver.callbacks")

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


async def status_report(request: Request) -> Response:
    app, body, received_at = await _receive(request, FORM)
    try:
        report = parse_status_report_form(body)
    except ProtocolError as error:
        return _refuse(request, app, Refusal(400, error.code, error.detail), body, received_at)
    note_report(request.scope, report)
    payloads = [records.report(app.id, "form", received_at, report, body.decode())]
    return await _durable(request, payloads, app=app, body=body, received_at=received_at)


async def status_reports(request: Request) -> Response:
    app, body, received_at = await _receive(request, JSON)
    try:
        batch = parse_status_report_batch(body)
    except ProtocolError as error:
        return _refuse(request, app, Refusal(400, error.code, error.detail), body, received_at)
    payloads = [records.report(app.id, "batch", received_at, report, raw) for report, raw in batch.reports]
    note_batch(request.scope, len(batch.reports), len(batch.rejected))
    if not batch.rejected or _oversized(payloads):  # oversized: refused whole, rejected items not twice
        return await _durable(request, payloads, app=app, body=body, received_at=received_at)
    rejected = [{"index": item.index, "error": item.error.code, "detail": item.error.detail} for item in batch.rejected]
    for item in batch.rejected:
        _quarantine(request, app, item.error.code, item.error.detail, item.raw.encode(), received_at)
    response = await _durable(request, payloads, app=app, body=body, received_at=received_at)
    if response.status_code != 200:
        return response
    detail = {"accepted": len(payloads), "rejected": rejected}
    return error_response(400, "invalid_items", detail)


async def uplink(request: Request) -> Response:
    app, body, received_at = await _receive(request, FORM)
    try:
        event = parse_uplink_form(body)
    except ProtocolError as error:
        return _refuse(request, app, Refusal(400, error.code, error.detail), body, received_at)
    note_uplink(request.scope, event)
    payloads = [records.uplink(app.id, received_at, event, body.decode())]
    return await _durable(request, payloads, app=app, body=body, received_at=received_at)


async def _receive(request: Request, media_type: str) -> tuple[Application, bytes, float]:
    """The application, the body and the time of receipt; raises :class:`Refusal` for the 4xx cases."""
    received_at = time.time()
    state = request.app.state
    app = await state.registry.lookup(request.path_params["token"], state.pool)
    if app is None:
        note(request.scope, error="unknown_application")  # the request's one log line says so
        raise Refusal(404, "unknown_application", "no application has this callback URL")
    note(request.scope, application=app.name)
    if app.allowed_sources and not netaddr.allowed(source := client(request.scope), app.allowed_sources):
        refusal = Refusal(403, "source_not_allowed", {"source": source and source.compressed})
        raise _refused(request, app, refusal, b"", received_at)  # the body unread
    body = await _read(request, state.settings.max_body_bytes, quarantine_app=app, received_at=received_at)
    note(request.scope, bytes=len(body))
    if app.push_key_pairs:
        app = await _authenticate(request, app, body, received_at)
    content_type = request.headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != media_type:
        raise _refused(request, app, Refusal(415, "unsupported_media_type", {"expected": media_type}), body, received_at)
    return app, body, received_at


async def _authenticate(request: Request, app: Application, body: bytes, received_at: float) -> Application:
    """An application with push keys accepts only pushes signed with one of them (401 otherwise).
    A push signed with an access key we do not know yet may follow a rotation: re-read the
    applications (rate-limited) and check once more."""
    try:
        _verify_signature(request, app, body, received_at)
        return app
    except signature.SignatureError as error:
        failure = error
    if failure.reason == "unknown_access_key":
        state = request.app.state
        fresh = await state.registry.lookup(request.path_params["token"], state.pool, refresh=True)
        if fresh is not None and fresh.push_key_pairs != app.push_key_pairs:
            if not fresh.push_key_pairs:
                return fresh  # verification was turned off meanwhile
            try:
                _verify_signature(request, fresh, body, received_at)
                return fresh
            except signature.SignatureError as error:
                failure = error
    note(request.scope, signature=failure.reason)  # in the request's one log line, beside error
    raise _refused(request, app, Refusal(401, "invalid_signature", failure.detail), body, received_at)


def _verify_signature(request: Request, app: Application, body: bytes, received_at: float) -> None:
    scope = request.scope
    signature.verify(
        app.push_keys,
        method=request.method,
        raw_path=scope.get("raw_path") or scope["path"].encode(),
        query_string=scope.get("query_string", b""),
        headers=scope["headers"],
        body=body,
        now=received_at,
        max_skew=request.app.state.settings.signature_max_skew_seconds,
    )


async def _read(request: Request, limit: int, *, quarantine_app: Application, received_at: float) -> bytes:
    """The whole body: at most ``limit`` bytes (413), within the client timeout (408)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _refused(request, quarantine_app, _too_large(limit), b"", received_at, body_bytes=int(declared))
    timeout = request.app.state.settings.client_timeout_seconds
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):  # a client that trickles or stalls holds nothing for long
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    start = b"".join(chunks)[:4096]
                    raise _refused(request, quarantine_app, _too_large(limit), start, received_at, body_bytes=size)
                chunks.append(chunk)
    except TimeoutError:
        refusal = Refusal(408, "request_timeout", {"seconds": timeout, "received_bytes": size})
        raise _refused(request, quarantine_app, refusal, b"".join(chunks), received_at) from None
    except ClientDisconnect:  # nobody gets the answer, but the quarantine keeps what came
        refusal = Refusal(400, "incomplete_body", {"received_bytes": size})
        raise _refused(request, quarantine_app, refusal, b"".join(chunks), received_at) from None
    return b"".join(chunks)


def _too_large(limit: int) -> Refusal:
    return Refusal(413, "body_too_large", {"max_bytes": limit})


def _oversized(payloads: list[bytes]) -> bool:
    return any(len(payload) > frames.MAX_PAYLOAD for payload in payloads)


async def _durable(
    request: Request, payloads: list[bytes], *, app: Application, body: bytes, received_at: float
) -> Response:
    if _oversized(payloads):
        # A record over the journal's frame limit (a body under the limit whose escapes multiply
        # it): refused whole, before any item of it is queued, and quarantined like any refusal.
        refusal = Refusal(413, "body_too_large", "the event is too large to store")
        return _refuse(request, app, refusal, body, received_at)
    journal = request.app.state.journal
    try:
        futures = [journal.append_nowait(payload) for payload in payloads]
        for future in futures:
            await future
    except JournalUnavailable as error:
        log.error("callback.not_durable", reason=str(error))
        return error_response(503, "not_durable", "the event could not be stored; nothing was acknowledged")
    return accepted()


def _refused(
    request: Request,
    app: Application,
    refusal: Refusal,
    body: bytes,
    received_at: float,
    *,
    body_bytes: int | None = None,
) -> Refusal:
    _quarantine(request, app, refusal.error, refusal.detail, body, received_at, body_bytes=body_bytes)
    return refusal


def _refuse(request: Request, app: Application, refusal: Refusal, body: bytes, received_at: float) -> Response:
    return _refused(request, app, refusal, body, received_at).response()


def _quarantine(
    request: Request,
    app: Application,
    error: str,
    detail: object,
    body: bytes,
    received_at: float,
    *,
    body_bytes: int | None = None,
) -> None:
    """Hand the refused request to the quarantine (counted always, its body kept within bounds);
    never blocks, never fails the response."""
    endpoint = request.url.path.rsplit("/", 1)[-1]
    note(request.scope, error=error)  # in the request's one log line
    content_type = request.headers.get("content-type")
    request.app.state.quarantine.add(
        app.id, endpoint, received_at, error, detail, content_type, body, body_bytes=body_bytes
    )


routes = [
    Route("/callbacks/{token}/status-report", status_report, methods=["POST"]),
    Route("/callbacks/{token}/status-reports", status_reports, methods=["POST"]),
    Route("/callbacks/{token}/uplink", uplink, methods=["POST"]),
]
