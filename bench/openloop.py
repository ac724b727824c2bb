"""An open-loop, constant-rate load generator (what wrk2 does; Debian has no wrk2).

Request ``i`` is due at ``start + i / rate`` whatever happened to the earlier ones, and its
latency is measured from that due time, not from when it was actually sent: a slow answer
cannot hold the next requests back and hide itself (no coordinated omission). The client's own
lateness (due time to send) is reported beside it, so a client that cannot keep up shows, and
so is the CPU it used: on a small machine the generator shares the cores with the server it
measures, so it is built to cost little (no task, future or timer per request on a kept-alive
connection: the answer is handled where it is read, and the next queued request sent from there).

    python -m bench.openloop --url http://127.0.0.1:8080/callbacks/TOKEN/status-report \\
        --rate 1000 --duration 10 --mode close --prefix ol1 --out result.json

``--mode close`` opens a new connection (and TLS session) per request with ``Connection:
close``; ``--mode keep`` opens ``--connections`` keep-alive connections before the first request
is due, reuses idle ones, opens another when none is idle and one has closed; past that a
request queues for the next free one (its wait counts).
Ids are ``PREFIX-0_<i>``; the result lists the ``i`` that got no 2xx, so the caller can check
that every acknowledged report was stored. A request unanswered after 10 s counts as a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import resource
import ssl
import time
from collections.abc import Callable
from urllib.parse import urlsplit

BODY = (
    "sequence=1&total=1&orgCode=000&updateTime=2018-04-13T06%3A31%3A46Z&source=2&smsMsgId={id}&status=DELIVRD"
)
TIMEOUT = 10.0
CLIENT_NICE = -5  # above the servers measured: a late send would count against them


class Tally:
    """What the run saw: each answered request's latency from its due time, each send's
    lateness, the statuses, and the requests that got no 2xx."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.dues: list[float] = []  # each answered request's due time, beside its latency
        self.lateness: list[float] = []
        self.unacked: list[int] = []
        self.statuses: dict[str, int] = {}

    def answered(self, i: int, due: float, status: int) -> None:
        self.latencies.append(time.perf_counter() - due)
        self.dues.append(due)
        self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
        if not 200 <= status < 300:
            self.unacked.append(i)

    def failed(self, i: int, error: str) -> None:
        self.statuses[error] = self.statuses.get(error, 0) + 1
        self.unacked.append(i)


class Exchange(asyncio.Protocol):
    """One HTTP/1.1 connection, one request at a time. The answer is parsed where it is read;
    ``on_free`` is called with the connection once it can take the next request, or once it
    closed (``closed`` set)."""

    def __init__(self, tally: Tally, on_free: Callable[[Exchange], None]) -> None:
        self.tally = tally
        self.on_free = on_free
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.current: tuple[int, float, float] | None = None  # i, due time, time sent
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, i: int, due: float, request: bytes) -> None:
        assert self.transport is not None
        self.current = (i, due, time.perf_counter())
        self.transport.write(request)

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
        current, self.current = self.current, None
        if current is not None:
            self.tally.answered(current[0], current[1], status)
            self.on_free(self)

    def abort(self, error: str) -> None:
        """Give up on the request under way (``error`` counted) and close."""
        current, self.current = self.current, None
        if current is not None:
            self.tally.failed(current[0], error)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        current, self.current = self.current, None
        if current is not None:
            self.tally.failed(current[0], "ConnectionError")
        self.on_free(self)


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
        # The benchmark's own self-signed certificate, not verified. A context without the
        # system's trust store: with it loaded, OpenSSL 3.0 still looks the peer's chain up in
        # it at every handshake (about 0.2 ms of the generator's CPU a new connection, taken
        # from the server it measures on the same cores).
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    close = mode == "close"
    head = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\n{'Connection: close' + chr(13) + chr(10) if close else ''}"
    )

    def request(i: int) -> bytes:
        body = BODY.format(id=f"{prefix}-0_{i}").encode()
        return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    # A new connection per request from one address would soon have used every local port
    # (28,000 by default, each held 60 s in TIME_WAIT): at thousands a second the kernel's search
    # for a free one costs the client more and more. On loopback, spread them over addresses.
    spread = close and host == "127.0.0.1"
    loop = asyncio.get_running_loop()
    tally = Tally()
    busy: set[Exchange] = set()
    idle: collections.deque[Exchange] = collections.deque()  # the longest idle first: all of them in turn
    queued: collections.deque[tuple[int, float]] = collections.deque()  # waiting for a keep-alive connection
    opening = 0  # keep-alive connections being opened
    connecting: set[asyncio.Task[None]] = set()

    def refill() -> None:
        """Open connections for the queued requests, as far as ``connections`` allows."""
        while queued and len(busy) + len(idle) + opening < connections:
            open_one(*queued.popleft())

    def free(exchange: Exchange) -> None:
        """A keep-alive connection can take the next request, or closed."""
        if exchange.closed:
            busy.discard(exchange)
            if exchange in idle:
                idle.remove(exchange)
            refill()
            return
        if queued:
            i, due = queued.popleft()
            exchange.send(i, due, request(i))
        else:
            busy.discard(exchange)
            idle.append(exchange)

    def closed_one(exchange: Exchange) -> None:
        """A connection of ``--mode close`` answered or closed."""
        busy.discard(exchange)
        if not exchange.closed and exchange.transport is not None:
            exchange.transport.close()

    async def dial(i: int) -> Exchange:
        """A connection for request ``i`` (or the ``i``-th kept-alive one), its handshake done."""
        _, exchange = await asyncio.wait_for(
            loop.create_connection(
                lambda: Exchange(tally, closed_one if close else free),
                host, port, ssl=context, server_hostname=host if context else None,
                local_addr=(f"127.0.{i % 200}.{2 + i // 200 % 250}", 0) if spread else None,
            ),
            TIMEOUT,
        )  # fmt: skip
        return exchange

    async def connect(i: int, due: float) -> None:
        nonlocal opening
        try:
            exchange = await dial(i)
        except (OSError, TimeoutError, ssl.SSLError) as error:
            tally.failed(i, type(error).__name__)
            if not close:
                opening -= 1
                refill()
            return
        if not close:
            opening -= 1
        busy.add(exchange)
        exchange.send(i, due, request(i))

    def open_one(i: int, due: float) -> None:
        nonlocal opening
        if not close:
            opening += 1
        task = loop.create_task(connect(i, due))
        connecting.add(task)
        task.add_done_callback(connecting.discard)

    def due_now(i: int, due: float) -> None:
        tally.lateness.append(time.perf_counter() - due)
        if idle:
            exchange = idle.popleft()
            busy.add(exchange)
            exchange.send(i, due, request(i))
            return
        if close or len(busy) + opening < connections:
            open_one(i, due)
        else:
            queued.append((i, due))

    def overdue() -> None:
        """Requests sent more than TIMEOUT ago: counted as timeouts, their connections closed."""
        limit = time.perf_counter() - TIMEOUT
        for exchange in [e for e in busy if e.current is not None and e.current[2] < limit]:
            exchange.abort("TimeoutError")

    async def warm(k: int) -> None:
        """One kept-alive connection, opened before the clock starts."""
        try:
            exchange = await dial(k)
        except (OSError, TimeoutError, ssl.SSLError):
            return  # opened later, when a request needs it (and its failure counted then)
        idle.append(exchange)

    if not close:
        # A client that keeps its connections alive has them open before it sends: their
        # handshakes (over TLS about a millisecond of CPU each, on both ends) are not the
        # answers' latency. Opened on demand instead, the first requests of a run waited for
        # all of them at once: a percent of the answers, enough to be the run's p99.
        await asyncio.gather(*(warm(k) for k in range(connections)))

    total = int(rate * duration)
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter() + 0.05
    started_at = time.time() + 0.05  # the same moment on the wall clock, to line up with other records
    next_sweep = start + 1.0
    i = 0
    while i < total:
        now = time.perf_counter()
        while i < total and start + i / rate <= now:
            due_now(i, start + i / rate)
            i += 1
        if now >= next_sweep:
            overdue()
            next_sweep = now + 1.0
        # Wake once a millisecond at most (uvloop's timer resolution) and send what fell due
        # meanwhile: spinning for the next due time would take a core from the server measured.
        # A request may so go out up to a millisecond late; its latency counts that against the server.
        await asyncio.sleep(max(start + i / rate - time.perf_counter(), 0.001))
    elapsed = time.perf_counter() - start
    deadline = time.perf_counter() + TIMEOUT * 2
    while (busy or connecting or queued) and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
        overdue()
        if not close:
            refill()  # open connections for what still queues, if some closed
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    for exchange in [*idle, *busy]:
        exchange.abort("TimeoutError")
    for i_left, _due in queued:
        tally.failed(i_left, "TimeoutError")
    ms = [v * 1000 for v in tally.latencies]
    late = [v * 1000 for v in tally.lateness]
    cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    return {
        "rate": rate,
        "started_at": started_at,
        "sent": total,
        "send_seconds": elapsed,
        "achieved_rate": total / elapsed if elapsed > 0 else 0.0,
        "statuses": tally.statuses,
        "unacked": sorted(tally.unacked),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "p999_ms": percentile(ms, 99.9),
        "max_ms": max(ms) if ms else float("nan"),
        "client_lateness_p99_ms": percentile(late, 99),
        "client_cpu_us_per_request": cpu / total * 1e6 if total else float("nan"),
        "client_nice": os.getpriority(os.PRIO_PROCESS, 0),
        "slowest_windows": slowest_windows(tally, start),
    }


WINDOW = 0.1  # seconds


def slowest_windows(tally: Tally, start: float, count: int = 5) -> list[dict[str, float]]:
    """The ``count`` windows of ``WINDOW`` s (by due time, from the run's start) whose slowest
    answer was slowest: whether a p99 comes from a stall at one moment or from slow answers
    all along, and when."""
    windows: dict[int, list[float]] = {}
    for due, latency in zip(tally.dues, tally.latencies, strict=True):
        windows.setdefault(int((due - start) / WINDOW + 1e-9), []).append(latency * 1000)
    worst = sorted(windows.items(), key=lambda item: max(item[1]), reverse=True)[:count]
    return [
        {"at_s": round(index * WINDOW, 1), "max_ms": round(max(ms), 2), "answered": len(ms)}
        for index, ms in sorted(worst)
    ]
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

    with contextlib.suppress(PermissionError):  # when allowed (root): its sends go out on time
        os.setpriority(os.PRIO_PROCESS, 0, CLIENT_NICE)

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
