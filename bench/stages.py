"""The stage table: CPU per request of each step of the acknowledgement path, and per report of
the writer's Python and of PostgreSQL, in-process, no network.

    .venv/bin/python -m bench stages [--requests 20000] [--concurrency 32] [--batches 20] [--repeat 3]

Acknowledgement (a worker's side, per request): request bytes handed to the protocol a
connection of ``receiver serve`` starts with (:class:`receiver.callback_protocol.CallbackProtocol`)
on in-memory connections, ``--concurrency`` kept-alive connections at a time on uvloop: parsed
by httptools, claimed by the callbacks' lane (:class:`receiver.http.callbacks.Lane`, as the
worker's lifespan hands it over), against a real journal (group commit, synced as the
service syncs it: by its syncer process by default) in a temporary folder, an in-memory
application registry, a quarantine, the JSON log lines written to a file and the metrics in
multiprocess mode, as under ``receiver serve``. Then each piece alone: the application
look-up, ``ingest.accept`` (and within it the protocol parse and ``records.accepted``),
``journal.append`` under the same concurrency, the log line, the metrics updates; what is
left of the whole is the HTTP parsing, the header scan, the request id and the answer.
Beside it, the plain Starlette handler (``await request.form()``, answer 200) through
uvicorn's protocol as the receiver configures it (its ASGI cycle and task, as uvicorn runs
every application). Both again with a
new connection per request, as the platform sends its callbacks: a protocol built, connected,
given the request with ``connection: close`` and disconnected for each one.

Writer (per report, batches of ``--batch-size``): reading the journal the acknowledgement wrote,
``writer._decode`` (envelope and protocol parse), building the rows, and ``writer.store()``
with the writer's own after-insert steps on a real embedded PostgreSQL: the writer's CPU during
the transaction and PostgreSQL's (the backend's, from ``/proc``, and the other PostgreSQL
processes': WAL writer, checkpointer).

CPU is ``time.process_time()`` (every thread of this process: the log writer's, the journal's
where it syncs on a thread) plus the journals' syncer processes' (``/proc/PID/stat``, in clock
ticks), or ``/proc/PID/stat`` for PostgreSQL; each figure is
the median of ``--repeat`` runs. Both sides pay for uvicorn's HTTP parsing; neither for TLS or
the kernel's network, which cost the receiver and the plain handler the same.

Output: a markdown table on stdout and in bench/out/stages.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from .ingest import _git_state, cpu_seconds, descendants, with_database
from .support import start_embedded, world_readable_tmpdir

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"

TOKEN = "bench-stages-token"
PATH = f"/callbacks/{TOKEN}/status-report"
BODY = (
    b"sequence=1&total=1&orgCode=000&updateTime=2018-04-13T06%3A31%3A46Z&source=2"
    b"&smsMsgId=stage-{n}&status=DELIVRD"
)
FORM = b"application/x-www-form-urlencoded"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def body(n: int) -> bytes:
    return BODY.replace(b"{n}", str(n).encode())


HEAD = (
    b"POST " + PATH.encode() + b" HTTP/1.1\r\nhost: 127.0.0.1:8080\r\ncontent-type: " + FORM
    + b"\r\nuser-agent: bench\r\ncontent-length: %d\r\n\r\n"
)  # fmt: skip
HEAD_CLOSE = HEAD.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n")


class _Memory(asyncio.Transport):
    """An in-memory connection: what the protocol writes goes to ``written``."""

    def __init__(self, written: Callable[[bytes], None]) -> None:
        super().__init__()
        self.written = written
        self.closing = False
        self.protocol: Any = None

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Served:
    """Connections to ``app`` through the receiver's uvicorn protocol
    (``receiver.uvicorn_adapter.GuardedHttpToolsProtocol``, with ``app_state`` as the lifespan left
    it), each on an in-memory transport: :meth:`call` sends request ``i`` as bytes and waits for
    its answer. ``concurrency`` kept-alive connections; or, with ``new_connections``, a new
    connection per request, as uvicorn makes one (built, connected, given the request with
    ``connection: close``, disconnected once answered)."""

    def __init__(
        self, app: Any, app_state: dict[str, Any], concurrency: int, answers: dict[int, int],
        new_connections: bool = False,
    ) -> None:  # fmt: skip
        import uvicorn
        from uvicorn.server import ServerState

        from receiver.callback_protocol import CallbackProtocol
        from receiver.uvicorn_adapter import LANE, GuardedHttpToolsProtocol, configure

        config = configure(
            uvicorn.Config(app, lifespan="off", log_level="warning", proxy_headers=False), client_timeout=10.0
        )
        config.load()
        state = ServerState()
        state.default_headers = [(b"date", b"Sat, 05 Dec 2026 00:00:00 GMT")]
        self.answers = answers
        self.free: list[tuple[Any, list[Any]]] = []
        # The protocol a connection starts with, as ``receiver serve`` and the baselines serve:
        # the callbacks' own where the application has a lane, else uvicorn's.
        first = CallbackProtocol if LANE in app_state else GuardedHttpToolsProtocol
        make = partial(first, config, state, app_state, asyncio.get_event_loop())
        self.make = make
        self.head = HEAD_CLOSE if new_connections else HEAD
        if new_connections:
            self.call = self.call_new  # type: ignore[method-assign]
            return
        for _ in range(concurrency):
            waiter: list[Any] = [None]
            kept = make()
            kept.connection_made(_Memory(partial(self.written, waiter)))
            self.free.append((kept, waiter))

    def written(self, waiter: list[Any], data: bytes) -> None:
        if data.startswith(b"HTTP/1.1 "):
            status = int(data[9:12])
            self.answers[status] = self.answers.get(status, 0) + 1
        if b"\r\n\r\n" in data and waiter[0] is not None:  # every answer here has an empty body
            waiter[0].set_result(None)
            waiter[0] = None

    async def call(self, i: int) -> None:
        protocol, waiter = self.free.pop()
        payload = body(i)
        waiter[0] = asyncio.get_running_loop().create_future()
        protocol.data_received(self.head % len(payload) + payload)
        await waiter[0]
        self.free.append((protocol, waiter))

    async def call_new(self, i: int) -> None:
        waiter: list[Any] = [asyncio.get_running_loop().create_future()]
        answered = waiter[0]
        transport = _Memory(partial(self.written, waiter))
        protocol = self.make()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        payload = body(i)
        protocol.data_received(self.head % len(payload) + payload)
        await answered
        transport.get_protocol().connection_lost(None)  # the protocol it ended on


def count_flushes(journal: Any) -> list[int]:
    """A counter of the journal's flushes (each one write and one ``fdatasync``), in ``[0]``."""
    flushes = [0]
    done = journal._flush_done

    def counted(*args: Any) -> Any:
        flushes[0] += 1
        return done(*args)

    journal._flush_done = counted
    return flushes


SYNCERS: list[int] = []  # the pids of the journals' syncer processes, whose CPU counts as ours


async def started(journal: Any) -> Any:
    """``journal.start()``, as the worker does before serving; its syncer's CPU counts from now on."""
    await journal.start()
    if journal._syncer is not None:
        SYNCERS.append(journal._syncer.pid)
    return journal


def cpu() -> float:
    """CPU seconds of this process and of the syncer processes still running."""
    return time.process_time() + cpu_seconds(SYNCERS)


class Stages:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.base = world_readable_tmpdir("receiver-bench-stages-")
        self.rows: list[tuple[str, str, float | None, str]] = []  # section, stage, µs, note
        self.figures: dict[str, float] = {}
        self.counter = 0

    def add(self, section: str, key: str, stage: str, seconds: float | None, note: str = "") -> None:
        if seconds is not None:
            self.figures[key] = seconds
        self.rows.append((section, stage, None if seconds is None else seconds * 1e6, note))

    def median(self, run: Callable[[], float]) -> float:
        values = []
        for _ in range(self.args.repeat):
            gc.collect()
            values.append(run())
        return statistics.median(values)

    def sync_cpu(
        self, fn: Callable[[int], object], n: int, after: Callable[[], None] = lambda: None
    ) -> float:
        """CPU seconds per call of ``fn(i)``; ``after`` runs inside the measured window."""

        def run() -> float:
            start = cpu()
            for i in range(n):
                fn(i)
            after()
            return (cpu() - start) / n

        return self.median(run)

    def async_cpu(
        self, fn: Callable[[int], Awaitable[object]], n: int, concurrency: int, after: Callable[[], None]
    ) -> float:
        """CPU seconds per call of ``await fn(i)``, ``concurrency`` calls at a time; ``after`` runs
        inside the measured window (to write out what threads still hold)."""

        async def run() -> float:
            per = n // concurrency

            async def one(k: int) -> None:
                for i in range(k * per, (k + 1) * per):
                    await fn(i)

            start = cpu()
            await asyncio.gather(*(one(k) for k in range(concurrency)))
            after()
            return (cpu() - start) / (per * concurrency)

        values = []
        for _ in range(self.args.repeat):
            gc.collect()
            values.append(self.loop.run_until_complete(run()))
        return statistics.median(values)

    # --- the acknowledgement --------------------------------------------------------------

    def acknowledgement(self) -> None:
        from starlette.applications import Starlette
        from starlette.routing import Route

        from receiver import ingest, logs, metrics, records
        from receiver.applications import Application, Registry, token_hash
        from receiver.config import Settings
        from receiver.http import callbacks
        from receiver.http.app import create_app
        from receiver.journal import Journal
        from receiver.journal.appender import write_durably
        from receiver.journal.envelope import Kind
        from receiver.protocol import form, parse_status_report_form
        from receiver.quarantine import Quarantine
        from receiver.uvicorn_adapter import LANE

        from .baselines import plain_status_report

        a = self.args
        n, c = a.requests, a.concurrency
        section = "acknowledgement (a worker, per request)"
        settings = Settings(data_dir=self.base / "data", log_format="json", log_level="info")
        # The worker's application, as `receiver serve` builds it (its middleware, its switch
        # interval, its logging); its lifespan does not run: the state it would set up is built
        # here without a database.
        receiver_app = create_app(settings)
        if a.switch_interval is not None:
            sys.setswitchinterval(a.switch_interval / 1000)
        self.switch_interval = sys.getswitchinterval()
        log_file = os.open(self.base / "callbacks.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        logs._stderr_writer.fd = (
            log_file  # the log lines go to a file, as a service's would (not our terminal)
        )
        self.journal_root = settings.journal_path
        journal = Journal(
            self.journal_root, max_bytes=1 << 40, segment_bytes=settings.journal_segment_bytes, sync=settings.journal_sync
        )
        self.loop.run_until_complete(started(journal))
        flushes = count_flushes(journal)
        registry = Registry()
        app_record = Application(1, "bench")
        registry._apps[token_hash(TOKEN)] = app_record
        state: dict[str, Any] = {
            "settings": settings, "pool": None, "registry": registry, "journal": journal, "writer": None,
            "quarantine": Quarantine(journal, bodies_per_second=settings.quarantine_bodies_per_second),
        }  # fmt: skip
        for key, value in state.items():
            setattr(receiver_app.state, key, value)
        gc.collect()
        gc.freeze()  # as the worker's lifespan does once it has loaded everything
        plain_app = Starlette(
            routes=[Route("/callbacks/{token}/status-report", plain_status_report, methods=["POST"])]
        )
        answers: dict[int, int] = {}
        lane = {LANE: callbacks.Lane(receiver_app.state)}  # what the worker's lifespan hands uvicorn

        def served(app: Any, app_state: dict[str, Any], **how: Any) -> Callable[[int], Awaitable[None]]:
            return Served(app, app_state, c, answers, **how).call

        async def nothing(scope: Any, receive: Any, send: Any) -> None:
            await receive()
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})

        self.loop.run_until_complete(served(receiver_app, lane)(0))  # warm: the journal thread, the log writer
        answers.clear()
        flushes[0] = 0
        whole = self.async_cpu(served(receiver_app, lane), n, c, logs.flush)
        per_flush = answers.get(200, 0) / max(1, flushes[0])
        if set(answers) != {200}:
            raise RuntimeError(f"the receiver answered {answers}, not only 200")
        self.add(
            section, "ack", "whole acknowledgement: the callback protocol and the lane, journal, log line, metrics",
            whole, f"{c} concurrent; {per_flush:.1f} records per fdatasync",
        )  # fmt: skip
        answers.clear()
        flushes[0] = 0
        whole_new = self.async_cpu(served(receiver_app, lane, new_connections=True), n, c, logs.flush)
        if set(answers) != {200}:
            raise RuntimeError(f"the receiver answered {answers}, not only 200")
        self.add(
            section, "ack-new", "the same, a new connection per request", whole_new,
            f"{c} concurrent; {answers[200] / max(1, flushes[0]):.1f} records per fdatasync",
        )  # fmt: skip
        alone = min(n, 2000)
        before = os.times()
        single = self.async_cpu(served(receiver_app, lane), alone, 1, logs.flush)
        system = (os.times().system - before.system) / (alone * a.repeat)
        self.add(
            section, "ack1", "the same, one request at a time (an fdatasync each)", single,
            f"{alone:,} requests, {system * 1e6:.0f} µs of it in the kernel; for scale, not in the total",
        )  # fmt: skip
        record = records.accepted(Kind.STATUS_REPORT, 1, time.time(), body(0))
        for label, zero_filled in (("a zero-filled file", True), ("a file that grows", False)):
            raw_fd = os.open(self.base / f"flush-probe-{zero_filled}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            if zero_filled:  # room for every repeat
                os.pwrite(raw_fd, bytes(len(record) * alone * (a.repeat + 1)), 0)
                os.fsync(raw_fd)
            offsets = itertools.count(0, len(record))

            def write_and_sync(i: int, fd: int = raw_fd, offsets: Iterator[int] = offsets) -> None:
                write_durably(fd, record, next(offsets))

            raw = self.sync_cpu(write_and_sync, alone)
            os.close(raw_fd)
            self.add(
                section, f"fsync-{zero_filled}", f"for scale: one flush of a record (`write_durably`), into {label}",
                raw, "what a flush costs the kernel, before any hand-off; not in the total",
            )  # fmt: skip
        lookup = self.async_cpu(lambda i: registry.lookup(TOKEN, None), n, 1, lambda: None)
        self.add(
            section,
            "lookup",
            "of which: application look-up (`Registry.lookup`, SHA-256 of the token)",
            lookup,
        )
        accept = self.sync_cpu(
            lambda i: ingest.accept(app_record, Kind.STATUS_REPORT, FORM, body(i), time.time()), n
        )
        self.add(
            section,
            "accept",
            "of which: `ingest.accept` (media type, protocol parse, journal record)",
            accept,
        )
        parse = self.sync_cpu(lambda i: parse_status_report_form(body(i)), n)
        self.add(section, "parse", "  within it: `parse_status_report_form`", parse)
        decode_form = getattr(form, "decode_form", None)
        if decode_form is not None:
            self.add(
                section,
                "form",
                "    within that: `decode_form` (the form itself)",
                self.sync_cpu(lambda i: decode_form(body(i)), n),
            )
        envelope = self.sync_cpu(lambda i: records.accepted(Kind.STATUS_REPORT, 1, time.time(), body(i)), n)
        self.add(section, "record", "  within it: `records.accepted` (envelope)", envelope)
        flushes[0] = 0
        payload = records.accepted(Kind.STATUS_REPORT, 1, time.time(), body(0))
        append = self.async_cpu(lambda i: journal.append(payload), n, c, lambda: None)
        per_flush = n * a.repeat / max(1, flushes[0])
        self.add(
            section, "append", "of which: `journal.append` alone (group commit, its fdatasync)", append,
            f"{c} concurrent; {per_flush:.1f} records per fdatasync",
        )  # fmt: skip
        line = {"application": "bench", "bytes": 120, "sms_msg_id": "stage-1", "status": "DELIVRD"}

        def log_line(i: int) -> None:
            logs.callback({
                "request_id": os.urandom(16).hex(), "endpoint": "status-report", "code": 200, "ms": 0.42,
                "client": "127.0.0.1", **line,
            })  # fmt: skip

        logs.flush()
        per_line = self.sync_cpu(log_line, n, logs.flush)  # with the batched writes to the file
        self.add(
            section, "log", "of which: the `callback` log line (rendered to JSON, batched write)", per_line
        )
        template = callbacks.TEMPLATES["status-report"]
        tally = metrics.Tally()

        def observe(i: int) -> None:
            tally.count(template, 200, 0.0004)

        mode = "counted in memory, " + ("multiprocess" if metrics.MULTIPROCESS else "single process") + " values"
        self.add(
            section,
            "metrics",
            "of which: metrics (request counter + latency histogram)",
            self.sync_cpu(observe, n),
            mode,
        )
        rest = whole - lookup - accept - append - self.figures["log"] - self.figures["metrics"]
        self.add(
            section,
            "rest",
            "of which: the rest (HTTP parsing, header scan, request id, answer)",
            rest,
            "whole minus the pieces",
        )
        harness = self.async_cpu(served(nothing, {}), n, c, lambda: None)
        self.add(
            section, "harness", "uvicorn's protocol alone, an ASGI application answering 200 (in the plain handler's figure)",
            harness, "the in-memory connection and its request bytes are in every figure here",
        )  # fmt: skip
        self.add(section, "body", "making each request's body (in every figure here)", self.sync_cpu(body, n))
        answers.clear()
        plain = self.async_cpu(served(plain_app, {}), n, c, lambda: None)
        if answers != {200: n // c * c * a.repeat}:
            raise RuntimeError(f"the plain handler answered {answers}")
        self.add(
            section, "plain", "**plain Starlette handler** (`await request.form()`, 200), through uvicorn's protocol", plain
        )
        self.add(section, "ratio", "acknowledgement / plain handler", None, f"{whole / plain:.2f}")
        answers.clear()
        plain_new = self.async_cpu(served(plain_app, {}, new_connections=True), n, c, lambda: None)
        self.add(section, "plain-new", "**plain Starlette handler**, a new connection per request", plain_new)
        ratio = f"{whole_new / plain_new:.2f}"
        self.add(section, "ratio-new", "acknowledgement / plain handler, a new connection per request", None, ratio)
        self.loop.run_until_complete(journal.close())
        os.close(log_file)
        self.paced_appends(settings.journal_group_window_seconds)

    def paced_appends(self, window: float) -> None:
        """``journal.append`` of records that come one at a time at a steady rate (as callbacks do
        with a new connection each), without and with the group window: CPU per record, records
        per fdatasync, and the wait for durability."""
        from receiver import records
        from receiver.config import Settings
        from receiver.journal import Journal
        from receiver.journal.envelope import Kind

        section = "journal, records arriving one at a time (per record)"
        payload = records.accepted(Kind.STATUS_REPORT, 1, time.time(), body(0))
        rate = self.args.paced_rate
        n = int(rate * 2)

        async def run(group_window: float, preallocate: bool) -> tuple[float, float, float]:
            root = self.base / f"paced-{group_window}-{preallocate}"
            journal = Journal(
                root, max_bytes=1 << 40, segment_bytes=8 << 20, sync=Settings().journal_sync, group_window=group_window,
                preallocate=preallocate,
            )  # fmt: skip
            await started(journal)
            await journal.append(payload)
            flushes = count_flushes(journal)
            waits: list[float] = []

            async def one() -> None:
                start = time.perf_counter()
                await journal.append(payload)
                waits.append(time.perf_counter() - start)

            tasks = []
            begin = time.perf_counter()
            spent = cpu()
            for i in range(n):
                delay = begin + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.ensure_future(one()))
            await asyncio.gather(*tasks)
            spent = cpu() - spent
            await journal.close()
            waits.sort()
            return spent / n, n / max(1, flushes[0]), waits[int(n * 0.99)]

        variants = (
            ("no group window", 0.0, True),
            (f"group window {window * 1000:g} ms", window, True),
            (f"group window {window * 1000:g} ms, segment files that grow (`RECEIVER_JOURNAL_PREALLOCATE=false`)", window, False),
        )  # fmt: skip
        for label, group_window, preallocate in variants:
            per_record, per_flush, p99 = statistics.median_low(
                [self.loop.run_until_complete(run(group_window, preallocate)) for _ in range(self.args.repeat)]
            )
            self.add(
                section, f"paced-{group_window}-{preallocate}", f"`journal.append` at {rate:,}/s, {label}", per_record,
                f"{per_flush:.1f} records per fdatasync; p99 wait {p99 * 1000:.2f} ms; the pacing loop's own CPU included",
            )  # fmt: skip

    # --- the writer ----------------------------------------------------------------------------

    def writer_side(self) -> None:
        from receiver import records, writer
        from receiver.journal import JournalReader
        from receiver.journal.envelope import Kind

        a = self.args
        section = f"writer (per report, batches of {a.batch_size})"
        size = a.batch_size
        reader = JournalReader(self.journal_root)
        reader.try_lock()
        start, got = time.process_time(), 0
        while True:
            batch = reader.read(size)
            if not batch.payloads:
                break
            got += len(batch.payloads)
            reader.commit(batch)
        read = (time.process_time() - start) / max(1, got)
        reader.close()
        self.add(
            section, "read", "reading the journal (`JournalReader.read` + `commit`)", read, f"{got:,} records"
        )
        self.batches = [
            [
                records.accepted(Kind.STATUS_REPORT, 1, time.time(), body(10_000_000 + b * size + i))
                for i in range(size)
            ]
            for b in range(a.batches + 1)
        ]
        sample = self.batches[0]
        decode = self.sync_cpu(lambda i: writer._decode(sample), max(1, 20_000 // size)) / size
        self.add(section, "decode", "`writer._decode` (envelope, protocol parse, records)", decode)
        decoded = [r for _, r in writer._decode(sample) if isinstance(r, records.ReportRecord)]
        rows = self.sync_cpu(
            lambda i: writer._columns(writer._report_row(r) for r in decoded), max(1, 20_000 // size)
        )
        self.add(
            section, "rows", "building the rows (`_report_row`, `_columns`; inside `store()`)", rows / size
        )
        if not a.no_database:
            self.loop.run_until_complete(self.store())

    async def store(self) -> None:
        import asyncpg

        from receiver import applications, metrics, writer, writer_process
        from receiver.config import Settings
        from receiver.db import migrate

        a = self.args
        section = f"writer (per report, batches of {a.batch_size})"
        pg = start_embedded(self.base / "pg")
        try:
            postmaster = int((pg.pgdata / "postmaster.pid").read_text().split()[0])
            admin = await asyncpg.connect(pg.url)
            await admin.execute("CREATE DATABASE bench_stages")
            await admin.close()
            dsn = with_database(pg.url, "bench_stages")
            conn = await asyncpg.connect(dsn)
            await migrate.apply(conn)
            app, _ = await applications.create(conn, "bench", [])
            settings = Settings(database_url=dsn, data_dir=self.base / "data")
            hooks = writer_process.hooks(settings)
            backend = int(await conn.fetchval("SELECT pg_backend_pid()"))
            own = time.process_time
            results: list[
                tuple[float, float, float, float]
            ] = []  # writer CPU, backend, other PostgreSQL, wall
            for index, payloads in enumerate(self.batches):
                batch = [_with_app(record, app.id) for _, record in writer._decode(payloads)]
                others = [p for p in descendants(postmaster) if p != backend]
                before = (own(), cpu_seconds([backend]), cpu_seconds(others), time.perf_counter())
                with metrics.on_commit():
                    await writer.store(conn, batch, hooks)
                after = (own(), cpu_seconds([backend]), cpu_seconds(others), time.perf_counter())
                if index:  # the first batch warms the caches
                    results.append(tuple(b - a_ for a_, b in zip(before, after, strict=True)))  # type: ignore[arg-type]
            stored = await conn.fetchval("SELECT count(*) FROM status_reports")
            await conn.close()
        finally:
            getattr(pg._server, "cleanup", pg.stop)()
        reports = len(results) * a.batch_size
        client, backend_cpu, other, wall = (sum(column) / reports for column in zip(*results, strict=True))
        self.add(section, "store_py", "`writer.store()`: the writer's side (rows, asyncpg, after-insert steps)", client,
                 f"{len(results)} batches after a warm-up; {stored:,} rows in the table at the end")  # fmt: skip
        self.add(section, "pg_backend", "`writer.store()`: PostgreSQL, the writer's backend", backend_cpu,
                 f"/proc ticks of 1/{os.sysconf('SC_CLK_TCK')} s over {reports:,} reports")  # fmt: skip
        self.add(
            section,
            "pg_other",
            "`writer.store()`: PostgreSQL, its other processes (WAL writer, checkpointer…)",
            other,
        )
        self.add(section, "wall", "`writer.store()`: wall time (not CPU), for scale", wall)

    # --- output -----------------------------------------------------------------------------------

    def totals(self) -> None:
        f = self.figures
        section = "total"
        parts = ["ack", "read", "decode", "rows", "store_py", "pg_backend", "pg_other"]
        have = [p for p in parts if p in f]
        total = sum(f[p] for p in have)
        missing = (
            "" if len(have) == len(parts) else f" (without: {', '.join(p for p in parts if p not in f)})"
        )
        self.add(
            section,
            "total",
            "**total CPU per durable event** (acknowledgement + writer + PostgreSQL)",
            total,
            missing.strip(),
        )
        self.add(section, "plain2", "**plain Starlette handler**, per request", f["plain"])
        self.add(section, "ratio2", "durable event / plain handler", None, f"{total / f['plain']:.2f}")

    def table(self) -> str:
        a = self.args
        from receiver.metrics import MULTIPROCESS

        lines = [
            (
                f"Stage table: CPU per request (acknowledgement) and per report (writer, PostgreSQL), in-process, no network; "
                f"median of {a.repeat} runs of {a.requests:,} requests ({a.concurrency} at a time, uvloop) and "
                f"{a.batches} batches of {a.batch_size:,} reports. Metrics {'multiprocess' if MULTIPROCESS else 'single process'}; "
                f"thread switch interval {self.switch_interval * 1000:g} ms. "
                f"{os.cpu_count()} cores, Python {sys.version.split()[0]}. Code: {_git_state()}. Other processes on "
                "the machine disturb these figures: compare rows of one run."
            ),
            "",
            "| stage | CPU µs | note |",
            "|---|---:|---|",
        ]
        current = None
        for section, stage, micros, note in self.rows:
            if section != current:
                lines.append(f"| *{section}* | | |")
                current = section
            lines.append(f"| {stage} | {'' if micros is None else f'{micros:.1f}'} | {note} |")
        lines += [
            "",
            (
                "Both figures include uvicorn's HTTP parsing; neither TLS nor the kernel's network, which cost the "
                "receiver and the plain handler the same."
            ),
        ]
        return "\n".join(lines) + "\n"

    def run(self) -> None:
        import uvloop

        self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(self.loop)
        try:
            log("acknowledgement path")
            self.acknowledgement()
            log("writer")
            self.writer_side()
            self.totals()
        finally:
            self.loop.close()
        text = self.table()
        print(text)
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "stages.md").write_text(text)
        log(f"wrote {(OUT / 'stages.md').relative_to(ROOT)}")


def _with_app(record: Any, application_id: int) -> Any:
    """The record as the application in the benchmark's database (its id there may differ)."""
    import dataclasses

    return dataclasses.replace(record, application_id=application_id)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench stages",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--requests", type=int, default=20_000, help="requests per measured run (default 20000)"
    )
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight at once (default 32)")
    parser.add_argument(
        "--batch-size", type=int, default=1000, help="reports per writer batch (default 1000)"
    )
    parser.add_argument("--batches", type=int, default=20, help="measured writer batches (default 20)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure, the median shown (default 3)")
    parser.add_argument("--no-database", action="store_true", help="skip the PostgreSQL stages")
    parser.add_argument("--paced-rate", type=int, default=1500,
                        help="records per second of the paced journal rows (default 1500: a worker's share of a"
                        " new-connection burst)")  # fmt: skip
    parser.add_argument("--switch-interval", type=float, default=None, metavar="MS",
                        help="the interpreter's thread switch interval (default: what the worker sets)")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    stages = Stages(args)
    # As under `receiver serve`: metrics in multiprocess mode. Set before prometheus_client is imported.
    from receiver import metrics_dir

    folder = metrics_dir.prepare(Path(tempfile.mkdtemp(prefix="receiver-bench-metrics-", dir=stages.base)))
    try:
        stages.run()
    finally:
        if folder is not None:
            folder.release()
        import shutil

        shutil.rmtree(stages.base, ignore_errors=True)


if __name__ == "__main__":
    main()
