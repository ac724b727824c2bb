"""The few responses the service gives, in one place."""

from __future__ import annotations

import asyncpg
from starlette.responses import JSONResponse, Response

from ..api.models import Shape

# PostgreSQL away (down, restarting, stopping under a query, out of reach): a 503 for the query
# API, polling for an event stream; never a 500.
DATABASE_AWAY: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError, asyncpg.CrashShutdownError, asyncpg.InterfaceError,
)  # fmt: skip


class Refusal(Exception):
    """A request we refuse: status code, machine-readable reason, and where it went wrong."""

    def __init__(self, status: int, error: str, detail: object = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail

    def response(self) -> JSONResponse:
        return error_response(self.status, self.error, self.detail)


def error_response(status: int, error: str, detail: object = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status)


def model_response(body: Shape, status: int = 200) -> Response:
    """An answer of the API, serialised from its model."""
    return Response(body.json_bytes(), status_code=status, media_type="application/json")


def accepted() -> Response:
    """What the platform expects: 200 with an empty body."""
    return Response(status_code=200)
