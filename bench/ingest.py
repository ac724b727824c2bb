"""Status-report ingestion: the receiver beside a plain Starlette handler and a naive INSERT-per-request one.

    .venv/bin/python -m bench.ingest [--rounds 3] [--duration 10] [--connections 64] [--threads 2] [--workers 2]
                                     [--pinned] [--soak SECONDS] [--readme-assets]

Three servers under the same uvicorn settings (uvloop, the receiver's httptools protocol, the
same worker count, access log off), each measured over HTTP and over TLS, with keep-alive
connections and with a new connection (``Connection: close``) per request:

* ``receiver``: ``receiver serve`` on a fresh database of an embedded PostgreSQL the benchmark
  starts; its workers answer 2xx once the report is in their fsync'd journal, and its writer
  process (niceness 19, SCHED_IDLE) moves the journals into PostgreSQL;
* ``plain``: the handler a user of Starlette would write, ``await request.form()`` then
  ``Response(status_code=200)``; nothing stored (bench/baselines.py);
* ``naive``: the same plus one ``INSERT`` per request through an asyncpg pool, then 200.

Layout. Default: as a small deployment runs, on this one machine: ``--workers`` (2) workers per
server, PostgreSQL beside them, nothing pinned, the load generator sharing the cores.
``--pinned``: the one-core layout, the servers and PostgreSQL pinned to ``--server-cpus`` (the
upper half of the cores), the load generators to ``--client-cpus`` (the lower half), 1 worker
unless ``--workers`` says otherwise. The output says which layout was measured.

Load comes from ``wrk`` (``apt-get install wrk``) with bench/ingest.lua, which gives every
request a unique ``smsMsgId`` (also sent as its ``X-Request-Id``, which the receiver and the
naive handler answer with) and records exactly which ids got a 2xx. Rounds alternate
between the servers (receiver, plain, naive, receiver, ...) and the table shows each one's
median. After every receiver and naive round the benchmark waits until the database has every
acknowledged id (zero loss, checked id by id) and reports how long the writer took to catch up.
CPU is counted per process group: the receiver's HTTP workers, its writer process, PostgreSQL
(all its processes, the writer's backend included), the load generator, and anything else.

Latency, open loop (bench/openloop.py; counted from each request's due time): the receiver at
half its measured maximum (per connection mode), and at 500 reports/s with a new connection per
request (Huawei's recommended sending rate), the plain handler beside it at the same rates.
``--soak SECONDS`` finally drives steady load for that long and samples the resident size of
every worker.

Output: a markdown table on stdout and in bench/out/ingest.md (with the ratios the goals name:
receiver/plain and receiver/naive throughput, p99 at half the maximum and at 500/s, zero loss),
raw figures in bench/out/ingest.json, a chart in bench/out/ingest.png (and with
``--readme-assets`` the chart and the table in docs/bench-ingest.png and .md).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from receiver import disks
from receiver.pacing import process_seconds
from receiver.procs import parent

from .support import PageCacheWatch, page_cache_summary, parse_cpus, start_embedded

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
OUT = BENCH / "out"
DOCS = ROOT / "docs"
LUA = BENCH / "ingest.lua"

SERVERS = ("receiver", "plain", "naive")
LABELS = {"receiver": "receiver", "plain": "plain Starlette", "naive": "naive INSERT"}
HUAWEI_RATE = 500.0  # reports/s: the platform's recommended sending rate
MODES = {"keep": "keep-alive", "close": "new connection"}
TRANSPORTS = {"http": "HTTP", "tls": "TLS"}
SAMPLE_BODY = b"sequence=1&total=1&orgCode=000&updateTime=2018-04-13T06%3A31%3A46Z&source=2&smsMsgId={id}&status=DELIVRD"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- processes and CPUs ------------------------------------------------------------------------


def pinned(argv: list[str], cpus: set[int] | None) -> list[str]:
    if not cpus or shutil.which("taskset") is None:
        return argv
    return ["taskset", "-c", ",".join(map(str, sorted(cpus))), *argv]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def world_readable_tmpdir(prefix: str) -> Path:
    """A temporary folder the embedded PostgreSQL can use even as root (see receiver/db/embedded.py)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A throw-away ECDSA P-256 certificate for 127.0.0.1 (openssl; the venv has no `cryptography`)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes (clock ticks from /proc), those that are still alive."""
    return sum(process_seconds(pid) for pid in pids)


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent in processes (user, nice, system; all cores; /proc/stat).

    Interrupt time (loopback networking runs largely in softirq) and steal are left out: no
    process is charged for them, so they would show up as "other" load that is in fact ours.
    """
    user, nice, system = (int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:4])
    return (user + nice + system) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        ppid = parent(int(entry.name))
        if ppid is not None:
            children.setdefault(ppid, []).append(int(entry.name))
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        pending.extend(children.get(current, []))
    return found


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _is_writer(command: str) -> bool:
    return "receiver writer" in command


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class Server:
    """One server under test in a child process (own session), pinned to the server CPUs."""

    def __init__(
        self, name: str, transport: str, argv: list[str], env: dict[str, str], *, cpus: set[int] | None, logs: Path,
        tls: tuple[Path, Path] | None, token: str,
    ) -> None:  # fmt: skip
        self.name, self.transport, self.token = name, transport, token
        self.port = free_port()
        self.argv = [*argv, "--port", str(self.port)]
        if tls:
            self.argv += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
        self.argv = pinned(self.argv, cpus)
        self.env = env
        self.log_path = logs / f"{name}-{transport}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        scheme = "https" if tls else "http"
        self.base_url = f"{scheme}://127.0.0.1:{self.port}"
        self.path = f"/callbacks/{token}/status-report"

    def start(self, timeout: float = 90) -> None:
        out = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                status = self.post(SAMPLE_BODY.replace(b"{id}", b"probe-" + secrets.token_hex(4).encode()))
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} did not answer; see {self.log_path}")

    def post(self, body: bytes) -> int:
        if self.base_url.startswith("https"):
            context = ssl._create_unverified_context()  # the benchmark's own self-signed certificate
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                "127.0.0.1", self.port, timeout=5, context=context
            )
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("POST", self.path, body, {"Content-Type": "application/x-www-form-urlencoded"})
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    def pids(self) -> list[int]:
        return descendants(self.proc.pid) if self.proc else []

    def workers(self) -> list[int]:
        """The uvicorn worker processes: spawned children with several workers, else the server itself."""
        if self.proc is None:
            return []
        spawned = [p for p in self.pids() if "spawn_main" in cmdline(p)]
        return spawned or [self.proc.pid]

    def syncers(self) -> list[int]:
        """The receiver's journal syncer processes (one per worker)."""
        return [p for p in self.pids() if "journal/syncer.py" in cmdline(p)]

    def split_pids(self) -> tuple[list[int], list[int]]:
        """(the HTTP side: workers and their supervisor, the writer process of ``receiver serve``)."""
        pids = self.pids()
        writer = [p for p in pids if _is_writer(cmdline(p))]
        return [p for p in pids if p not in writer], writer

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # our own session: whatever is left of it
        except (ProcessLookupError, PermissionError):
            pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)


# --- load --------------------------------------------------------------------------------------


@dataclass
class Round:
    transport: str
    mode: str
    server: str
    round: int
    prefix: str
    duration: float = 0.0
    requests: int = 0
    acked: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    rate: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    p999_ms: float = 0.0
    max_ms: float = 0.0
    server_cpu: float = 0.0  # cores used by the server's HTTP workers (and their supervisor), on average
    writer_cpu: float = 0.0  # cores used by the receiver's writer process
    db_cpu: float = 0.0  # cores used by PostgreSQL's processes
    client_cpu: float = 0.0  # cores used by wrk
    foreign_cpu: float = 0.0  # cores used by anything else on the machine
    stored_at_end: int | None = None  # acknowledged ids already in PostgreSQL when the load stopped
    drain_seconds: float | None = None  # then until all of them were
    lost: int | None = None  # acknowledged ids not in the database
    rss: dict[str, int] = field(default_factory=dict)


def autogroups() -> str:
    """The kernel's autogroup scheduling, which decides whether the writer's SCHED_IDLE backend
    yields to the workers (docs/operations.md, PostgreSQL on the same machine)."""
    try:
        state = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip()
    except OSError:
        return ""
    return "; kernel autogroups " + ("on" if state == "1" else "off (`kernel.sched_autogroup_enabled=0`)")


def write_back(vm: Path = disks.VM) -> str:
    """When the kernel starts writing dirty pages back, which decides whether the journal's
    syncs wait for piles of PostgreSQL's pages (docs/operations.md, PostgreSQL on the same machine)."""
    found = disks.write_back(vm)
    if "dirty_background_bytes" not in found or "dirty_background_ratio" not in found:
        return ""
    size, ratio = found["dirty_background_bytes"], found["dirty_background_ratio"]
    return "; write-back from " + (f"{size / 2**20:g} MiB dirty" if size else f"{ratio} % of memory dirty")


def journal_of(env: dict[str, str]) -> Path:
    """The journal's folder of a receiver started with ``env`` (in this folder, as the
    benchmark starts it)."""
    return Path(env.get("RECEIVER_JOURNAL_DIR") or Path(env["RECEIVER_DATA_DIR"]) / "journal").absolute()


def journal_disk(journal: Path, pgdata: Path) -> str:
    """Whether the receiver's journal is on the disk of PostgreSQL's files, where its syncs wait
    for PostgreSQL's writes (docs/operations.md, PostgreSQL on the same machine)."""
    try:
        same = disks.disks_of(disks.device(journal)) & disks.disks_of(disks.device(pgdata))
    except OSError:
        return ""
    return "; the journal " + ("on the disk of PostgreSQL's files" if same else "off the disk of PostgreSQL's files")


def read_wrk_result(path: Path) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """wrk's summary and, per thread prefix, (requests made, acknowledged, numbers not acknowledged)."""
    info: dict[str, Any] = {}
    threads: dict[str, list[int]] = {}
    counted: set[str] = set()
    for line in path.read_text().splitlines():
        kind, *rest = line.split(" ")
        if kind == "summary":
            duration, requests, connect, read, write, status, timeout = map(int, rest)
            info.update(duration=duration / 1e6, requests=requests)
            info["errors"] = {k: v for k, v in
                              {"connect": connect, "read": read, "write": write, "status": status, "timeout": timeout}.items()
                              if v}  # fmt: skip
        elif kind == "latency":
            p50, p90, p99, p999, _mean, maximum = map(float, rest)
            info.update(
                p50_ms=p50 / 1000,
                p90_ms=p90 / 1000,
                p99_ms=p99 / 1000,
                p999_ms=p999 / 1000,
                max_ms=maximum / 1000,
            )
        elif kind == "counted":  # a server whose ids are not checked (the plain handler): the 2xx counted
            prefix, made, acked = rest[0], int(rest[1]), int(rest[2])
            threads[prefix] = [made, acked]
            counted.add(prefix)
        elif kind == "stray":
            raise RuntimeError(
                f"wrk thread {rest[0]}: {rest[1]} answers named no request of the thread: the server does not "
                "answer with the request's X-Request-Id, so which ids it acknowledged is unknown"
            )
        elif kind == "thread":
            prefix, made, acked = rest[0], int(rest[1]), int(rest[2])
            missing = [int(v) for v in rest[3].split(",") if v] if len(rest) > 3 else []
            if made - len(missing) != acked:
                raise RuntimeError(
                    f"wrk thread {prefix}: {made} requests, {acked} acknowledged, {len(missing)} not"
                )
            threads[prefix] = [made, acked, *missing]
    if counted and len(counted) != len(threads):
        raise RuntimeError("wrk: some threads counted, some accounted id by id")
    info["counted"] = bool(counted)
    return info, threads


def acked_ids(threads: dict[str, list[int]]) -> set[str]:
    ids: set[str] = set()
    for prefix, (made, _acked, *missing) in threads.items():
        gone = set(missing)
        ids.update(f"{prefix}{n}" for n in range(1, made + 1) if n not in gone)
    return ids


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.server_cpus = parse_cpus(args.server_cpus) if args.server_cpus else None
        self.client_cpus = parse_cpus(args.client_cpus) if args.client_cpus else None
        self.db_cpus = parse_cpus(args.db_cpus) if args.db_cpus else self.server_cpus
        self.base = world_readable_tmpdir("receiver-bench-ingest-")
        self.run_id = secrets.token_hex(2)
        self.rounds: list[Round] = []
        self.latency: list[dict[str, Any]] = []
        self.soak: dict[str, Any] | None = None
        self.pg: Any = None
        self.pg_pids: list[int] = []
        self.servers: dict[str, Server] = {}
        self.dsn: dict[str, str] = {}
        self.token = ""

    # --- set-up --------------------------------------------------------------------------

    def start_database(self) -> None:

        mine = os.sched_getaffinity(0)
        if self.db_cpus:
            os.sched_setaffinity(0, self.db_cpus)  # PostgreSQL inherits it
        try:
            self.pg = start_embedded(self.base)
        finally:
            os.sched_setaffinity(0, self.client_cpus or mine)
        pidfile = self.pg.pgdata / "postmaster.pid"
        self.pg_postmaster = int(pidfile.read_text().split()[0])
        for name in ("bench_receiver", "bench_naive"):
            asyncio.run(_admin(self.pg.url, f"CREATE DATABASE {name}"))
        self.dsn = {
            "receiver": with_database(self.pg.url, "bench_receiver"),
            "naive": with_database(self.pg.url, "bench_naive"),
        }
        from .baselines import create_naive_schema

        asyncio.run(create_naive_schema(self.dsn["naive"]))
        env = self.receiver_env("setup")
        created = subprocess.run(
            [sys.executable, "-m", "receiver", "app", "create", "bench", "--json"],
            env=env, capture_output=True, text=True, check=True, cwd=ROOT,
        )  # fmt: skip
        self.token = json.loads(created.stdout)["token"]

    def receiver_env(self, name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
        env.update(RECEIVER_DATABASE_URL=self.dsn["receiver"], RECEIVER_LOG_FORMAT="json")
        env.update(self.receiver_folders(name))
        return env

    def receiver_folders(self, name: str) -> dict[str, str]:
        """The receiver's data folder for a run (``name``), and what ``--set`` says."""
        return {"RECEIVER_DATA_DIR": str(self.base / f"data-{name}"), **self.args.set}

    def start_servers(self, transport: str, tls: tuple[Path, Path] | None) -> None:
        workers = ["--workers", str(self.args.workers)]
        py = [sys.executable, "-m"]
        baseline_env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
        specs = {
            "receiver": ([*py, "receiver", "serve", *workers], self.receiver_env(transport)),
            "plain": ([*py, "bench.baselines", "plain", *workers], baseline_env),
            "naive": (
                [*py, "bench.baselines", "naive", *workers],
                {**baseline_env, "BENCH_NAIVE_DSN": self.dsn["naive"]},
            ),
        }
        for name in self.args.servers:
            argv, env = specs[name]
            server = Server(
                name, transport, argv, env, cpus=self.server_cpus, logs=self.base, tls=tls, token=self.token
            )
            server.start()
            self.servers[name] = server
        log(
            f"{TRANSPORTS[transport]}: "
            + ", ".join(f"{s.name} on :{s.port} (pids {s.workers()})" for s in self.servers.values())
        )

    def stop_servers(self) -> None:
        for server in self.servers.values():
            server.stop()
        self.servers = {}

    # --- measuring -----------------------------------------------------------------------

    def wrk_argv(self, server: Server, mode: str, prefix: str, duration: float) -> list[str]:
        """wrk with ``--threads`` threads sharing ``--connections`` connections; the ids of the
        receiver's and the naive handler's rounds accounted one by one (bench/ingest.lua)."""
        connections = self.args.connections
        account = "count" if server.name == "plain" else "ids"
        return pinned(
            ["wrk", "-t", str(self.args.threads), "-c", str(connections), "-d", f"{duration:g}s",
             "--timeout", "10s", "-s", str(LUA), server.base_url, "--", server.path, mode, prefix, account],
            self.client_cpus,
        )  # fmt: skip

    def run_wrk(
        self, server: Server, mode: str, prefix: str, duration: float
    ) -> tuple[dict[str, Any], dict[str, list[int]], float]:
        result = self.base / f"wrk-{prefix}.txt"
        argv = self.wrk_argv(server, mode, prefix, duration)
        with open(self.base / f"wrk-{prefix}.out", "wb") as out:
            proc = subprocess.Popen(
                argv,
                env={**os.environ, "INGEST_RESULT_FILE": str(result)},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0 or not result.exists():
            raise RuntimeError(
                f"wrk failed ({proc.returncode}): {(self.base / f'wrk-{prefix}.out').read_text()}"
            )
        info, threads = read_wrk_result(result)
        return info, threads, usage.ru_utime + usage.ru_stime

    def measure(self, server: Server, mode: str, index: int, duration: float, *, keep: bool = True) -> Round:
        prefix = f"{self.run_id}{server.transport[0]}{mode[0]}{server.name[:2]}{index}"
        r = Round(server.transport, mode, server.name, index, prefix)
        pids, writer = server.split_pids()
        pg = descendants(self.pg_postmaster) if server.name != "plain" else []
        server_before, writer_before = cpu_seconds(pids), cpu_seconds(writer)
        db_before, machine_before = cpu_seconds(pg), machine_busy_seconds()
        info, threads, client_cpu = self.run_wrk(server, mode, prefix, duration)
        server_cpu, writer_cpu = cpu_seconds(pids) - server_before, cpu_seconds(writer) - writer_before
        db_cpu = cpu_seconds(pg) - db_before
        if server.name != "plain":
            # backends that started during the round (a pool growing): all their CPU is the round's
            db_cpu += cpu_seconds([pid for pid in descendants(self.pg_postmaster) if pid not in set(pg)])
        machine = machine_busy_seconds() - machine_before
        r.duration, r.requests = info["duration"], info["requests"]
        r.errors = info["errors"]
        r.acked = sum(t[1] for t in threads.values())
        r.rate = r.acked / r.duration
        for key in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"):
            setattr(r, key, info[key])
        r.server_cpu, r.writer_cpu, r.db_cpu, r.client_cpu = (
            server_cpu / r.duration,
            writer_cpu / r.duration,
            db_cpu / r.duration,
            client_cpu / r.duration,
        )
        r.foreign_cpu = max(0.0, (machine - server_cpu - writer_cpu - db_cpu - client_cpu) / r.duration)
        if server.name in ("receiver", "naive"):
            if info["counted"]:
                raise RuntimeError(f"{server.name}: its acknowledged ids were counted, not accounted one by one")
            r.stored_at_end, r.drain_seconds, r.lost = self.check_stored(
                server, prefix, acked_ids(threads)
            )
        r.rss = {str(pid): rss_bytes(pid) for pid in server.workers()}
        if keep:
            self.rounds.append(r)
        loss = "" if r.lost is None else (
            f", zero loss {'PASS' if r.lost == 0 else f'FAIL: {r.lost} acknowledged ids missing'}"
            f" (stored by the end {r.stored_at_end}/{r.acked}, all after {r.drain_seconds:.1f} s)"
        )  # fmt: skip
        log(
            f"{'' if keep else 'warm-up '}{TRANSPORTS[r.transport]} {MODES[mode]} {server.name} #{index}: "
            f"{r.rate:,.0f} req/s, p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms, errors {r.errors or 0}, "
            f"CPU workers {r.server_cpu:.2f} writer {r.writer_cpu:.2f} PostgreSQL {r.db_cpu:.2f} wrk {r.client_cpu:.2f} "
            f"other {r.foreign_cpu:.2f}{loss}"
        )
        return r

    def check_stored(
        self, server: Server, prefix: str, acked: set[str], timeout: float = 120
    ) -> tuple[int, float, int]:
        """(acknowledged ids stored when the load stopped, seconds until all were, acknowledged ids missing).

        The ids are read once now, then while the receiver's writer catches up only its journal
        backlog is watched (``/metrics``, a few milliseconds of a worker), and the ids are read
        again once the backlog is empty (or every few seconds if it never reads so). Reading every
        id of a round on each poll took PostgreSQL and this process a good part of a CPU, which
        the writer's pacing counts as other work and gives way to."""
        table = "status_reports" if server.name == "receiver" else "naive_reports"
        sql = f"SELECT sms_msg_id FROM {table} WHERE sms_msg_id LIKE $1"

        def stored() -> int:
            return len(acked & {row[0] for row in asyncio.run(_fetch(self.dsn[server.name], sql, prefix + "-%"))})

        start = time.monotonic()
        first = count = stored()
        checked, last_progress = start, start
        last_seen: tuple[int, int | None] = (count, None)
        while count < len(acked):
            time.sleep(0.1)
            backlog = _backlog(server) if server.name == "receiver" else None
            now = time.monotonic()
            if backlog is None or backlog == 0 or now - checked >= 5:
                count, checked = stored(), time.monotonic()
            if (count, backlog) != last_seen:
                last_progress, last_seen = time.monotonic(), (count, backlog)
            if time.monotonic() - last_progress > timeout:
                return first, time.monotonic() - start, len(acked) - count
        return first, time.monotonic() - start, 0

    def open_loop(self, server: Server, rate: float, mode: str, prefix: str) -> dict[str, Any]:
        """bench/openloop.py at a constant ``rate`` against ``server``: its result."""
        out = self.base / f"openloop-{prefix}.json"
        argv = pinned(
            [sys.executable, "-m", "bench.openloop", "--url", server.base_url + server.path, "--rate", f"{rate:.0f}",
             "--duration", f"{self.args.latency_duration:g}", "--mode", mode, "--prefix", prefix, "--out", str(out),
             "--connections", str(self.args.connections)],
            self.client_cpus,
        )  # fmt: skip
        subprocess.run(argv, check=True, cwd=ROOT)
        return json.loads(out.read_text())  # type: ignore[no-any-return]

    def latency_run(self, kind: str, mode: str, rate: float, max_rate: float | None = None) -> dict[str, Any]:
        """The receiver at a constant ``rate``, open loop, every 2xx checked in the database; the
        plain handler at the same rate beside it. ``kind``: ``half`` (half the measured maximum)
        or ``huawei`` (500 reports/s)."""
        server = self.servers["receiver"]
        prefix = f"{self.run_id}{server.transport[0]}{mode[0]}{kind[0]}ol"
        with PageCacheWatch() as page_cache:
            result = self.open_loop(server, rate, mode, prefix)
        result["page_cache"] = page_cache_summary(page_cache.samples, result["started_at"])
        missing = set(result.pop("unacked"))
        acked = {f"{prefix}-0_{i}" for i in range(result["sent"]) if i not in missing}
        _stored, drain, lost = self.check_stored(server, prefix, acked)
        result.update(
            kind=kind,
            transport=server.transport,
            mode=mode,
            max_rate=max_rate,
            acked=len(acked),
            lost=lost,
            drain_seconds=drain,
        )
        if "plain" in self.servers:  # the floor: what this machine gives a handler that stores nothing
            floor = self.open_loop(self.servers["plain"], rate, mode, prefix + "p")
            result.update(plain_p50_ms=floor["p50_ms"], plain_p99_ms=floor["p99_ms"])
            log(
                f"  plain Starlette at the same rate: p50 {floor['p50_ms']:.2f} ms, p99 {floor['p99_ms']:.2f} ms"
            )
        self.latency.append(result)
        what = (
            f"half of {max_rate:,.0f}"
            if max_rate
            else "Huawei's recommended rate"
            if kind == "huawei"
            else "given"
        )
        log(
            f"{TRANSPORTS[server.transport]} {MODES[mode]} receiver at {rate:,.0f} req/s ({what}), "
            f"open loop: p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, p99.9 {result['p999_ms']:.2f} ms "
            f"(client lateness p99 {result['client_lateness_p99_ms']:.2f} ms, client CPU "
            f"{result['client_cpu_us_per_request']:.0f} µs a request), statuses {result['statuses']}, "
            f"zero loss {'PASS' if lost == 0 else f'FAIL ({lost} missing)'}"
        )
        windows = result.get("slowest_windows") or []
        if windows:
            log("  slowest 0.1 s windows (s from the start: slowest answer, answers): " + ", ".join(
                f"{w['at_s']:.1f}: {w['max_ms']:.1f} ms, {w['answered']}" for w in windows
            ))  # fmt: skip
        cache = result["page_cache"]
        if cache:
            seen = (
                f"the largest write-back seen {cache['writeback_max_mib']:.1f} MiB, "
                f"{cache['writeback_max_at_s']:.1f} s from the start"
                if cache["writeback_max_mib"]
                else "no write-back seen"
            )
            log(f"  page cache: up to {cache['dirty_max_mib']:.1f} MiB dirty; {seen}")
        return result

    def run_soak(self, seconds: float) -> None:
        server = self.servers["receiver"]
        mode = self.args.soak_mode
        prefix = f"{self.run_id}{server.transport[0]}{mode[0]}soak"
        result = self.base / f"wrk-{prefix}.txt"
        argv = self.wrk_argv(server, mode, prefix, seconds)
        samples: list[dict[str, Any]] = []
        start = time.monotonic()
        log(f"soak: {seconds:g} s of {MODES[mode]} load on the receiver over {TRANSPORTS[server.transport]}")
        with open(self.base / f"wrk-{prefix}.out", "wb") as out:
            proc = subprocess.Popen(
                argv,
                env={**os.environ, "INGEST_RESULT_FILE": str(result)},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            writers: list[str] = []  # every writer process seen, in order: past half its bound one is replaced
            while proc.poll() is None:
                writers += [str(p) for p in server.split_pids()[1] if str(p) not in writers]
                samples.append({"t": time.monotonic() - start, "rss": _rss(server),
                                "backlog_bytes": _backlog(server)})  # fmt: skip
                time.sleep(self.args.soak_interval)
        info, threads = read_wrk_result(result)
        acked = acked_ids(threads)
        stored_at_end, drain, lost = self.check_stored(server, prefix, acked, timeout=300)
        writers += [str(p) for p in server.split_pids()[1] if str(p) not in writers]
        samples.append({"t": time.monotonic() - start, "rss": _rss(server),
                        "backlog_bytes": _backlog(server)})  # fmt: skip
        workers = sorted({pid for s in samples for pid in s["rss"]})
        per_worker = {}
        for pid in workers:
            series = [s["rss"][pid] for s in samples if s["rss"].get(pid)]
            per_worker[pid] = {"start": series[0], "end": series[-1], "max": max(series)}
        self.soak = {
            "seconds": seconds, "mode": mode, "transport": server.transport, "rate": len(acked) / info["duration"],
            "acked": len(acked), "errors": info["errors"], "p50_ms": info["p50_ms"], "p99_ms": info["p99_ms"],
            "stored_at_end": stored_at_end, "drain_seconds": drain, "lost": lost, "samples": samples, "workers": per_worker,
            "writer_pids": writers,
            "syncer_pids": [str(p) for p in server.syncers()],
        }  # fmt: skip
        for pid, v in per_worker.items():
            log(
                f"soak process {pid}: RSS start {v['start'] / 2**20:.1f} MiB, end {v['end'] / 2**20:.1f} MiB, max {v['max'] / 2**20:.1f} MiB"
            )
        log(
            f"soak: {self.soak['rate']:,.0f} req/s, zero loss {'PASS' if lost == 0 else f'FAIL ({lost} missing)'}"
        )

    # --- the whole run -------------------------------------------------------------------

    def run(self) -> None:
        args = self.args
        log(f"work folder {self.base}; {self.layout()}")
        self.start_database()
        cert_key = self_signed(self.base)
        try:
            for transport in args.transports:
                self.start_servers(transport, cert_key if transport == "tls" else None)
                try:
                    for mode in args.modes:
                        if args.rounds:
                            for name in args.servers:  # warm-up: caches, pools, PostgreSQL; not counted
                                self.measure(self.servers[name], mode, 0, args.warmup, keep=False)
                            for index in range(1, args.rounds + 1):
                                for name in args.servers:
                                    self.measure(self.servers[name], mode, index, args.duration)
                        if args.latency_duration and "receiver" in self.servers:
                            best = self.median("rate", transport, mode, "receiver")
                            if best:
                                self.latency_run("half", mode, best / 2, best)
                            elif args.latency_rate:
                                self.latency_run("half", mode, args.latency_rate)
                    if args.latency_duration and args.huawei_rate and "receiver" in self.servers:
                        self.latency_run("huawei", "close", args.huawei_rate)
                    if args.soak and transport == args.soak_transport:
                        self.run_soak(args.soak)
                finally:
                    self.stop_servers()
        finally:
            self.stop_servers()
            if self.pg is not None:
                # pgserver stops the server when its last handle (this process) lets go of it
                getattr(self.pg._server, "cleanup", self.pg.stop)()
        self.report()
        shutil.rmtree(self.base, ignore_errors=True)

    def limit(self, transport: str, mode: str, server: str) -> str:
        """What held a server's rate back: the load generator's CPU, the server side's CPU, the
        whole machine's (unpinned: they share the cores), or none of them (waits)."""
        client = self.median("client_cpu", transport, mode, server) or 0
        own = (self.median("server_cpu", transport, mode, server) or 0) + (
            self.median("writer_cpu", transport, mode, server) or 0
        )
        db = self.median("db_cpu", transport, mode, server) or 0
        foreign = self.median("foreign_cpu", transport, mode, server) or 0
        if not self.args.pinned:
            cores = len(os.sched_getaffinity(0))
            if own + db + client + foreign >= 0.85 * cores:
                share = "" if foreign < 0.1 else f", other processes {foreign:.2f}"
                return f"all cores busy (server side {own + db:.2f}, wrk {client:.2f}{share})"
            return "waiting"
        if self.args.db_cpus in (None, self.args.server_cpus):  # PostgreSQL shares the servers' CPUs
            own += db
        client_cores = (
            len(parse_cpus(self.args.client_cpus)) if self.args.client_cpus else os.cpu_count() or 1
        )
        server_cores = (
            len(parse_cpus(self.args.server_cpus)) if self.args.server_cpus else os.cpu_count() or 1
        )
        if client >= 0.8 * client_cores:
            return "load generator"
        if own >= 0.85 * server_cores:
            return "server CPU"
        if own + foreign >= 0.85 * server_cores:
            return "server CPU (shared with other processes)"
        return "waiting"

    def layout(self) -> str:
        """Which layout was measured, in a sentence."""
        a = self.args
        if not a.pinned:
            return (
                f"Layout: {a.workers} worker(s) per server, unpinned (the scheduler places the servers, the receiver's "
                f"writer, PostgreSQL and the load generator on all {len(os.sched_getaffinity(0))} cores), "
                f"PostgreSQL on the same machine{autogroups()}{write_back()}{self.journal_disk()}"
            )
        return (
            f"Layout: pinned, {a.workers} worker(s) per server; servers on CPU {a.server_cpus or 'any'}, PostgreSQL "
            f"on CPU {a.db_cpus or a.server_cpus or 'any'}, load on CPU {a.client_cpus or 'any'}{autogroups()}"
            f"{write_back()}{self.journal_disk()}"
        )

    def journal_disk(self) -> str:
        from receiver.db import embedded

        return journal_disk(journal_of(self.receiver_folders("http")), embedded.cluster_dir(self.base))

    def median(self, key: str, transport: str, mode: str, server: str) -> float | None:
        values = [
            getattr(r, key)
            for r in self.rounds
            if (r.transport, r.mode, r.server) == (transport, mode, server)
        ]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    # --- output --------------------------------------------------------------------------

    def report(self) -> None:
        """The comparison (ingest.*) and the soak (ingest-soak.*), each only when it ran."""
        OUT.mkdir(parents=True, exist_ok=True)
        raw = {
            "settings": {k: v for k, v in vars(self.args).items()},
            "code": _git_state(),
            "machine": {
                "cpus": os.cpu_count(),
                "python": sys.version.split()[0],
                "date": dt.datetime.now(dt.UTC).isoformat(),
            },
        }
        outputs: list[tuple[str, str, dict[str, Any], Any]] = []
        if self.rounds or self.latency:
            data = {**raw, "rounds": [asdict(r) for r in self.rounds], "latency_at_half_rate": self.latency}
            outputs.append(("ingest", self.table(), data, self.chart))
        if self.soak:
            outputs.append(("ingest-soak", self.soak_table(), {**raw, "soak": self.soak}, self.soak_chart))
        written: list[Path] = []
        for name, table, data, chart in outputs:
            print(table)
            (OUT / f"{name}.md").write_text(table)
            (OUT / f"{name}.json").write_text(json.dumps(data, indent=1, default=str))
            charts = chart(OUT / f"{name}.png")
            written += [OUT / f"{name}.md", OUT / f"{name}.json", *charts]
            if self.args.readme_assets:
                DOCS.mkdir(exist_ok=True)
                for path in charts:
                    shutil.copy(path, DOCS / f"bench-{path.name}")
                (DOCS / f"bench-{name}.md").write_text(table)
                written += [DOCS / f"bench-{name}.md", *(DOCS / f"bench-{p.name}" for p in charts)]
        log("wrote " + ", ".join(str(p.relative_to(ROOT)) for p in written))

    def combos(self) -> list[tuple[str, str]]:
        seen: list[tuple[str, str]] = []
        for r in self.rounds:
            if (r.transport, r.mode) not in seen:
                seen.append((r.transport, r.mode))
        return seen

    def table(self) -> str:
        a = self.args
        lines = [
            (
                f"{self.layout()}. {a.rounds} rounds of {a.duration:g} s per server and mode, alternating; medians. "
                f"{a.connections} connections (wrk, {a.threads} threads). Every figure below comes from this one run, "
                f"the servers measured side by side. Code: {_git_state()}."
            ),
            "",
            (
                "| transport | connections | server | req/s | p50 ms | p99 ms | errors | workers CPU | workers µs/req | writer CPU "
                "| PostgreSQL CPU | wrk CPU | limited by | stored by end of load | writer catch-up s |"
            ),
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
        ]
        for transport, mode in self.combos():
            for server in a.servers:
                rs = [r for r in self.rounds if (r.transport, r.mode, r.server) == (transport, mode, server)]
                if not rs:
                    continue
                errors = sum(sum(r.errors.values()) for r in rs)
                stored = self.median("stored_at_end", transport, mode, server)
                acked = self.median("acked", transport, mode, server)
                stored_text = f"{stored / acked:.0%}" if stored is not None and acked else "-"
                drain = self.median("drain_seconds", transport, mode, server)
                writer = (
                    f"{self.median('writer_cpu', transport, mode, server) or 0:.2f}"
                    if server == "receiver"
                    else "-"
                )
                db = (
                    f"{self.median('db_cpu', transport, mode, server) or 0:.2f}" if server != "plain" else "-"
                )
                rate, cpu = self.median("rate", transport, mode, server), self.median("server_cpu", transport, mode, server)
                per_request = f"{cpu / rate * 1e6:.0f}" if rate and cpu is not None else "-"
                lines.append(
                    f"| {TRANSPORTS[transport]} | {MODES[mode]} | {LABELS[server]} | {rate:,.0f} "
                    f"| {self.median('p50_ms', transport, mode, server):.2f} | {self.median('p99_ms', transport, mode, server):.2f} "
                    f"| {errors} | {cpu:.2f} | {per_request} | {writer} | {db} "
                    f"| {self.median('client_cpu', transport, mode, server):.2f} | {self.limit(transport, mode, server)} "
                    f"| {stored_text} | {'-' if drain is None else f'{drain:.1f}'} |"
                )
        lines += [
            "",
            (
                "CPU columns: cores used on average during the round (workers µs/req: the HTTP workers' CPU per "
                "request). The receiver's writer process and PostgreSQL "
                "(every process of it, the writer's backend included) are counted apart from the HTTP workers."
            ),
            "",
            (
                "| transport | connections | receiver / plain Starlette (goal ≥ 0.7, aim 0.9) | receiver / naive (goal ≥ 3) "
                "| p99 at half the receiver's max (goal < 10 ms) | p99 at 500/s, new connections (goal < 5 ms) "
                "| zero loss (every 2xx stored) |"
            ),
            "|---|---|---:|---:|---|---|---|",
        ]
        footnote = False
        combos = self.combos() or sorted({(h["transport"], h["mode"]) for h in self.latency})
        for transport in a.transports:
            if (transport, "close") not in combos and any(
                (h["transport"], h["kind"]) == (transport, "huawei") for h in self.latency
            ):
                combos.append((transport, "close"))
        for transport, mode in combos:
            rec = self.median("rate", transport, mode, "receiver")
            plain = self.median("rate", transport, mode, "plain")
            naive = self.median("rate", transport, mode, "naive")
            checked = [
                r for r in self.rounds if (r.transport, r.mode) == (transport, mode) and r.lost is not None
            ]
            runs = [h for h in self.latency if (h["transport"], h["mode"]) == (transport, mode)]
            checked_lost = sum(r.lost or 0 for r in checked) + sum(h["lost"] for h in runs)
            checked_acked = sum(r.acked for r in checked) + sum(h["acked"] for h in runs)
            loss = f"{'PASS' if checked_lost == 0 else 'FAIL'}: {checked_lost} of {checked_acked:,} missing"
            half = [h for h in runs if h["kind"] == "half"]
            huawei = [h for h in runs if h["kind"] == "huawei"]
            bound = {name: self.limit(transport, mode, name) == "load generator" for name in a.servers}
            plain_ratio, naive_ratio = _ratio(rec, plain, 0.7), _ratio(rec, naive, 3)
            if any(bound.values()):
                plain_ratio += " ¹"
                naive_ratio += " ¹"
                footnote = True
            lines.append(
                f"| {TRANSPORTS[transport]} | {MODES[mode]} | {plain_ratio} | {naive_ratio} "
                f"| {_latency(half[0], 10) if half else '-'} | {_latency(huawei[0], 5) if huawei else '-'} | {loss} |"
            )
        if footnote:
            lines += [
                "",
                (
                    "¹ the load generator, not the server, was the limit in some of these rounds (its CPU was "
                    "saturated): the servers' real capacities, and so these ratios, are not measured there."
                ),
            ]
        foreign = max((r.foreign_cpu for r in self.rounds), default=0)
        if foreign > 0.1:
            lines += [
                "",
                f"Warning: other processes used up to {foreign:.2f} cores during a round: the figures are disturbed.",
            ]
        return "\n".join(lines) + "\n"

    def soak_table(self) -> str:
        s = self.soak
        assert s is not None
        lines = [
            (
                f"Soak: {s['seconds']:g} s of {MODES[s['mode']]} load ({self.args.connections} connections) on the receiver "
                f"over {TRANSPORTS[s['transport']]}, {self.args.workers} worker(s): {s['rate']:,.0f} req/s, p50 {s['p50_ms']:.1f} ms, "
                f"p99 {s['p99_ms']:.1f} ms, errors {s['errors'] or 0}; zero loss {'PASS' if s['lost'] == 0 else 'FAIL'} "
                f"({s['lost']} of {s['acked']:,} acknowledged missing; {s['stored_at_end'] / max(1, s['acked']):.0%} stored when "
                f"the load stopped, all after {s['drain_seconds']:.1f} s). Code: {_git_state()}."
            ),
            "",
            "| process | RSS at start MiB | RSS at end MiB | max MiB |",
            "|---|---:|---:|---:|",
        ]
        for name, v in zip(_process_names(s), s["workers"].values(), strict=True):
            lines.append(
                f"| {name} | {v['start'] / 2**20:.1f} | {v['end'] / 2**20:.1f} | {v['max'] / 2**20:.1f} |"
            )
        backlog = [x["backlog_bytes"] for x in s["samples"] if x.get("backlog_bytes") is not None]
        if backlog:
            lines += [
                "",
                (
                    f"Journal backlog (not yet in PostgreSQL) sampled from /metrics: max {max(backlog) / 2**20:.1f} MiB, "
                    f"at the end {backlog[-1] / 2**20:.1f} MiB."
                ),
            ]
        return "\n".join(lines) + "\n"

    def soak_chart(self, path: Path) -> list[Path]:
        plt = _pyplot()
        if plt is None or self.soak is None:
            return []
        fig, ax = plt.subplots(figsize=(8, 4.2))
        for name, pid in zip(_process_names(self.soak), self.soak["workers"], strict=True):
            pts = [(x["t"], x["rss"][pid] / 2**20) for x in self.soak["samples"] if x["rss"].get(pid)]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=f"{name} RSS")
        ax.set_xlabel("seconds")
        ax.set_ylabel("resident size, MiB")
        ax.set_ylim(bottom=0, top=max(v["max"] for v in self.soak["workers"].values()) / 2**20 * 1.3)
        ax.grid(alpha=0.3)
        backlog = [
            (x["t"], x["backlog_bytes"] / 2**20)
            for x in self.soak["samples"]
            if x.get("backlog_bytes") is not None
        ]
        if backlog:
            twin = ax.twinx()
            twin.plot(
                [b[0] for b in backlog],
                [b[1] for b in backlog],
                color="#e07b39",
                linestyle=":",
                label="journal backlog",
            )
            twin.set_ylabel("journal backlog, MiB")
            twin.set_ylim(bottom=0)
            twin.legend(fontsize=8, loc="upper right")
        ax.legend(fontsize=8, loc="upper left")
        s = self.soak
        ax.set_title(f"receiver under {s['seconds']:g} s of {MODES[s['mode']]} load over {TRANSPORTS[s['transport']]} "
                     f"({s['rate']:,.0f} req/s)", fontsize=10)  # fmt: skip
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return [path]

    def chart(self, path: Path) -> list[Path]:
        plt = _pyplot()
        if plt is None or not self.rounds:
            return []
        combos = self.combos()
        colors = {"receiver": "#2b7bba", "plain": "#9aa5b1", "naive": "#e07b39"}
        fig, axes = plt.subplots(1, 2, figsize=(12.4, 4.6))
        width = 0.8 / len(self.args.servers)
        xs = range(len(combos))
        labels = [f"{TRANSPORTS[t]}\n{MODES[m]}" for t, m in combos]
        for i, server in enumerate(self.args.servers):
            rates = [self.median("rate", t, m, server) or 0 for t, m in combos]
            p99 = [self.median("p99_ms", t, m, server) or 0 for t, m in combos]
            offset = [x + (i - (len(self.args.servers) - 1) / 2) * width for x in xs]
            bars = axes[0].bar(offset, rates, width, label=LABELS[server], color=colors[server])
            axes[0].bar_label(bars, labels=[f"{v:,.0f}" for v in rates], fontsize=7, rotation=90, padding=2)
            axes[1].bar(offset, p99, width, label=LABELS[server], color=colors[server])
        half = {(h["transport"], h["mode"]): h for h in self.latency if h["kind"] == "half"}
        marks = [(x, half[c]["p99_ms"]) for x, c in zip(xs, combos) if c in half]
        if marks:
            axes[1].scatter([m[0] for m in marks], [m[1] for m in marks], marker="D", color="black", zorder=3,
                            label="receiver p99 at half its max rate")  # fmt: skip
            axes[1].axhline(10, color="red", linestyle="--", linewidth=1, label="10 ms goal")
        huawei = {(h["transport"], h["mode"]): h for h in self.latency if h["kind"] == "huawei"}
        marks = [(x, huawei[c]["p99_ms"]) for x, c in zip(xs, combos) if c in huawei]
        if marks:
            axes[1].scatter([m[0] for m in marks], [m[1] for m in marks], marker="^", color="black", zorder=3,
                            label=f"receiver p99 at {self.args.huawei_rate:g}/s, new connections")  # fmt: skip
            axes[1].axhline(5, color="purple", linestyle=":", linewidth=1, label="5 ms goal (at 500/s)")
        axes[0].set_title("durable throughput (2xx/s, median of rounds)")
        axes[0].set_ylabel("requests per second")
        axes[0].margins(y=0.2)
        axes[1].set_title(f"p99 latency at full load ({self.args.connections} connections)")
        axes[1].set_ylabel("milliseconds (log scale)")
        axes[1].set_yscale("log")
        for ax in axes[:2]:
            ax.set_xticks(list(xs), labels)
            ax.legend(fontsize=8)
            ax.grid(axis="y", alpha=0.3)
        fig.suptitle(
            textwrap.fill(f"receiver vs plain Starlette vs naive INSERT. {self.layout()}.", 140),
            fontsize=10,
        )
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return [path]


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is missing (pip install -e '.[bench]'): no chart")
        return None
    return plt


def _rss(server: Server) -> dict[str, int]:
    """Resident size of each HTTP worker, each worker's journal syncer and the writer process, by pid."""
    return {str(p): rss_bytes(p) for p in [*server.workers(), *server.syncers(), *server.split_pids()[1]]}


def _process_names(soak: dict[str, Any]) -> list[str]:
    """``worker 1``, ``worker 2``, ``syncer 1``, ``writer``, for the pids of a soak, in their order
    (``writer 1``, ``writer 2``... when the writer was replaced, in the order they ran)."""
    writers = list(soak.get("writer_pids", ()))
    syncers = set(soak.get("syncer_pids", ()))
    names, n, k = [], 0, 0
    for pid in soak["workers"]:
        if pid in writers:
            names.append("writer" if len(writers) == 1 else f"writer {writers.index(pid) + 1}")
        elif pid in syncers:
            k += 1
            names.append(f"syncer {k}")
        else:
            n += 1
            names.append(f"worker {n}")
    return names


def _latency(run: dict[str, Any], goal_ms: float) -> str:
    """A latency run's p99, against its goal, with the plain handler's at the same rate."""
    text = f"{run['p99_ms']:.1f} ms at {run['rate']:,.0f}/s {'(met)' if run['p99_ms'] < goal_ms else '(NOT met)'}"
    if run.get("client_lateness_p99_ms", 0) > 2:
        # the generator itself was late (past the millisecond it sends by): part of the figure is its own
        text += f" (the load generator was late by {run['client_lateness_p99_ms']:.1f} ms at p99)"
    if "plain_p99_ms" in run:
        text += f"; plain Starlette at that rate {run['plain_p99_ms']:.1f} ms"
    return text


def _ratio(a: float | None, b: float | None, goal: float) -> str:
    if not a or not b:
        return "-"
    value = a / b
    return f"{value:.2f} {'(met)' if value >= goal else '(NOT met)'}"


def _backlog(server: Server) -> int | None:
    """The journal bytes every worker acknowledged and the writer has not stored yet (``/metrics``)."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=2) if server.base_url.startswith("http:") else \
            http.client.HTTPSConnection("127.0.0.1", server.port, timeout=2, context=ssl._create_unverified_context())  # fmt: skip
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("receiver_journal_backlog_bytes "):
            return int(float(line.split()[1]))
    return None


def _git_state() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "receiver", "sql"],
            cwd=ROOT, capture_output=True, text=True, check=False,
        ).stdout.strip()  # fmt: skip
    except OSError:
        return "unknown"
    return f"{commit}{' with local changes to receiver/ or sql/' if dirty else ''}"


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _fetch(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument(
        "--rounds", type=int, default=3, help="measured rounds per server and mode (default 3)"
    )
    parser.add_argument("--duration", type=float, default=10, help="seconds per round (default 10)")
    parser.add_argument(
        "--warmup", type=float, default=2, help="seconds of unmeasured load per server and mode (default 2)"
    )
    parser.add_argument("--connections", type=int, default=64,
                        help="concurrent connections (default 64: enough for each server's maximum here)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2,
                        help="wrk's threads, sharing the connections (default 2: one per core of this machine)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=None,
                        help="uvicorn workers per server, the same for all three (default 2; 1 with --pinned)")  # fmt: skip
    parser.add_argument("--pinned", action="store_true",
                        help="the one-core layout: servers and PostgreSQL on --server-cpus, load on --client-cpus "
                             "(default: nothing pinned, as a small deployment runs)")  # fmt: skip
    parser.add_argument(
        "--server-cpus",
        default=None,
        help="with --pinned: CPUs for the servers and PostgreSQL (default: the upper half)",
    )
    parser.add_argument(
        "--client-cpus",
        default=None,
        help="with --pinned: CPUs for the load generators (default: the lower half)",
    )
    parser.add_argument("--db-cpus", default=None,
                        help="with --pinned: CPUs for PostgreSQL (default: the servers'; the client's stands for a "
                             "database machine of its own)")  # fmt: skip
    parser.add_argument(
        "--servers", default=",".join(SERVERS), help="comma-separated subset of receiver,plain,naive"
    )
    parser.add_argument(
        "--modes", default="keep,close", help="keep (keep-alive) and/or close (new connection each)"
    )
    parser.add_argument("--transports", default="http,tls", help="http and/or tls")
    parser.add_argument("--latency-duration", type=float, default=10,
                        help="seconds of each open-loop latency run: at half the receiver's max rate (per mode) "
                             "and at --huawei-rate with new connections (0: skip both)")  # fmt: skip
    parser.add_argument("--latency-rate", type=float, default=0,
                        help="with --rounds 0 (no measured maximum): the rate of the 'half' latency run")  # fmt: skip
    parser.add_argument("--huawei-rate", type=float, default=HUAWEI_RATE,
                        help="reports/s of the new-connection latency run (default 500, Huawei's recommended "
                             "sending rate; 0: skip it)")  # fmt: skip
    parser.add_argument(
        "--soak",
        type=float,
        default=0,
        help="then this many seconds of load for the memory check (the memory goal: flat over 600)",
    )
    parser.add_argument("--soak-mode", default="close", choices=list(MODES))
    parser.add_argument("--soak-transport", default="http", choices=list(TRANSPORTS))
    parser.add_argument("--soak-interval", type=float, default=5, help="seconds between RSS samples")
    parser.add_argument("--set", action="append", default=[], metavar="RECEIVER_X=VALUE",
                        help="a setting for the receiver under test (repeatable), e.g. RECEIVER_WRITER_INTERVAL_SECONDS=0")  # fmt: skip
    parser.add_argument(
        "--readme-assets", action="store_true", help="also write docs/bench-ingest.png and .md"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.servers = [s for s in args.servers.split(",") if s]
    args.modes = [m for m in args.modes.split(",") if m]
    settings = [item.partition("=") for item in args.set]
    if any(not key.startswith("RECEIVER_") or not eq for key, eq, _ in settings):
        sys.exit("--set takes RECEIVER_NAME=VALUE")
    args.set = {key: value for key, _, value in settings}
    args.transports = [t for t in args.transports.split(",") if t]
    for value, allowed in ((args.servers, SERVERS), (args.modes, MODES), (args.transports, TRANSPORTS)):
        bad = set(value) - set(allowed)
        if bad:
            sys.exit(f"unknown: {', '.join(sorted(bad))} (choose from {', '.join(allowed)})")
    if args.threads < 1 or args.connections < 1:
        sys.exit("--threads and --connections take a positive number")
    args.threads = min(args.threads, args.connections)  # wrk runs no thread without a connection
    if args.connections % args.threads:
        sys.exit("--connections must be a multiple of --threads (wrk gives each thread the same number)")
    if args.soak and "receiver" not in args.servers:
        sys.exit("--soak needs the receiver among --servers")
    if args.soak:
        args.transports = (
            args.transports
            if args.soak_transport in args.transports
            else [*args.transports, args.soak_transport]
        )
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: `apt-get install -y wrk` (Debian/Ubuntu), then run this again")
    if shutil.which("openssl") is None and "tls" in args.transports:
        sys.exit(
            "openssl is needed for the TLS certificate: `apt-get install -y openssl`, or pass --transports http"
        )
    cpus = sorted(os.sched_getaffinity(0))
    args.pinned = args.pinned or bool(args.server_cpus or args.client_cpus or args.db_cpus)
    if args.workers is None:
        args.workers = 1 if args.pinned else 2
    if not args.pinned:
        args.server_cpus = args.client_cpus = args.db_cpus = None
    elif len(cpus) >= 2:
        half = len(cpus) // 2
        args.client_cpus = args.client_cpus or ",".join(map(str, cpus[:half]))
        args.server_cpus = args.server_cpus or ",".join(map(str, cpus[half:]))
    os.chdir(ROOT)  # the servers import bench.baselines from here
    Bench(args).run()


if __name__ == "__main__":
    main()
