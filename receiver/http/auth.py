"""``Authorization: Bearer <api key>`` for every ``/v1`` route."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from .responses import error_response

Endpoint = Callable[[Request], Awaitable[Response]]


def requires_key(endpoint: Endpoint) -> Endpoint:
    async def guarded(request: Request) -> Response:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        found = None
        if scheme.lower() == "bearer" and key.strip():
            found = await request.app.state.api_keys.find(key.strip(), request.app.state.pool)
        if found is None:
            return error_response(401, "unauthorized", "a valid API key is required: Authorization: Bearer <key>")
        request.state.api_key_name = found.name
        request.state.api_key_application = found.application_id
        return await endpoint(request)

    guarded.__name__ = endpoint.__name__
    guarded.__doc__ = endpoint.__doc__
    return guarded
