"""The uvicorn internals receiver/uvicorn_adapter.py relies on are still there, as it expects them.

A uvicorn release that renames, removes or reshapes one of them fails here, naming it, before
any behaviour test has to be puzzled over. What the overrides do is tested against a real
``receiver serve``: tests/test_slow_clients.py (the deadlines), tests/test_tls.py (SIGHUP with
several workers), tests/test_events.py (SIGTERM ends open streams)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import signal
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest
import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState
from uvicorn.supervisors.multiprocess import SIGNALS, Multiprocess

from receiver import tls, uvicorn_adapter
from receiver.callback_protocol import CallbackProtocol
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
        ServerState: ServerState(),
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


def _families() -> list[str]:
    families = ["ipv4", "tls", "unix"]
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::1", 0))
        families.append("ipv6")
    return families


@pytest.mark.parametrize("loop_factory", ["uvloop", "asyncio"])
@pytest.mark.parametrize("family", _families())
def test_a_connections_addresses_in_the_scope_are_uvicorns(family: str, loop_factory: str, tmp_path: Path) -> None:
    """The receiver's protocols read a connection's addresses from the transport, not from a
    socket object as uvicorn does: the scope's client, server and scheme stay what uvicorn's
    protocol gives, the lane's on the callback protocol too (``tls``: IPv4 through the TLS
    transport of each loop)."""
    server_tls = client_tls = None
    if family == "tls":
        server_tls = tls.server_context(*tls.self_signed(tmp_path))
        client_tls = ssl.create_default_context()
        client_tls.check_hostname, client_tls.verify_mode = False, ssl.CERT_NONE
    scopes: dict[type, dict[str, Any]] = {}
    ends: dict[type, tuple[Any, Any]] = {}  # the client's own view: (its address, the server's)

    def app_for(kind: type) -> Any:
        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            scopes[kind] = scope
            await hello(scope, receive, send)

        return app

    async def served(kind: type) -> None:
        config = configure(uvicorn.Config(app_for(kind), lifespan="off", log_level="warning"), client_timeout=3.0)
        config.load()
        loop = asyncio.get_running_loop()

        class Recorder:
            """The callback protocol gives its scope to a lane: this one keeps it and answers ok."""

            def claim(self, scope: dict[str, Any]) -> Recorder:
                scopes[kind] = scope
                return self

            def finish(self, body: bytes, respond: Any) -> None:
                respond(200, [(b"content-length", b"2")], b"ok")

        def factory() -> Any:
            return kind(config, ServerState(), {uvicorn_adapter.LANE: Recorder()}, loop)

        if family == "unix":
            path = str(tmp_path / f"{kind.__name__}.sock")
            server = await loop.create_unix_server(factory, path)
            reader, writer = await asyncio.open_unix_connection(path)
        else:
            host = "::1" if family == "ipv6" else "127.0.0.1"
            server = await loop.create_server(factory, host, 0, ssl=server_tls)
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection(host, port, ssl=client_tls)
        ends[kind] = (writer.get_extra_info("sockname"), writer.get_extra_info("peername"))
        if kind is CallbackProtocol:  # answered on it, through the lane
            writer.write(post("/lane", b"x"))
        else:
            writer.write(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        assert (await reader.readuntil(b"ok")).startswith(b"HTTP/1.1 200 OK")
        writer.close()
        server.close()
        await server.wait_closed()

    async def both() -> None:
        await served(HttpToolsProtocol)
        await served(GuardedHttpToolsProtocol)
        await served(CallbackProtocol)

    if loop_factory == "uvloop":
        import uvloop

        uvloop.run(both())
    else:
        asyncio.run(both())

    def seen(kind: type) -> tuple[Any, ...]:
        """The scope's addresses, each port that is the client's or the server's named so."""
        scope, (client, server) = scopes[kind], ends[kind]
        names = {server: "socket path"} if family == "unix" else {client[1]: "client port", server[1]: "server port"}

        def named(address: Any) -> Any:
            if address is None:
                return None
            if family == "unix":
                return (names.get(address[0], address[0]), address[1])
            return (address[0], names.get(address[1], address[1]))

        return named(scope["client"]), named(scope["server"]), scope["scheme"]

    assert seen(GuardedHttpToolsProtocol) == seen(HttpToolsProtocol)
    assert seen(CallbackProtocol) == seen(HttpToolsProtocol)
    expected = (None, ("socket path", None)) if family == "unix" else ((ANY, "client port"), (ANY, "server port"))
    assert seen(HttpToolsProtocol) == (*expected, "https" if family == "tls" else "http")


# --- the direct lane ------------------------------------------------------------------------------


class Spy:
    """A lane that takes POST /lane: echoes the body, at once or when told (``hold``)."""

    def __init__(self, hold: bool = False, fail: bool = False) -> None:
        self.hold, self.fail = hold, fail
        self.bodies: list[bytes] = []
        self.held: list[tuple[bytes, Any]] = []

    def claim(self, scope: dict[str, Any]) -> Spy | None:
        return self if scope["method"] == "POST" and scope["path"] == "/lane" else None

    def finish(self, body: bytes, respond: Any) -> None:
        self.bodies.append(body)
        if self.fail:
            raise RuntimeError("a defect")
        if self.hold:
            self.held.append((body, respond))
        else:
            respond(200, [(b"content-length", b"%d" % len(body))], body)

    def release(self) -> None:
        for body, respond in self.held:
            respond(200, [(b"content-length", b"%d" % len(body))], body)
        self.held.clear()


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ASGI application behind the lane: echoes the body with ``asgi:`` in front."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    answer = b"asgi:" + body
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(answer))]})
    await send({"type": "http.response.body", "body": answer})


def post(path: str, body: bytes, *extra: bytes, version: bytes = b"1.1") -> bytes:
    head = b"POST %s HTTP/%s\r\nHost: test\r\ncontent-length: %d\r\n" % (path.encode(), version, len(body))
    return head + b"".join(h + b"\r\n" for h in extra) + b"\r\n" + body


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes], bytes]:
    status = int((await reader.readline()).split()[1])
    headers = {}
    while (line := await reader.readline()) != b"\r\n":
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, await reader.readexactly(int(headers.get(b"content-length", b"0")))


# The protocol a connection starts with: uvicorn's (with the lane), or the callbacks' own, which
# hands uvicorn's whatever it does not answer itself. A client cannot tell them apart.
FIRST = [GuardedHttpToolsProtocol, CallbackProtocol]


@pytest.fixture(params=FIRST, ids=["uvicorn", "callback-protocol"])
def first(request: pytest.FixtureRequest) -> type[Any]:
    return request.param  # type: ignore[no-any-return]


async def laned(lane: Spy, first: type[Any]) -> tuple[Any, asyncio.StreamReader, asyncio.StreamWriter]:
    config = configure(uvicorn.Config(echo_app, lifespan="off", log_level="warning"), client_timeout=3.0)
    config.load()
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    state = ServerState()
    state.default_headers = [(b"date", b"Sat, 05 Dec 2026 03:00:00 GMT")]
    protocol = first(config, state, {uvicorn_adapter.LANE: lane}, loop)
    await loop.connect_accepted_socket(lambda: protocol, ours)
    reader, writer = await asyncio.open_connection(sock=theirs)
    return protocol, reader, writer


def test_a_callback_whose_body_comes_with_its_head_is_answered_by_the_lane_on_a_kept_alive_connection(first: type[Any]) -> None:
    lane = Spy()

    async def scenario() -> list[tuple[int, dict[bytes, bytes], bytes]]:
        _, reader, writer = await laned(lane, first)
        answers = []
        for body in (b"one", b"two"):
            writer.write(post("/lane", body))
            answers.append(await read_answer(reader))
        writer.write(b"GET /other HTTP/1.1\r\nHost: test\r\n\r\n")  # not the lane's: the application's
        answers.append(await read_answer(reader))
        writer.close()
        return answers

    answers = asyncio.run(scenario())
    assert [(status, body) for status, _, body in answers] == [(200, b"one"), (200, b"two"), (200, b"asgi:")]
    assert answers[0][1] == {b"date": b"Sat, 05 Dec 2026 03:00:00 GMT", b"content-length": b"3"}
    assert lane.bodies == [b"one", b"two"]


def test_a_body_that_comes_after_its_head_goes_to_the_application_whole(first: type[Any]) -> None:
    lane = Spy()

    async def scenario() -> tuple[int, dict[bytes, bytes], bytes]:
        _, reader, writer = await laned(lane, first)
        request = post("/lane", b"in two pieces")
        writer.write(request[:-6])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(request[-6:])
        answer = await read_answer(reader)
        writer.close()
        return answer

    assert asyncio.run(scenario())[2] == b"asgi:in two pieces"
    assert lane.bodies == []


def test_pipelined_requests_are_answered_in_order_behind_a_lane_answer_that_waits(first: type[Any]) -> None:
    lane = Spy(hold=True)

    async def scenario() -> list[bytes]:
        _, reader, writer = await laned(lane, first)
        writer.write(post("/lane", b"first") + post("/elsewhere", b"second") + post("/lane", b"third"))
        await asyncio.sleep(0.1)  # the application could answer the second by now: it must wait its turn
        lane.release()
        bodies = [(await read_answer(reader))[2] for _ in range(3)]
        writer.close()
        return bodies

    assert asyncio.run(scenario()) == [b"first", b"asgi:second", b"asgi:third"]
    assert lane.bodies == [b"first"]  # the third came while an answer was under way: the application's


@pytest.mark.parametrize(
    ("extra", "version"), [((b"connection: close",), b"1.1"), ((), b"1.0")], ids=["connection-close", "http-1.0"]
)
def test_a_lane_answer_that_ends_its_connection_says_so_and_closes(extra: tuple[bytes, ...], version: bytes, first: type[Any]) -> None:
    async def scenario() -> tuple[dict[bytes, bytes], bytes]:
        _, reader, writer = await laned(Spy(), first)
        writer.write(post("/lane", b"bye", *extra, version=version))
        _, headers, _ = await read_answer(reader)
        rest = await asyncio.wait_for(reader.read(), 5)  # EOF: the server closed it
        writer.close()
        return headers, rest

    headers, rest = asyncio.run(scenario())
    assert headers[b"connection"] == b"close" and rest == b""


def test_shutdown_lets_a_waiting_lane_answer_out_then_closes(first: type[Any]) -> None:
    lane = Spy(hold=True)

    async def scenario() -> tuple[int, dict[bytes, bytes], bytes, bytes]:
        protocol, reader, writer = await laned(lane, first)
        writer.write(post("/lane", b"durable"))
        await asyncio.sleep(0.05)
        protocol.shutdown()  # what uvicorn's server does to each connection on SIGTERM
        lane.release()
        status, headers, body = await read_answer(reader)
        rest = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return status, headers, body, rest

    status, headers, body, rest = asyncio.run(scenario())
    assert (status, body, headers[b"connection"], rest) == (200, b"durable", b"close", b"")


def test_a_lane_that_fails_answers_500_with_a_reason_and_keeps_the_connection(first: type[Any]) -> None:
    async def scenario() -> list[tuple[int, dict[bytes, bytes], bytes]]:
        _, reader, writer = await laned(Spy(fail=True), first)
        writer.write(post("/lane", b"x"))
        failed = await read_answer(reader)
        writer.write(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        second = await read_answer(reader)
        writer.close()
        return [failed, second]

    failed, second = asyncio.run(scenario())
    assert failed[0] == 500 and json.loads(failed[2])["error"] == "internal_error"
    assert second[0] == 200


def test_a_stalled_head_after_a_kept_alive_request_is_cut_off_its_own_timeout_after_its_first_byte() -> None:
    """The deadline moves with each request: the connection's older checks neither cut the second
    request early nor let it run late."""
    timeout = 0.4
    config = configure(uvicorn.Config(hello, lifespan="off", log_level="warning"), client_timeout=timeout)
    config.load()

    async def scenario() -> tuple[bytes, float]:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        await loop.connect_accepted_socket(lambda: GuardedHttpToolsProtocol(config, ServerState(), {}, loop), ours)
        reader, writer = await asyncio.open_connection(sock=theirs)
        await asyncio.sleep(timeout * 0.25)
        writer.write(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        assert (await reader.readuntil(b"ok")).startswith(b"HTTP/1.1 200 OK")
        await asyncio.sleep(timeout * 0.5)  # the connection's first check is still to come
        started = loop.time()
        writer.write(b"GET / HTTP/1.1\r\nHo")  # and nothing more
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return answer, loop.time() - started

    answer, waited = asyncio.run(scenario())
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert timeout * 0.9 <= waited <= timeout + 0.3, waited


def test_a_client_that_pipelines_without_reading_is_held_back_on_the_lane_as_on_the_asgi_path(first: type[Any]) -> None:
    """uvicorn's ASGI cycle waits for the write buffer to drain before it answers, and a request
    pipelined behind it pauses reading: a client that sends and never reads holds a bounded
    buffer. The lane must not answer past a full write buffer either."""
    big = b"x" * (64 << 10)

    class Loud(Spy):
        def finish(self, body: bytes, respond: Any) -> None:
            self.bodies.append(body)
            respond(200, [(b"content-length", b"%d" % len(big))], big)

    async def loud_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(big))]})
        await send({"type": "http.response.body", "body": big})

    async def scenario(lane: bool) -> int:
        config = configure(uvicorn.Config(loud_app, lifespan="off", log_level="warning"), client_timeout=3.0)
        config.load()
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        protocol = first(config, ServerState(), {uvicorn_adapter.LANE: Loud()} if lane else {}, loop)
        transport, _ = await loop.connect_accepted_socket(lambda: protocol, ours)
        reader, writer = await asyncio.open_connection(sock=theirs)
        for n in range(200):
            writer.write(post("/lane", b"%d" % n))
            if n % 20 == 19:
                await writer.drain()
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # the client reads nothing meanwhile
        buffered = transport.get_write_buffer_size()
        for _ in range(200):  # then everything, in order
            assert (await read_answer(reader))[2] == big
        writer.close()
        return buffered

    asgi = asyncio.run(scenario(lane=False))
    laned_ = asyncio.run(scenario(lane=True))
    assert asgi < 1 << 20, asgi
    assert laned_ < 1 << 20, laned_


def test_requests_pipelined_in_one_read_do_not_count_towards_the_next_requests_head(first: type[Any]) -> None:
    """MAX_HEAD_BYTES bounds one request's head: the whole requests that came in the same read
    before it are not part of it."""

    async def scenario() -> list[tuple[int, dict[bytes, bytes], bytes]]:
        _, reader, writer = await laned(Spy(), first)
        n = 1000  # about 60 KiB of whole requests, then the start of one more
        writer.write(b"".join(post("/lane", b"%05d" % i) for i in range(n)) + b"POST /lane HTTP/1.1\r\nHo")
        answers = [await read_answer(reader) for _ in range(n)]
        writer.write(b"st: test\r\ncontent-length: 4\r\n\r\nlast")
        answers.append(await asyncio.wait_for(read_answer(reader), 5))
        writer.close()
        return answers

    answers = asyncio.run(scenario())
    assert [status for status, _, _ in answers] == [200] * 1001
    assert answers[-1][2] == b"last"
