"""The callbacks' short way through the application.

Every push the platform sends is a ``POST`` to one of three paths, and it is the hot path: a
campaign's reports arrive by the million. Starlette's router, its exception middleware and the
per-route ``Request``/``Response`` wrapping cost about as much CPU as parsing the report itself,
so a ``POST /callbacks/{token}/{endpoint}`` goes straight from the observing middleware to its
handler in :mod:`receiver.http.callbacks`. Everything else, including other methods on those
paths (``405``), goes through the router, where the same routes are registered.

The handler sees what the router would have given it: ``scope["route"]`` (the metrics and the
log line name the endpoint by it) and ``scope["path_params"]``; a :class:`Refusal` or any
exception the application maps to a response is answered the same way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .responses import Refusal

Handler = Callable[[Request], Awaitable[Response]]
ExceptionHandler = Callable[[Request, Exception], Awaitable[Response]]

PREFIX = "/callbacks/"


class CallbackFastPath:
    def __init__(
        self,
        app: ASGIApp,
        routes: list[BaseRoute],
        exception_handlers: Mapping[type[Exception], ExceptionHandler],
    ) -> None:
        self.app = app
        self.exception_handlers = dict(exception_handlers)
        # "status-report" -> (route, handler) for the routes under /callbacks/{token}/
        self.endpoints: dict[str, tuple[Route, Handler]] = {}
        for route in routes:
            if isinstance(route, Route) and route.path.startswith(PREFIX + "{token}/"):
                self.endpoints[route.path.rsplit("/", 1)[-1]] = (route, route.endpoint)  # type: ignore[assignment]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = self._match(scope)
        if target is None:
            await self.app(scope, receive, send)
            return
        route, handler, token = target
        scope["route"] = route
        scope["endpoint"] = handler
        scope["path_params"] = {"token": token}
        request = Request(scope, receive, send)
        try:
            response = await handler(request)
        except Exception as error:  # noqa: BLE001 - answered as the application's handlers say
            response = await self._handled(request, error)
        await response(scope, receive, send)

    def _match(self, scope: Scope) -> tuple[Route, Handler, str] | None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        path: str = scope["path"]
        if not path.startswith(PREFIX):
            return None
        token, slash, endpoint = path[len(PREFIX) :].partition("/")
        if not slash or not token:
            return None
        found = self.endpoints.get(endpoint)
        return None if found is None else (found[0], found[1], token)

    async def _handled(self, request: Request, error: Exception) -> Response:
        if isinstance(error, Refusal):
            return error.response()
        for cls in type(error).__mro__:
            handler: Any = self.exception_handlers.get(cls)  # type: ignore[call-overload]
            if handler is not None:
                return await handler(request, error)  # type: ignore[no-any-return]
        raise error
