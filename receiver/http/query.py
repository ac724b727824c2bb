"""The downstream services' side: /v1 registration of sends, and queries about messages and replies."""

from __future__ import annotations

import json

import asyncpg
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .. import sends
from ..api.models import (
    BlacklistEntry,
    MessagePage,
    MessageQuery,
    SentBlacklisted,
    SentResult,
    UplinkPage,
    UplinkQuery,
)
from ..correlation import queries
from ..correlation.sent import parse_sent
from ..protocol import ProtocolError
from .auth import requires_key
from .responses import error_response, model_response

MAX_SENT_BODY = 1 << 20


@requires_key
async def post_sent(request: Request) -> Response:
    """Register the Huawei send API's response (or that response wrapped with the send's context)."""
    body = await request.body()
    if len(body) > MAX_SENT_BODY:
        return error_response(413, "body_too_large", {"max_bytes": MAX_SENT_BODY})
    try:
        messages, named = parse_sent(json.loads(body))
    except (ValueError, RecursionError) as error:
        if isinstance(error, ProtocolError):
            return error_response(400, error.code, error.detail)
        return error_response(400, "invalid_json", "the body is not valid JSON")
    try:
        async with request.app.state.pool.acquire(timeout=5) as conn:
            application_id = await sends.application_of(conn, request.state.api_key_application, named)
            done = await sends.register(
                conn, messages, request.state.api_key_name, request.app.state.settings, application_id
            )
    except ProtocolError as error:
        status = 403 if isinstance(error, sends.ApplicationNotAllowed) else 400
        return error_response(status, error.code, error.detail)
    except asyncpg.DataError as error:  # text PostgreSQL cannot store, e.g. \u0000 inside the raw item
        return error_response(400, "invalid_body", {"reason": type(error).__name__})
    return model_response(
        SentResult(
            registered=len(done.new),
            already_registered=len(messages) - len(done.new),
            blacklisted=[
                SentBlacklisted(
                    sms_msg_id=sms_msg_id,
                    to=entry.number,
                    blacklisted_at_send=BlacklistEntry.model_validate(entry, from_attributes=True),
                )
                for sms_msg_id, entry in sorted(done.blacklisted_at_send.items())
            ],
        )
    )


@requires_key
async def get_message(request: Request) -> Response:
    sms_msg_id = request.path_params["sms_msg_id"]
    found = None
    if "\x00" not in sms_msg_id:  # no stored id has one, and PostgreSQL text cannot carry it
        async with request.app.state.pool.acquire(timeout=5) as conn:
            found = await queries.message(conn, sms_msg_id, window=request.app.state.settings.report_window)
    if found is None:
        return error_response(404, "not_found", "no send and no report has this smsMsgId")
    return model_response(found)


@requires_key
async def list_messages(request: Request) -> Response:
    try:
        query = MessageQuery.parse(request.query_params)
        flag = query.blacklisted_at_send
        async with request.app.state.pool.acquire(timeout=5) as conn:
            items, cursor = await queries.messages(
                conn, to=query.to, state=query.state, since=query.since, until=query.until, cursor=query.cursor,
                limit=query.limit, blacklisted_at_send=flag == "true" if flag is not None else None,
                window=request.app.state.settings.report_window,
            )  # fmt: skip
    except ProtocolError as error:
        return error_response(400, error.code, error.detail)
    return model_response(MessagePage(messages=items, cursor=cursor))


@requires_key
async def list_uplinks(request: Request) -> Response:
    """Replies in a stable order; pass the returned ``cursor`` back to tail new ones, none skipped."""
    try:
        query = UplinkQuery.parse(request.query_params)
        async with request.app.state.pool.acquire(timeout=5) as conn:
            items, cursor = await queries.uplinks(conn, cursor=query.cursor, limit=query.limit)
    except ProtocolError as error:
        return error_response(400, error.code, error.detail)
    return model_response(UplinkPage(uplinks=items, cursor=cursor))


routes: list[BaseRoute] = [
    Route("/v1/sent", post_sent, methods=["POST"]),
    Route("/v1/messages", list_messages, methods=["GET"]),
    Route("/v1/messages/{sms_msg_id}", get_message, methods=["GET"]),
    Route("/v1/uplinks", list_uplinks, methods=["GET"]),
]
