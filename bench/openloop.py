"""An open-loop, constant-rate load generator (what wrk2 does; Debian has no wrk2).

Request ``i`` is due at ``start + i / rate`` whatever happened to the earlier ones, and its
latency is measured from that due time, not from when it was actually sent: a slow answer
cannot hold the next requests back and hide itself (no coordinated omission). The client's own
lateness (due time to send) is reported beside it, so a client that cannot keep up shows.

    python -m bench.openloop --url http://127.0.0.1:8080/callbacks/TOKEN/status-report \\
        --rate 1000 --duration 10 --mode close --prefix ol1 --out result.json

``--mode close`` opens a new connection (and TLS session) per request with ``Connection:
close``; ``--mode keep`` reuses idle keep-alive connections, opens more when none is idle, up
to ``--connections``; past that a request queues for the next free one (its wait counts).
Ids are ``PREFIX-0_<i>``; the result lists the ``i`` that got no 2xx, so the caller can check
that every acknowledged report was stored.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import time
from urllib.parse import urlsplit

BODY = (
    "sequence=1&total=1&orgCode=000&updateTime=2018-04-13T06%3A31%3A46Z&source=2&smsMsgId={id}&status=DELIVRD"
)
TIMEOUT = 10.0


class Exchange(asyncio.Protocol):
    """One HTTP/1.1 connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[int] | None = None
        self.buffer = b""
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, data: bytes) -> asyncio.Future[int]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.buffer = b""
        self.transport.write(data)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].lower()
        length = 0
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            line_end = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : line_end if line_end >= 0 else len(head)])
        if len(self.buffer) - end - 4 < length:
            return
        status = int(self.buffer[9:12])
        self.buffer = b""
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed before the answer"))


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


async def run(
    url: str, rate: float, duration: float, mode: str, prefix: str, connections: int = 32
) -> dict[str, object]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)
    context: ssl.SSLContext | None = None
    if parts.scheme == "https":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the benchmark's own self-signed certificate
    close = mode == "close"
    head = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\n{'Connection: close' + chr(13) + chr(10) if close else ''}"
    )
    loop = asyncio.get_running_loop()
    idle: list[Exchange] = []
    queue: list[asyncio.Future[Exchange | None]] = []  # requests waiting for a keep-alive connection
    opened = 0
    latencies: list[float] = []
    lateness: list[float] = []
    unacked: list[int] = []
    statuses: dict[str, int] = {}
    outstanding: set[asyncio.Task[None]] = set()
    total = int(rate * duration)

    def release(exchange: Exchange | None) -> None:
        """A keep-alive connection is free again (None: it was closed, a new one may be opened)."""
        nonlocal opened
        if exchange is None or exchange.closed:
            opened -= 1
            exchange = None
        while queue:
            waiter = queue.pop(0)
            if not waiter.done():
                if exchange is None:
                    opened += 1
                waiter.set_result(exchange)
                return
        if exchange is not None:
            idle.append(exchange)

    async def one(i: int, due: float) -> None:
        nonlocal opened
        body = BODY.format(id=f"{prefix}-0_{i}").encode()
        request = (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        lateness.append(time.perf_counter() - due)
        exchange: Exchange | None = None
        try:
            if not close:
                while idle and exchange is None:
                    candidate = idle.pop()
                    if candidate.closed:
                        opened -= 1
                    else:
                        exchange = candidate
                if exchange is None:
                    if opened < connections:
                        opened += 1
                    else:
                        waiter: asyncio.Future[Exchange | None] = loop.create_future()
                        queue.append(waiter)
                        exchange = await waiter  # None: a slot to open a new connection in
            if exchange is None:
                _, exchange = await asyncio.wait_for(
                    loop.create_connection(
                        Exchange, host, port, ssl=context, server_hostname=host if context else None
                    ),
                    TIMEOUT,
                )
            assert exchange is not None
            connected = exchange
            status = await asyncio.wait_for(connected.send(request), TIMEOUT)
        except (OSError, TimeoutError, ConnectionError, ssl.SSLError) as error:
            statuses[type(error).__name__] = statuses.get(type(error).__name__, 0) + 1
            unacked.append(i)
            if not close:
                if exchange is not None and exchange.transport is not None:
                    exchange.transport.close()
                release(None)
            return
        latencies.append(time.perf_counter() - due)
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        if not 200 <= status < 300:
            unacked.append(i)
        if close:
            if connected.transport is not None:
                connected.transport.close()
        else:
            release(connected)

    start = time.perf_counter() + 0.05
    i = 0
    while i < total:
        now = time.perf_counter()
        while i < total and start + i / rate <= now:
            task = loop.create_task(one(i, start + i / rate))
            outstanding.add(task)
            task.add_done_callback(outstanding.discard)
            i += 1
        wait = start + i / rate - time.perf_counter()
        # uvloop timers have millisecond resolution: sleep for the long gaps, yield for the short ones
        await asyncio.sleep(wait - 0.001 if wait > 0.002 else 0)
    elapsed = time.perf_counter() - start
    if outstanding:
        await asyncio.wait(outstanding, timeout=TIMEOUT * 2)
    for exchange in idle:
        if exchange.transport is not None:
            exchange.transport.close()
    ms = [v * 1000 for v in latencies]
    late = [v * 1000 for v in lateness]
    return {
        "rate": rate,
        "sent": total,
        "send_seconds": elapsed,
        "achieved_rate": total / elapsed if elapsed > 0 else 0.0,
        "statuses": statuses,
        "unacked": sorted(unacked),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "p999_ms": percentile(ms, 99.9),
        "max_ms": max(ms) if ms else float("nan"),
        "client_lateness_p99_ms": percentile(late, 99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds")
    parser.add_argument("--mode", choices=["keep", "close"], default="close")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive mode: at most this many")
    parser.add_argument("--prefix", default="ol")
    parser.add_argument("--out", help="write the result as JSON here (default: stdout)")
    args = parser.parse_args()
    import uvloop  # comes with uvicorn[standard]

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(run(args.url, args.rate, args.duration, args.mode, args.prefix, args.connections))
    text = json.dumps(result)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
