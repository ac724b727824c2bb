"""The downstream services' side: /v1/blacklist, to check numbers before sending, and to care for it.

| route | |
|---|---|
| ``GET /v1/blacklist/{number}[?channel=CH]`` | ``200`` with the entry, ``404`` when the number may be sent to |
| ``POST /v1/blacklist/check`` | ``{"numbers": [...], "channel"?: CH}`` (up to 500) -> ``{"blacklisted": [...]}`` |
| ``PUT /v1/blacklist/{number}`` | ``{"reason": WHY, "channel"?: CH}``: blacklist by hand (``201`` new, ``200`` already) |
| ``DELETE /v1/blacklist/{number}`` | ``{"reason": WHY, "channel"?: CH}`` (or ``?reason=``): lift it (``404``: was not) |

Numbers in any common form; answers in E.164. The API key's name is recorded as who did it.
"""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .. import metrics
from ..api.models import (
    BlacklistChange,
    BlacklistCheck,
    BlacklistCheckResult,
    BlacklistEntries,
    BlacklistEntry,
    BlacklistLift,
    BlacklistRemoval,
    ChannelQuery,
)
from ..api.models import (
    Request as Validated,
)
from ..blacklist import store
from ..blacklist.mirror import Mirror
from ..blacklist.numbers import many_to_e164, to_e164
from ..blacklist.rules import Entry
from ..protocol import ProtocolError
from .auth import requires_key
from .responses import Refusal, error_response, model_response

MAX_BODY = 256 << 10
V = TypeVar("V", bound=Validated)


def _config(request: Request) -> store.Config:
    state = request.app.state
    config = getattr(state, "blacklist_config", None)
    if config is None:
        config = state.blacklist_config = store.Config.of(state.settings)
    return config


def _number(request: Request, raw: object) -> str:
    number = to_e164(raw, _config(request).region)
    if number is None:
        raise Refusal(400, "invalid_number", {"number": raw if isinstance(raw, str | int) else None})
    return number


def _valid(model: type[V], values: dict[str, Any]) -> V:
    try:
        return model.parse(values)
    except ProtocolError as error:
        raise Refusal(400, error.code, error.detail) from None


def _entries(found: list[Entry]) -> BlacklistEntries:
    return BlacklistEntries.of([BlacklistEntry.model_validate(e, from_attributes=True) for e in found])


async def _json(request: Request, *, required: bool = True) -> dict[str, Any]:
    body = await request.body()
    if not body and not required:
        return {}
    if len(body) > MAX_BODY:
        raise Refusal(413, "body_too_large", {"max_bytes": MAX_BODY})
    try:
        document = orjson.loads(body)  # a check's 500 numbers: a third of json.loads' time
    except (ValueError, RecursionError):
        raise Refusal(400, "invalid_json", "the body is not valid JSON") from None
    if not isinstance(document, dict):
        raise Refusal(400, "invalid_body", "expected a JSON object")
    return document


@requires_key
async def get_entry(request: Request) -> Response:
    number = _number(request, request.path_params["number"])
    channel = _valid(ChannelQuery, {"channel": request.query_params.get("channel")}).channel
    async with request.app.state.pool.acquire(timeout=5) as conn:
        found = await store.entries(conn, number, channel)
    if not found:
        return error_response(404, "not_blacklisted", {"number": number})
    return model_response(_entries(found))


@requires_key
async def check(request: Request) -> Response:
    document = await _json(request)
    body = _valid(BlacklistCheck, {"numbers": document.get("numbers"), "channel": document.get("channel")})
    raw, channel = body.numbers, body.channel
    parsed = many_to_e164(raw, _config(request).region)
    if None in parsed:
        invalid = [
            {"index": index, "number": item if isinstance(item, str | int) else None}
            for index, (item, number) in enumerate(zip(raw, parsed, strict=True))
            if number is None
        ]
        raise Refusal(400, "invalid_numbers", {"invalid": invalid})
    numbers = [n for n in parsed if n is not None]
    if not numbers:
        return model_response(BlacklistCheckResult(blacklisted=[]))
    mirror: Mirror | None = request.app.state.blacklist_mirror
    found = mirror.blacklisted(numbers, channel) if mirror is not None else None
    if found is not None:
        metrics.BLACKLIST_CHECKS.labels("memory").inc()
    else:
        metrics.BLACKLIST_CHECKS.labels("database").inc()
        async with request.app.state.pool.acquire(timeout=5) as conn:
            found = await store.blacklisted(conn, numbers, channel)
    return model_response(BlacklistCheckResult(blacklisted=[n for n in dict.fromkeys(numbers) if n in found]))


@requires_key
async def put_entry(request: Request) -> Response:
    number = _number(request, request.path_params["number"])
    document = await _json(request)
    change = _valid(BlacklistChange, {
        "reason": document.get("reason", request.query_params.get("reason")), "channel": document.get("channel"),
    })  # fmt: skip
    reason, channel = change.reason, change.channel
    async with request.app.state.pool.acquire(timeout=5) as conn, conn.transaction():
        created = await store.add(
            conn, _config(request), number, reason=reason, actor=request.state.api_key_name, channel=channel
        )
        found = await store.entries(conn, number)
    await _synced(request)
    return model_response(_entries(found), status=201 if created else 200)


@requires_key
async def delete_entry(request: Request) -> Response:
    number = _number(request, request.path_params["number"])
    document = await _json(request, required=False)
    lift = _valid(BlacklistLift, {
        "reason": document.get("reason", request.query_params.get("reason")),
        "channel": document.get("channel", request.query_params.get("channel")),
    })  # fmt: skip
    reason, channel = lift.reason, lift.channel
    async with request.app.state.pool.acquire(timeout=5) as conn, conn.transaction():
        removed = await store.remove(
            conn, _config(request), number, reason=reason, actor=request.state.api_key_name, channel=channel
        )
        left = await store.entries(conn, number)
    await _synced(request)
    if not removed:
        return error_response(404, "not_blacklisted", {"number": number, "channel": channel})
    removal = BlacklistRemoval(
        number=number,
        removed=[BlacklistEntry.model_validate(e, from_attributes=True) for e in removed],
        blacklisted=bool(left),
    )
    return model_response(removal)


async def _synced(request: Request) -> None:
    """After a change by hand: this worker's checks see it before the answer goes out (the
    other workers' a few milliseconds after its commit; see blacklist/mirror.py)."""
    mirror: Mirror | None = request.app.state.blacklist_mirror
    if mirror is not None:
        await mirror.sync()


_ENTRY = {"GET": get_entry, "HEAD": get_entry, "PUT": put_entry, "DELETE": delete_entry}


async def entry(request: Request) -> Response:
    """One route for the three methods, so that a 405 lists all of them in ``Allow``."""
    return await _ENTRY[request.method](request)


routes: list[BaseRoute] = [
    Route("/v1/blacklist/check", check, methods=["POST"]),
    Route("/v1/blacklist/{number}", entry, methods=["GET", "PUT", "DELETE"]),
]
