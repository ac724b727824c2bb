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

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .. import metrics
from ..blacklist import store
from ..blacklist.mirror import Mirror
from ..blacklist.numbers import many_to_e164, to_e164
from .auth import requires_key
from .responses import Refusal, error_response

MAX_NUMBERS = 500  # the send API's maximum per request
MAX_BODY = 256 << 10
MAX_TEXT = 500


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


def _channel(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 21 or "\x00" in value:
        raise Refusal(400, "invalid_field", {"field": "channel", "reason": "a channel number, up to 21 characters"})
    return value


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


def _reason(document: dict[str, Any], request: Request) -> str:
    reason = document.get("reason", request.query_params.get("reason"))
    if not isinstance(reason, str) or not reason.strip():
        raise Refusal(400, "missing_field", {"field": "reason", "reason": "say why, for the history"})
    if len(reason) > MAX_TEXT or "\x00" in reason:
        raise Refusal(400, "invalid_field", {"field": "reason", "max_length": MAX_TEXT})
    return reason.strip()


@requires_key
async def get_entry(request: Request) -> Response:
    number = _number(request, request.path_params["number"])
    channel = _channel(request.query_params.get("channel"))
    async with request.app.state.pool.acquire(timeout=5) as conn:
        found = await store.entries(conn, number, channel)
    if not found:
        return error_response(404, "not_blacklisted", {"number": number})
    return JSONResponse(store.document(found))


@requires_key
async def check(request: Request) -> Response:
    document = await _json(request)
    raw = document.get("numbers")
    if not isinstance(raw, list):
        raise Refusal(400, "invalid_field", {"field": "numbers", "reason": "expected a list of numbers"})
    if len(raw) > MAX_NUMBERS:
        raise Refusal(400, "too_many_numbers", {"max_items": MAX_NUMBERS, "got": len(raw)})
    channel = _channel(document.get("channel"))
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
        return JSONResponse({"blacklisted": []})
    mirror: Mirror | None = request.app.state.blacklist_mirror
    found = mirror.blacklisted(numbers, channel) if mirror is not None else None
    if found is not None:
        metrics.BLACKLIST_CHECKS.labels("memory").inc()
    else:
        metrics.BLACKLIST_CHECKS.labels("database").inc()
        async with request.app.state.pool.acquire(timeout=5) as conn:
            found = await store.blacklisted(conn, numbers, channel)
    return Response(orjson.dumps({"blacklisted": [n for n in dict.fromkeys(numbers) if n in found]}),
                    media_type="application/json")  # fmt: skip


@requires_key
async def put_entry(request: Request) -> Response:
    number = _number(request, request.path_params["number"])
    document = await _json(request)
    reason = _reason(document, request)
    channel = _channel(document.get("channel"))
    async with request.app.state.pool.acquire(timeout=5) as conn, conn.transaction():
        created = await store.add(
            conn, _config(request), number, reason=reason, actor=request.state.api_key_name, channel=channel
        )
        found = await store.entries(conn, number)
    await _synced(request)
    return JSONResponse(store.document(found), status_code=201 if created else 200)


@requires_key
async def delete_entry(request: Request) -> Response:
    number = _number(request, request.path_params["number"])
    document = await _json(request, required=False)
    reason = _reason(document, request)
    channel = _channel(document.get("channel", request.query_params.get("channel")))
    async with request.app.state.pool.acquire(timeout=5) as conn, conn.transaction():
        removed = await store.remove(
            conn, _config(request), number, reason=reason, actor=request.state.api_key_name, channel=channel
        )
        left = await store.entries(conn, number)
    await _synced(request)
    if not removed:
        return error_response(404, "not_blacklisted", {"number": number, "channel": channel})
    return JSONResponse(
        {
            "number": number,
            "removed": [store.entry_document(e) for e in removed],
            "blacklisted": bool(left),
        }
    )


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
