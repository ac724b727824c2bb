"""The uvicorn internals receiver/uvicorn_adapter.py relies on are still there, as it expects them.

A uvicorn release that renames, removes or reshapes one of them fails here, naming it, before
any behaviour test has to be puzzled over. What the overrides do is tested against a real
``receiver serve``: tests/test_slow_clients.py (the deadlines), tests/test_tls.py (SIGHUP with
several workers), tests/test_events.py (SIGTERM ends open streams)."""

from __future__ import annotations

import asyncio
import inspect
import signal
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState
from uvicorn.supervisors.multiprocess import SIGNALS, Multiprocess

from receiver import uvicorn_adapter
from receiver.uvicorn_adapter import (
    INTERNALS,
    GuardedHttpToolsProtocol,
    Supervisor,
    configure,
    server_exit_flag,
)


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def loaded_config() -> uvicorn.Config:
    config = configure(uvicorn.Config(hello, lifespan="off", log_level="warning"), client_timeout=3.0)
    config.load()
    return config


@pytest.fixture(scope="module")
def live() -> dict[type, object]:
    """One instance of each class whose instance attributes the adapter reads, as uvicorn makes
    them: a protocol after a request on a real socket, its cycle and flow control, a server, a
    supervisor (whose signal handlers are put back)."""
    config = loaded_config()

    async def exchange() -> GuardedHttpToolsProtocol:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        protocol = GuardedHttpToolsProtocol(config, ServerState(), {}, loop)
        await loop.connect_accepted_socket(lambda: protocol, ours)
        reader, writer = await asyncio.open_connection(sock=theirs)
        writer.write(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        assert (await reader.readuntil(b"ok")).startswith(b"HTTP/1.1 200 OK")
        writer.close()
        return protocol

    protocol = asyncio.run(exchange())
    handlers = {sig: signal.getsignal(sig) for sig in SIGNALS}
    try:
        supervisor = Supervisor(config, sockets=[])
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return {
        HttpToolsProtocol: protocol,
        RequestResponseCycle: protocol.cycle,
        FlowControl: protocol.flow,
        uvicorn.Server: uvicorn.Server(config),
        Multiprocess: supervisor,
    }


@pytest.mark.parametrize(("owner", "name", "kind", "params"), INTERNALS, ids=[f"{o.__name__}.{n}" for o, n, *_ in INTERNALS])
def test_each_internal_is_there_as_the_adapter_expects(
    live: dict[type, object], owner: type, name: str, kind: str, params: tuple[str, ...]
) -> None:
    where = f"uvicorn {uvicorn.__version__}: {owner.__module__}.{owner.__qualname__}.{name}"
    if kind == "method":
        function = inspect.getattr_static(owner, name, None)
        assert inspect.isfunction(function), f"{where} is no longer a method"
        assert tuple(inspect.signature(function).parameters)[1:] == params, f"{where} takes other parameters"
    elif kind == "class attribute":
        assert hasattr(owner, name), f"{where} is gone"
    else:
        assert hasattr(live[owner], name), f"{where} is no longer set on its instances"


@pytest.fixture
def sigterm_restored() -> Iterator[None]:
    """Put back the handlers uvicorn's supervisor and server install."""
    handlers = {sig: signal.getsignal(sig) for sig in SIGNALS}
    yield
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def test_the_supervisor_gets_sighup_through_handle_hup(sigterm_restored: None) -> None:
    """Multiprocess queues each signal and dispatches it to ``handle_<name>``: SIGHUP must reach
    the override (which tests/test_tls.py sees pass it on to real workers)."""
    calls = []

    class Probe(Supervisor):
        def handle_hup(self) -> None:
            calls.append("hup")

    probe = Probe(loaded_config(), sockets=[])
    probe.signal_queue.append(signal.SIGHUP)
    probe.handle_signals()
    assert calls == ["hup"]


def test_the_exit_flag_is_the_running_servers(sigterm_restored: None) -> None:
    assert server_exit_flag() is None, "no uvicorn server: no flag"
    server = uvicorn.Server(loaded_config())
    with server.capture_signals():
        flag = server_exit_flag()
        assert flag is not None and flag() is False
        server.should_exit = True  # what its SIGTERM handler sets
        assert flag() is True
    assert server_exit_flag() is None


def test_the_deadline_travels_on_the_config_into_the_protocol() -> None:
    config = loaded_config()
    assert config.http == uvicorn_adapter.HTTP and config.http_protocol_class is GuardedHttpToolsProtocol
    protocol = GuardedHttpToolsProtocol(config, ServerState(), {}, asyncio.new_event_loop())
    protocol.loop.close()
    assert protocol.client_timeout == 3.0


def test_each_request_says_how_many_came_before_it_on_its_connection() -> None:
    """What lets a request on a kept-alive connection skip the journal's group window."""
    seen: list[object] = []

    async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope.get(uvicorn_adapter.KEPT_ALIVE))
        await hello(scope, receive, send)

    config = configure(uvicorn.Config(echo, lifespan="off", log_level="warning"), client_timeout=3.0)
    config.load()

    async def connection(requests: int) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        await loop.connect_accepted_socket(lambda: GuardedHttpToolsProtocol(config, ServerState(), {}, loop), ours)
        reader, writer = await asyncio.open_connection(sock=theirs)
        for _ in range(requests):
            writer.write(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            assert (await reader.readuntil(b"ok")).startswith(b"HTTP/1.1 200 OK")
        writer.close()

    async def scenario() -> None:
        await connection(3)
        await connection(1)

    asyncio.run(scenario())
    assert seen == [0, 1, 2, 0]
