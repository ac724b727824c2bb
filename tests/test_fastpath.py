"""The callbacks' short way (receiver/http/fastpath.py): the same answers as through the router."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from receiver.http.fastpath import CallbackFastPath
from receiver.http.responses import Refusal


async def handler(request: Request) -> Response:
    token = request.path_params["token"]
    if token == "refuse":
        raise Refusal(400, "nope", {"why": "asked to"})
    if token == "disk":
        raise OSError("gone")
    if token == "bug":
        raise RuntimeError("a bug")
    route = request.scope["route"].path
    return PlainTextResponse(f"{token} {route}")


async def database_away(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": "database_unavailable"}, status_code=503)


def make_app(fast: bool) -> Starlette:
    routes = [
        Route("/callbacks/{token}/status-report", handler, methods=["POST"]),
        Route("/callbacks/{token}/uplink", handler, methods=["POST"]),
    ]

    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Refusal)
        return exc.response()

    handlers = {Refusal: refused, OSError: database_away}
    middleware = [Middleware(CallbackFastPath, routes=routes, exception_handlers=handlers)] if fast else []
    return Starlette(routes=routes, middleware=middleware, exception_handlers=handlers)  # type: ignore[arg-type]


CASES = [
    ("POST", "/callbacks/abc/status-report"),
    ("POST", "/callbacks/abc/uplink"),
    ("POST", "/callbacks/refuse/uplink"),
    ("POST", "/callbacks/disk/uplink"),
    ("GET", "/callbacks/abc/uplink"),
    ("POST", "/callbacks/abc/status-reports"),
    ("POST", "/callbacks//uplink"),
    ("POST", "/callbacks/abc/uplink/"),
    ("POST", "/callbacks/a/b/uplink"),
    ("POST", "/callbacks/abc"),
    ("POST", "/callbacks/%E4%BD%A0/uplink"),
]


@pytest.mark.parametrize(("method", "path"), CASES)
def test_the_short_way_answers_as_the_router_does(method: str, path: str) -> None:
    with TestClient(make_app(fast=False)) as slow, TestClient(make_app(fast=True)) as fast:
        expected = slow.request(method, path, follow_redirects=False)
        got = fast.request(method, path, follow_redirects=False)
    assert (got.status_code, got.content) == (expected.status_code, expected.content)


def test_an_unexpected_error_is_still_a_server_error() -> None:
    with TestClient(make_app(fast=True), raise_server_exceptions=False) as client:
        assert client.post("/callbacks/bug/uplink").status_code == 500


@pytest.mark.parametrize(
    ("method", "path", "taken"),
    [("POST", "/callbacks/abc/uplink", True), ("GET", "/callbacks/abc/uplink", False),
     ("POST", "/callbacks/abc/uplink/", False), ("POST", "/callbacks//uplink", False),
     ("POST", "/v1/sent", False)],
)  # fmt: skip
def test_only_a_post_to_a_callback_takes_the_short_way(method: str, path: str, taken: bool) -> None:
    fast = CallbackFastPath(make_app(fast=False), make_app(fast=False).routes, {})
    assert (fast._match({"type": "http", "method": method, "path": path}) is not None) == taken
