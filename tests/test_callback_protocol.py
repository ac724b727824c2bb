"""The protocol a connection of ``receiver serve`` starts with (receiver.callback_protocol): what
only it does. What it shares with uvicorn's protocol (the lane's answers, pipelining, shutdown,
a failing lane, clients that do not read) is tested on both in test_uvicorn_adapter.py."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import uvicorn
import uvloop
from test_uvicorn_adapter import Spy, echo_app, post, read_answer
from uvicorn.server import ServerState

from receiver import uvicorn_adapter
from receiver.callback_protocol import CallbackProtocol
from receiver.uvicorn_adapter import KEPT_ALIVE, GuardedHttpToolsProtocol, configure


class Counting(Spy):
    """A Spy that notes how many requests came before each one on its connection."""

    def __init__(self, hold: bool = False) -> None:
        super().__init__(hold=hold)
        self.earlier: list[int] = []

    def claim(self, scope: dict[str, Any]) -> Spy | None:
        claimed = super().claim(scope)
        if claimed is not None:
            self.earlier.append(scope[KEPT_ALIVE])
        return claimed


async def connected(
    lane: Spy, *, client_timeout: float = 3.0, keep_alive: int = 5
) -> tuple[asyncio.Transport, ServerState, asyncio.StreamReader, asyncio.StreamWriter]:
    config = configure(
        uvicorn.Config(echo_app, lifespan="off", log_level="warning", timeout_keep_alive=keep_alive),
        client_timeout=client_timeout,
    )
    config.load()
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    state = ServerState()
    state.default_headers = [(b"date", b"Sat, 05 Dec 2026 03:00:00 GMT")]
    transport, _ = await loop.connect_accepted_socket(
        lambda: CallbackProtocol(config, state, {uvicorn_adapter.LANE: lane}, loop), ours
    )
    reader, writer = await asyncio.open_connection(sock=theirs)
    return transport, state, reader, writer


def test_callbacks_are_answered_on_it_and_the_first_other_request_moves_the_connection_to_uvicorns() -> None:
    lane = Counting()

    async def scenario() -> list[Any]:
        transport, state, reader, writer = await connected(lane)
        seen: list[Any] = []
        writer.write(post("/lane", b"one"))
        seen.append(await read_answer(reader))
        seen.append((type(transport.get_protocol()), len(state.connections), state.total_requests))
        writer.write(b"GET /other HTTP/1.1\r\nHost: test\r\n\r\n")
        seen.append(await read_answer(reader))
        seen.append((type(transport.get_protocol()), len(state.connections)))
        writer.write(post("/lane", b"two"))  # uvicorn's protocol, and its lane, from now on
        seen.append(await read_answer(reader))
        writer.close()
        return seen

    one, on_it, other, moved, two = asyncio.run(scenario())
    assert one == (200, {b"date": b"Sat, 05 Dec 2026 03:00:00 GMT", b"content-length": b"3"}, b"one")
    assert on_it == (CallbackProtocol, 1, 1)
    assert other[2] == b"asgi:"
    assert moved == (GuardedHttpToolsProtocol, 1)  # in the server's connections once, as uvicorn's
    assert two[2] == b"two"
    assert lane.bodies == [b"one", b"two"]
    assert lane.earlier == [0, 2]  # the count of earlier requests travels with the connection


def test_a_request_sent_before_the_answer_to_the_one_before_waits_its_turn() -> None:
    lane = Spy(hold=True)

    async def scenario() -> list[bytes]:
        transport, _, reader, writer = await connected(lane)
        writer.write(post("/lane", b"first"))
        await asyncio.sleep(0.05)
        writer.write(post("/lane", b"second"))  # a read of its own, while the first waits
        await asyncio.sleep(0.05)
        assert lane.bodies == [b"first"]
        lane.release()
        bodies = [(await read_answer(reader))[2]]
        await asyncio.sleep(0.05)
        lane.release()
        bodies.append((await read_answer(reader))[2])
        assert type(transport.get_protocol()) is CallbackProtocol
        writer.close()
        return bodies

    assert asyncio.run(scenario()) == [b"first", b"second"]
    assert lane.bodies == [b"first", b"second"]


def test_a_client_gone_before_its_answer_is_not_written_to() -> None:
    lane = Spy(hold=True)

    async def scenario() -> tuple[int, bool]:
        transport, state, _, writer = await connected(lane)
        writer.write(post("/lane", b"durable"))
        await asyncio.sleep(0.05)
        writer.close()
        await asyncio.sleep(0.05)
        lane.release()  # the flush is done: nobody to answer
        await asyncio.sleep(0.05)
        return len(state.connections), transport.is_closing()

    assert asyncio.run(scenario()) == (0, True)


def test_a_request_held_behind_an_answer_is_dropped_when_the_client_resets_the_connection() -> None:
    """Reading is paused while an answer is awaited, so a reset is seen only when the answer is
    written: the request that came after is then nobody's (uvicorn's protocol drops it too)."""
    lane = Spy(hold=True)

    async def scenario() -> list[bytes]:
        config = configure(uvicorn.Config(echo_app, lifespan="off", log_level="critical"), client_timeout=3.0)
        config.load()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: CallbackProtocol(config, ServerState(), {uvicorn_adapter.LANE: lane}, loop), "127.0.0.1", 0
        )
        sock = socket.create_connection(("127.0.0.1", server.sockets[0].getsockname()[1]))
        sock.sendall(post("/lane", b"first"))
        await asyncio.sleep(0.1)
        sock.sendall(post("/lane", b"second"))  # held: the first still waits
        await asyncio.sleep(0.1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset
        await asyncio.sleep(0.1)
        lane.release()
        await asyncio.sleep(0.2)
        server.close()
        return lane.bodies

    assert asyncio.run(scenario()) == [b"first"]


def test_a_connection_that_sends_nothing_is_closed_after_the_client_timeout() -> None:
    async def scenario() -> float:
        _, state, reader, writer = await connected(Spy(), client_timeout=0.4)
        started = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        waited = asyncio.get_running_loop().time() - started
        writer.close()
        await asyncio.sleep(0.01)
        assert not state.connections
        return waited

    waited = asyncio.run(scenario())
    assert 0.35 <= waited <= 0.4 * 1.25 + 0.2, waited


def test_a_kept_alive_connection_left_idle_is_closed_after_the_keep_alive_timeout() -> None:
    async def scenario() -> float:
        _, _, reader, writer = await connected(Spy(), client_timeout=10.0, keep_alive=1)
        writer.write(post("/lane", b"one"))
        await read_answer(reader)
        started = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        return asyncio.get_running_loop().time() - started

    waited = asyncio.run(scenario())
    assert 0.9 <= waited <= 1.25 + 0.2, waited


def test_shutdown_closes_an_idle_connection_at_once() -> None:
    async def scenario() -> bytes:
        transport, _, reader, writer = await connected(Spy())
        writer.write(post("/lane", b"one"))
        await read_answer(reader)
        transport.get_protocol().shutdown()  # type: ignore[attr-defined]  # what uvicorn's server calls
        rest = await asyncio.wait_for(reader.read(), 1)
        writer.close()
        return rest

    assert asyncio.run(scenario()) == b""


def test_an_answer_left_unread_is_cut_off_after_the_client_timeout() -> None:
    big = b"x" * (8 << 20)

    class Loud(Spy):
        def finish(self, body: bytes, respond: Any) -> None:
            respond(200, [(b"content-length", b"%d" % len(big))], big)

    async def scenario() -> tuple[bool, bool]:
        transport, _, _, writer = await connected(Loud(), client_timeout=0.4)
        writer.write(post("/lane", b"x"))  # and never read
        await asyncio.sleep(0.1)
        open_at_first = not transport.is_closing()
        await asyncio.sleep(0.6)
        cut = transport.is_closing()
        writer.close()
        return open_at_first, cut

    assert asyncio.run(scenario()) == (True, True)


def _segments_in(sock: socket.socket) -> int:
    """Segments this socket has received (``tcpi_segs_in`` of Linux's ``struct tcp_info``)."""
    return int(struct.unpack_from("I", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256), 140)[0])


T = TypeVar("T")


def _over_tcp(
    loop_factory: Callable[[], asyncio.AbstractEventLoop], lane: Spy, client: Callable[[int], T], *,
    release_after: float | None = None,
) -> T:  # fmt: skip
    """``client(port)``, in a thread, against the callback protocol listening on TCP on a loop
    of ``loop_factory``; a held ``lane`` is released ``release_after`` seconds in."""
    config = configure(uvicorn.Config(echo_app, lifespan="off", log_level="warning"), client_timeout=3.0)
    config.load()
    state = ServerState()
    state.default_headers = []

    async def scenario() -> T:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: CallbackProtocol(config, state, {uvicorn_adapter.LANE: lane}, loop),
                                          "127.0.0.1", 0)  # fmt: skip
        try:
            result = asyncio.ensure_future(asyncio.to_thread(client, server.sockets[0].getsockname()[1]))
            if release_after is not None:
                await asyncio.sleep(release_after)
                lane.release()
            return await result
        finally:
            server.close()

    loop = loop_factory()
    try:
        return loop.run_until_complete(scenario())
    finally:
        loop.close()


@pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_the_last_answer_of_a_connection_reaches_the_client_with_its_fin(loop_factory: Any) -> None:
    """A platform that opens a connection per callback gets the answer and the connection's end
    in one segment: after the request's acknowledgement, one segment, not two (each costs both
    ends the kernel's work for a packet)."""

    def client(port: int) -> list[tuple[bytes, int]]:
        seen = []
        for i in range(5):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                before = _segments_in(sock)
                sock.sendall(post("/lane", b"report %d" % i, b"connection: close"))
                data = b""
                while chunk := sock.recv(4096):
                    data += chunk
                seen.append((data.rpartition(b"\r\n\r\n")[2], _segments_in(sock) - before))
        return seen

    seen = _over_tcp(loop_factory, Spy(), client)
    assert [body for body, _ in seen] == [b"report %d" % i for i in range(5)]
    # Linux acknowledges the first data of a connection at once: that ACK, then answer and FIN.
    assert [segments for _, segments in seen] == [2] * 5


@pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_a_client_that_sends_more_after_its_last_request_still_gets_the_answer(loop_factory: Any) -> None:
    """Bytes sent after a ``Connection: close`` request, while its answer waits for the flush, are
    left unread; the close is then a reset, and an answer held back for the FIN would go with
    it. Such an answer goes out as it is written."""

    def client(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(post("/lane", b"report", b"connection: close"))
            for _ in range(2):  # two reads: one the protocol holds, one the kernel keeps
                time.sleep(0.1)
                sock.sendall(b"\r\n")
            data = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(4096):
                    data += chunk
            return data

    data = _over_tcp(loop_factory, Spy(hold=True), client, release_after=0.5)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"\r\n\r\nreport")
