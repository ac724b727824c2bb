"""Helpers shared by the tests."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import tempfile
import time as _time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx2 as httpx
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from receiver.journal import Journal
from receiver.journal.reader import JournalReader

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
T = TypeVar("T")


def all_stored(root: Path) -> bool:
    """True when the writer has stored every durable record under ``root`` (as its cursors say)."""
    reader = JournalReader(root)
    try:
        return reader.drained()
    finally:
        reader.close()


HUAWEI_SAMPLES = Path(__file__).resolve().parent / "fixtures" / "huawei"


def fill_disk(journal: Journal) -> None:
    """From now on every write to the journal's open segment fails with ENOSPC (``/dev/full``)."""
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        os.dup2(full, journal._fd)
    finally:
        os.close(full)


def huawei_sample(name: str) -> str:
    """One of the platform's official sample bodies, byte for byte (tests/fixtures/huawei/)."""
    return (HUAWEI_SAMPLES / f"{name}.form").read_bytes().decode("ascii")


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def world_readable_tmpdir(prefix: str) -> Path:
    """A temporary folder PostgreSQL can reach even when the tests run as root (see embedded.py)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class Harness:
    """The service in-process (Starlette's TestClient): post callbacks, call /v1, read rows."""

    def __init__(self, client: TestClient, token: str, url: str, api_key: str) -> None:
        self.client, self.token, self.url, self.api_key = client, token, url, api_key

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A /v1 call with the harness's API key (after the journal has reached PostgreSQL)."""
        self.settle()
        headers = {"Authorization": f"Bearer {self.api_key}", **kwargs.pop("headers", {})}
        return self.client.request(method, path, headers=headers, **kwargs)

    lane: LaneServer | None = None  # set: callbacks go over a socket to the callback protocol and its lane

    def post(
        self, endpoint: str, body: str | bytes, content_type: str = FORM, token: str | None = None
    ) -> httpx.Response:
        path = f"/callbacks/{token or self.token}/{endpoint}"
        content = body.encode() if isinstance(body, str) else body
        if self.lane is not None:
            return self.lane.post(path, content, {"Content-Type": content_type})
        return self.client.post(path, content=content, headers={"Content-Type": content_type})

    def settle(self) -> None:
        """Wait until the writer has moved everything journaled into PostgreSQL, and the
        blacklist checks see every change committed so far."""
        state = self.client.app.state  # type: ignore[attr-defined]
        deadline = _time.monotonic() + 10
        while state.journal._flushing or not all_stored(state.settings.journal_path):
            assert _time.monotonic() < deadline, "the writer did not drain the journal"
            _time.sleep(0.01)
        mirror = state.blacklist_mirror
        if mirror is not None and mirror.loaded:
            assert self.client.portal is not None, "the client is not started"
            synced = self.client.portal.call(functools.partial(mirror.sync, timeout=10))
            assert synced or not mirror.loaded, "the blacklist mirror did not catch up"  # not loaded: PostgreSQL answers

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        self.settle()
        return [tuple(r.values()) for r in run(fetch(self.url, sql))]



def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A Prometheus exposition: each sample's value by its name and labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


async def admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def application(conn: asyncpg.Connection, name: str, channels: list[str] | None = None) -> int:
    """The id of the application ``name``, made now (with these channels) unless it exists."""
    app_id: int = await conn.fetchval(
        "INSERT INTO applications (name, token_hash, channels) VALUES ($1::text, sha256(convert_to($1::text, 'UTF8')),"
        " coalesce($2::text[], '{}'))"
        " ON CONFLICT (name) DO UPDATE SET name = excluded.name RETURNING id",
        name, channels,
    )  # fmt: skip
    return app_id


async def fetch(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def plan_nodes(conn: asyncpg.Connection, sql: str, *args: object, analyze: bool = False) -> list[dict[str, Any]]:
    """Every node of PostgreSQL's plan for ``sql`` (``EXPLAIN (FORMAT JSON)``), sub-plans included;
    ``analyze``: run, each node with its ``Actual Loops`` (0: never run, a partition pruned as it ran)."""
    plan = await conn.fetchval(f"EXPLAIN ({'ANALYZE, ' if analyze else ''}FORMAT JSON) {sql}", *args)
    nodes: list[dict[str, Any]] = []
    todo = [json.loads(plan) if isinstance(plan, str) else plan]
    while todo:
        node = todo.pop()
        if isinstance(node, list):
            todo += node
        elif isinstance(node, dict):
            if "Node Type" in node:
                nodes.append(node)
            todo += [v for v in node.values() if isinstance(v, list | dict)]
    return nodes


# --- a real `receiver serve` in a child process -----------------------------------------------

import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Self


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "receiver", *args], env=env, capture_output=True, text=True, check=check, timeout=120
    )


def service_env(data_dir: Path, database_url: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
    env["RECEIVER_DATA_DIR"] = str(data_dir)
    env["RECEIVER_LOG_FORMAT"] = "json"
    if database_url:
        env["RECEIVER_DATABASE_URL"] = database_url
    env.update(extra)
    return env


def proc_stat(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` after the command's name: state, parent, ...; None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def autogroup_nice(pid: int) -> str | None:
    """The niceness of the process's autogroup (its session's scheduling group); None in the
    root group (a session that began before autogroups did, such as init's), which reads empty."""
    fields = Path(f"/proc/{pid}/autogroup").read_text().split()
    return fields[-1] if fields else None


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (its children, theirs, ...), read from /proc now."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        fields = proc_stat(int(entry.name)) if entry.name.isdigit() else None
        if fields is not None:  # else gone meanwhile
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Service:
    """``receiver serve`` as a child process in its own process group.

    By default this Python's ``-m receiver serve`` on a free port; ``command`` is a whole command
    line instead (an installed ``receiver``, the image's ``CMD``), listening on ``RECEIVER_PORT``
    of ``env``, run in ``cwd`` as ``user`` (a uid, with its group from ``group``)."""

    def __init__(
        self,
        env: dict[str, str],
        workers: int = 2,
        *,
        command: list[str] | None = None,
        cwd: Path | None = None,
        user: tuple[int, int] | None = None,
    ) -> None:
        self.env = env
        self.workers = workers
        self.command, self.cwd, self.user = command, cwd, user
        self.port = int(env["RECEIVER_PORT"]) if command else free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.log = Path(env["RECEIVER_DATA_DIR"]) / f"serve-{self.port}.log"
        self.extra_args: list[str] = []  # more `receiver serve` options (TLS, ...)

    def start(self, workers: int | None = None, timeout: float = 60) -> Service:
        Path(self.env["RECEIVER_DATA_DIR"]).mkdir(parents=True, exist_ok=True)
        if self.command:
            argv = self.command
        else:
            argv = [sys.executable, "-m", "receiver", "serve", "--port", str(self.port)]
            argv += ["--workers", str(workers or self.workers), *self.extra_args]
        self.output = open(self.log, "a")  # noqa: SIM115
        as_user = {"user": self.user[0], "group": self.user[1], "extra_groups": []} if self.user else {}
        self.proc = subprocess.Popen(
            argv,
            env=self.env,
            cwd=self.cwd,
            stdout=self.output,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            **as_user,  # type: ignore[call-overload]
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"receiver serve exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if self.get("/healthz")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"receiver serve did not become healthy:\n{self.log.read_text()}")

    def request(
        self, method: str, path: str, body: bytes = b"", content_type: str | None = None, **headers: str
    ) -> tuple[int, bytes]:
        """``headers`` with ``_`` for ``-``: ``Authorization="Bearer ..."``."""
        conn = self.connection()
        try:
            headers = {name.replace("_", "-"): value for name, value in headers.items()}
            if content_type:
                headers["Content-Type"] = content_type
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)

    def get(self, path: str) -> tuple[int, bytes]:
        return self.request("GET", path)

    def post_form(self, path: str, body: str) -> tuple[int, bytes]:
        return self.request("POST", path, body.encode(), "application/x-www-form-urlencoded")

    def kill9(self) -> None:
        """SIGKILL to every process of the service at once: the main one, the writer, the
        workers (each in a session of its own) and their syncers."""
        assert self.proc is not None
        for pid in [*descendants(self.proc.pid), self.proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.output.close()

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM to the main process, as a supervisor would; return its exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self.output.close()
        return code

    def stop(self) -> None:
        """Clean-up: whatever state it is in, make sure nothing is left running."""
        below = descendants(self.proc.pid) if self.proc is not None and self.proc.poll() is None else []
        if self.proc is not None and self.proc.poll() is None:
            self.terminate()
        if self.proc is not None:
            for pid in below:  # the workers lead sessions of their own, out of the group killed next
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


class Load:
    """Threads that push distinct status reports until stopped, remembering which ones got a 200."""

    def __init__(self, service: Service, token: str, threads: int = 6, prefix: str = "load") -> None:
        self.service, self.token, self.prefix = service, token, prefix
        self.acked: set[str] = set()
        self.statuses: dict[int, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def acked_count(self) -> int:
        with self._lock:
            return len(self.acked)

    def _run(self, worker: int) -> None:
        n = 0
        path = f"/callbacks/{self.token}/status-report"
        while not self._stop.is_set():
            n += 1
            sms_id = f"{self.prefix}-{worker}-{n}"
            body = f"smsMsgId={sms_id}&status=DELIVRD&total=1&sequence=1&source=2&updateTime=2026-01-01T00%3A00%3A00Z"
            try:
                status, _ = self.service.post_form(path, body)
            except OSError:
                status = 0
                time.sleep(0.01)
            with self._lock:
                self.statuses[status] = self.statuses.get(status, 0) + 1
                if status == 200:
                    self.acked.add(sms_id)


def create_app_token(env: dict[str, str], name: str = "load") -> dict[str, str]:
    created: dict[str, str] = json.loads(cli("app", "create", name, "--json", env=env).stdout)
    return created


def wait_for(predicate, timeout: float = 60, interval: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            return value
        time.sleep(interval)


async def until(predicate, timeout: float = 10, interval: float = 0.01) -> bool:  # type: ignore[no-untyped-def]
    """``wait_for`` for async tests: poll ``predicate`` without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)
    return True


class OwnPostgres:
    """A PostgreSQL cluster of one test's own, so that the test may stop and start it."""

    def __init__(self, base: Path) -> None:
        from receiver.db import embedded

        self.server = embedded.start(base)
        self.url = self.server.url

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server._server.start()


# What the loopback delivers in one read when it is sent in one piece: a segment there carries up
# to 64 KiB. A larger request may come in two reads (when the worker wakes between them), and a
# callback whose body does not come whole with its head is the ASGI path's, by design.
_ONE_READ = 60_000


class LaneServer:
    """The in-process application behind the protocol a connection of ``receiver serve`` starts
    with (:class:`receiver.callback_protocol.CallbackProtocol`, which hands anything but a whole
    callback to uvicorn's) on a loopback port, in the application's own event loop: what
    ``receiver serve`` runs, but for the TestClient's portal. Every callback it is sent whole
    must be claimed by the lane."""

    def __init__(self, client: TestClient) -> None:
        import uvicorn
        from uvicorn.server import ServerState

        from receiver.callback_protocol import CallbackProtocol
        from receiver.uvicorn_adapter import LANE, configure

        self.client = client
        self.answered = 0  # requests the lane finished (claimed and not handed back)
        lane = client.app_state[LANE]
        claim = lane.claim

        def counted(scope: dict[str, Any]) -> Any:
            request = claim(scope)
            return None if request is None else _Counted(request, self)

        lane.claim = counted
        config = configure(uvicorn.Config(client.app, lifespan="off", proxy_headers=False, log_level="warning"),
                           client_timeout=10.0)  # fmt: skip
        config.load()

        async def start() -> asyncio.Server:
            loop = asyncio.get_running_loop()
            state = ServerState()
            return await loop.create_server(lambda: CallbackProtocol(config, state, client.app_state, loop),
                                            "127.0.0.1", 0)  # fmt: skip

        assert client.portal is not None
        self.server = client.portal.call(start)
        self.port = self.server.sockets[0].getsockname()[1]

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        answered = self.answered
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        request = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            sock.sendall(request.encode("latin-1") + body)  # head and body in one send, as the platform's come
            answer = http.client.HTTPResponse(sock)
            answer.begin()
            response = httpx.Response(answer.status, headers=answer.getheaders(), content=answer.read())
        # The lane writes its answer, then logs and counts the request in the same turn of the
        # loop: one more turn, and the request is done there too, as the test client's are.
        assert self.client.portal is not None
        self.client.portal.call(asyncio.sleep, 0)
        if len(body) <= self.client.app.state.settings.max_body_bytes and len(request) + len(body) <= _ONE_READ:  # type: ignore[attr-defined]
            assert self.answered == answered + 1, "a callback sent whole was not answered by the lane"
        return response

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()

        assert self.client.portal is not None
        self.client.portal.call(stop)


class _Counted:
    """A lane request that counts itself when the lane finishes it (not when it is handed back)."""

    def __init__(self, request: Any, server: LaneServer) -> None:
        self.request, self.server = request, server

    def finish(self, body: bytes, respond: Any) -> None:
        self.server.answered += 1
        self.request.finish(body, respond)


@contextlib.contextmanager
def serving(db_url: str, data_dir: Path, **settings: object) -> Iterator[Harness]:
    """The app in-process on ``db_url`` with one application and one API key, and the settings
    given; ``lane=True``: the harness posts its callbacks over a socket, through the lane."""
    lane = bool(settings.pop("lane", False))
    from receiver import apikeys, applications
    from receiver.config import Settings
    from receiver.http.app import create_app

    async def make_app() -> tuple[str, str]:
        conn = await asyncpg.connect(db_url)
        try:
            _, token = await applications.create(conn, "shop", ["csms100000001"])
            key = await apikeys.create(conn, "tests")
        finally:
            await conn.close()
        return token, key

    token, key = run(make_app())
    settings.setdefault("sweep_interval_seconds", 3600)  # tests sweep when they mean to
    config = Settings(database_url=db_url, data_dir=data_dir, log_format="json", **settings)  # type: ignore[arg-type]
    from receiver import logs

    try:
        with TestClient(create_app(config)) as client:
            harness = Harness(client, token, db_url, key)
            if lane:
                harness.lane = LaneServer(client)
            try:
                yield harness
            finally:
                if harness.lane is not None:
                    harness.lane.close()
    finally:
        logs.flush()  # the test's log lines while its output is still captured, not after
