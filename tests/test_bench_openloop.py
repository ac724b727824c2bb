"""The open-loop load generator (bench/openloop.py) counts every request once: answered with a
2xx, refused, or lost with its connection, so the benchmark's id-by-id loss check can trust it."""

from __future__ import annotations

import asyncio
import re

import pytest

from bench import openloop

ANSWERS = {
    0: b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
    1: b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
}


class Server(asyncio.Protocol):
    """Answers request ``i`` by ``i % 3``: 200, 503, or closes the connection without an answer.
    With ``Connection: close`` it closes after each answer."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
            if len(rest) < length:
                return
            body, self.buffer = rest[:length], rest[length:]
            i = int(re.search(rb"smsMsgId=[^&]*_(\d+)", body).group(1))  # type: ignore[union-attr]
            if i % 3 == 2:
                self.transport.close()
                return
            self.transport.write(ANSWERS[i % 3])
            if b"connection: close" in head.lower():
                self.transport.close()
                return


@pytest.mark.parametrize("mode", ["keep", "close"])
def test_every_request_is_counted_once_as_answered_refused_or_lost(mode: str) -> None:
    async def scenario() -> dict[str, object]:
        server = await asyncio.get_running_loop().create_server(Server, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await openloop.run(
                f"http://127.0.0.1:{port}/callbacks/t/status-report", rate=300, duration=1, mode=mode, prefix="x",
                connections=4,
            )  # fmt: skip
        finally:
            server.close()

    result = asyncio.run(scenario())
    assert result["sent"] == 300
    assert result["statuses"] == {"200": 100, "503": 100, "ConnectionError": 100}
    assert result["unacked"] == [i for i in range(300) if i % 3]
    assert 0 < result["p50_ms"] <= result["p99_ms"] < 1000  # type: ignore[operator]
    assert result["client_cpu_us_per_request"] > 0  # type: ignore[operator]


def test_the_slowest_windows_say_when_the_slow_answers_came() -> None:
    """A p99 made by one stall shows as one slow window at its moment, not as slow answers
    spread over the run."""
    tally = openloop.Tally()
    start = 100.0
    for i in range(300):  # 100 requests a second for 3 s, answered in 2 ms but around 1.45 s
        due = start + i / 100
        tally.latencies.append(0.150 if 145 <= i < 148 else 0.002)
        tally.dues.append(due)
    windows = openloop.slowest_windows(tally, start, count=2)  # in the order of time
    assert len(windows) == 2 and {"at_s": 1.4, "max_ms": 150.0, "answered": 10} in windows
    assert sorted(w["max_ms"] for w in windows) == [2.0, 150.0]
    assert [w["at_s"] for w in windows] == sorted(w["at_s"] for w in windows)


def test_kept_alive_connections_are_open_before_the_first_request_is_due() -> None:
    """Their handshakes are not counted in the answers' latency: every connection is made
    before the first request comes, and none after."""
    events: list[str] = []

    class Recorder(Server):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            events.append("connection")
            super().connection_made(transport)

        def data_received(self, data: bytes) -> None:
            events.append("request")
            # every one answered 200 (the number read as 0, the length kept)
            super().data_received(re.sub(rb"(?<=smsMsgId=x-0_)\d+", lambda m: b"0" * len(m.group()), data))

    async def scenario() -> dict[str, object]:
        server = await asyncio.get_running_loop().create_server(Recorder, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await openloop.run(
                f"http://127.0.0.1:{port}/callbacks/t/status-report", rate=200, duration=0.5, mode="keep", prefix="x",
                connections=4,
            )  # fmt: skip
        finally:
            server.close()

    result = asyncio.run(scenario())
    assert result["statuses"] == {"200": 100}
    assert events[:4] == ["connection"] * 4 and "connection" not in events[4:]
