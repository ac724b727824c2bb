"""The writer as a process of its own, and what every writer is wired with.

``receiver serve`` starts one writer process beside the HTTP workers (:class:`Supervisor`) and
starts it again if it dies. It runs at a lower CPU priority than the workers: when the machine
is saturated the operating system gives the CPU to acknowledgements, the journal absorbs the
burst, and the writer catches up afterwards. It reads every worker's journal folder, so
nothing waits for a dead worker to be replaced.

Deferring has a limit. A process can lower its own priority but not raise it again (that takes
``CAP_SYS_NICE``), and a writer in ``SCHED_IDLE`` whose scheduling group is at niceness 19 gets
almost no CPU while the workers keep the machine busy, whatever its pacing says: under a
sustained load past what the machine stores meanwhile, the journal would fill and callbacks get
``503``. So once the backlog, all workers' together, reaches half of one worker's bound
(:data:`BOOST_SHARE`), the writer finishes its store in flight and exits with
:data:`EXIT_BOOST`, and the supervisor starts a new one at the workers' priority (``--boosted``):
the acknowledgements then share the CPU with the stores. Once the boosted writer has brought
the backlog under an eighth of the bound (:data:`CALM_SHARE`), it exits with
:data:`EXIT_CALM`, and a lowered writer takes over again.

The writer says how it is doing in ``JOURNAL/writer.json`` (its pid, its last database error,
when it last stored a batch, whether it is boosted), which ``/readyz`` of every worker reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from . import disks, logs, metrics, partitions, procs
from .blacklist import store as blacklist_store
from .config import Settings
from .correlation import store as correlation
from .correlation import sweep
from .db import migrate
from .journal import JournalReader
from .pacing import OthersBusy, Pacing
from .procs import parent
from .writer import AfterInsert, Connect, Writer

log = structlog.get_logger("receiver.writer")

STATUS_FILE = "writer.json"
STALE_AFTER = 5.0  # seconds without a status update: the writer is not running

# A supervised writer asks to be started again at the workers' priority once the backlog, all
# workers' together, reaches 1/BOOST_SHARE of one worker's bound (where /readyz says "filling"),
# and a boosted one to be lowered again once it is under 1/CALM_SHARE, after at least
# MIN_BOOSTED_SECONDS. The exit codes say which.
BOOST_SHARE = 2
CALM_SHARE = 8
MIN_BOOSTED_SECONDS = 5.0
EXIT_BOOST = 75
EXIT_CALM = 76


def priority_change(backlog: int, max_bytes: int, *, boosted: bool, seconds: float) -> int:
    """:data:`EXIT_BOOST`, :data:`EXIT_CALM`, or 0 to go on as it is: for a writer that has run
    ``seconds`` and last read a backlog of ``backlog`` bytes."""
    if not boosted and backlog >= max_bytes // BOOST_SHARE:
        return EXIT_BOOST
    if boosted and seconds >= MIN_BOOSTED_SECONDS and backlog <= max_bytes // CALM_SHARE:
        return EXIT_CALM
    return 0


def hooks(settings: Settings) -> Sequence[AfterInsert]:
    """What follows from new events, in the same transaction: delivery states and reply links,
    opt-outs, the counters of stored events."""
    return (
        correlation.after_insert_hook(settings.report_window),
        blacklist_store.after_insert_hook(settings),
        metrics.after_insert,
    )


def connector(dsn: str, nice: int = 0, sched_idle: bool = False, backends: list[int] | None = None) -> Connect:
    """The writer's connection; the first one also applies migrations still missing (the
    service may have started while PostgreSQL was away). With ``nice``, the PostgreSQL backend
    that serves it runs at the writer's priority too, when it is on this machine and ours to
    renice (the embedded server): otherwise it would take from the acknowledgements the CPU the
    writer gives up. ``backends`` is set to that backend's pid when it is on this machine (its
    CPU time is the writer's, not the other processes', for the pacing)."""
    migrated: list[bool] = []

    async def connect() -> asyncpg.Connection:
        conn = await asyncpg.connect(dsn, timeout=5, server_settings={"application_name": "receiver-writer"})
        try:
            if not migrated:
                await migrate.apply(conn)
                migrated.append(True)
            if nice or sched_idle or backends is not None:
                pid = await local_backend(conn)
                if pid is not None and (nice or sched_idle):
                    _lower_backend(pid, nice, sched_idle)
                if backends is not None:
                    backends[:] = [pid] if pid is not None else []
        except BaseException:
            conn.terminate()  # the writer retries with a new connection: this one must not stay open
            raise
        return conn

    return connect


# A process that is not root may change an autogroup's niceness once a tenth of a second,
# machine-wide (EAGAIN otherwise): the writer's own change at its start and its backend's
# right after can meet that limit.
AUTOGROUP_TRIES = 5
AUTOGROUP_PAUSE = 0.11


def _lower_backend(pid: int, nice: int, sched_idle: bool, pause: float = AUTOGROUP_PAUSE) -> bool:
    """Lower a local backend's priority to ours. With ``sched_idle`` its scheduling group goes
    to the lowest priority too: PostgreSQL starts each backend in a session of its own, which
    under Linux's autogroups is a group of its own, weighed against the workers as a whole; its
    class and niceness rank it only inside that group (docs/performance.md, "Its own process,
    below the workers")."""
    lower_priority(pid, nice, sched_idle)
    return lower_autogroup(pid, pause) if sched_idle else True


AUTOVACUUM_WORKER = b"postgres: autovacuum worker"


def lower_autovacuum(postmaster: int | None, nice: int, lowered: set[int]) -> None:
    """Lower the autovacuum workers of the PostgreSQL server of this machine whose postmaster
    is ``postmaster`` as the writer's own backend is lowered: in the SCHED_IDLE class, at
    niceness ``nice``, their autogroups at 19. Each is a session of its own, so under
    autogroups it weighs as much as all the workers together, and a pass over the day's
    partitions after a burst (up to 0.9 of a CPU for seconds) took the CPU the
    acknowledgements needed: p99 at 7,000/s kept alive 47.7-597.1 ms beside an unthrottled
    vacuum at normal priority, 16.9-134.6 ms lowered (docs/performance.md, "Its own process,
    below the workers"). A lowered pass still runs on any CPU time the workers leave.
    ``lowered`` holds the pids done (those gone are forgotten); a worker whose group the kernel
    did not let us change yet is tried again at the next call."""
    if postmaster is None:
        return
    try:
        children = {int(pid) for pid in Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()}
    except (OSError, ValueError):
        return
    lowered &= children
    for pid in children - lowered:
        try:
            if not Path(f"/proc/{pid}/cmdline").read_bytes().startswith(AUTOVACUUM_WORKER):
                continue
        except OSError:
            continue
        if _lower_backend(pid, nice, True, pause=0):  # a group the kernel deferred: at the next call
            lowered.add(pid)


def lower_autogroup(pid: int, pause: float = AUTOGROUP_PAUSE) -> bool:
    """Put the autogroup of ``pid`` (0: this process) at niceness 19 when it leads a session of
    its own (a group of nobody else's: not a terminal's), trying again ``pause`` s later while
    the kernel says so. False when it did not; silently nothing (True) where the kernel has no
    autogroups or the process is not ours."""
    for _ in range(AUTOGROUP_TRIES):
        try:
            if os.getsid(pid) == (pid or os.getpid()):
                _write_autogroup(pid, 19)
            return True
        except OSError as error:
            if error.errno != errno.EAGAIN:
                return True
        time.sleep(pause)  # at a connection's start, in the writer process: no acknowledgement waits
    return False


def _write_autogroup(pid: int, nice: int) -> None:
    Path(f"/proc/{pid or 'self'}/autogroup").write_text(str(nice))


def lower_priority(pid: int, nice: int, sched_idle: bool) -> None:
    """Run a process (0: this one) at niceness ``nice`` or lower and, with ``sched_idle``, in
    Linux's SCHED_IDLE class: only on CPU time no other process wants, giving it up at once to
    a waking worker. Silently nothing where a change is not ours to make (another user's
    process) or the system has no such class."""
    with contextlib.suppress(OSError):
        if os.getpriority(os.PRIO_PROCESS, pid) < nice:
            os.setpriority(os.PRIO_PROCESS, pid, nice)
    if sched_idle and hasattr(os, "SCHED_IDLE"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))


def warn_if_shared_disk(journal: Path, backend: int) -> None:
    """Say in the log when the journal is on the disk of the PostgreSQL server of the local
    ``backend`` (:mod:`receiver.disks`): its syncs then wait for the server's writes."""
    try:
        shared = disks.shared_disk(journal, backend)
    except Exception:  # noqa: BLE001 - a tree of /sys or /proc the kernel never makes: a warning is not worth the writer
        return
    if shared is not None:
        log.warning(
            "writer.journal_shares_disk",
            journal=str(journal.absolute()),
            data_directory=shared.data_directory,
            disks=list(shared.disks),
            shared=list(shared.parts),
            **disks.write_back(),
            advice="acknowledgements wait for PostgreSQL's writes on this disk: give the journal a disk of"
            " its own (RECEIVER_JOURNAL_DIR), or have the kernel write back early"
            " (vm.dirty_background_bytes); docs/operations.md, PostgreSQL on the same machine",
        )


async def _check_disk(pool: asyncpg.Pool, journal: Path) -> bool:
    """:func:`warn_if_shared_disk` with a backend of ``pool``; False when PostgreSQL cannot be
    reached now. A server elsewhere is checked as well: nothing to say."""
    try:
        async with asyncio.timeout(10):
            backend = await local_backend(pool)
    except Exception:  # noqa: BLE001 - away, or refusing: the writer's own connection tells later
        return False
    if backend is not None:
        warn_if_shared_disk(journal, backend)
    return True


# How far apart the server's start time of a backend and this machine's of the process with its
# pid may be (the kernel counts a process's start in ticks of 10 ms).
STARTED_WITHIN = 1.0


async def local_backend(conn: asyncpg.Connection | asyncpg.Pool) -> int | None:
    """The pid of the backend serving ``conn`` (one of a pool's) when that backend is a process of this machine:
    a PostgreSQL process by its pid that started when the server says the backend did. A
    server elsewhere (another machine, a container's own pids) has backends whose pids this
    machine's processes may have too, a local PostgreSQL's among them: not ours to lower or
    to read the folders of."""
    row = await conn.fetchrow(
        "SELECT pid, extract(epoch FROM backend_start)::float8 AS started"
        " FROM pg_stat_get_activity(pg_backend_pid())"
    )
    if row is None or row["started"] is None or not _is_postgres(row["pid"]):
        return None
    started = procs.started_at(row["pid"])
    if started is not None and abs(started - row["started"]) <= STARTED_WITHIN:
        return int(row["pid"])
    # A local PostgreSQL's process by that pid, started at another time: a server elsewhere, or
    # clocks that disagree (the backend then goes unlowered: said, so that it can be found).
    log.info("writer.backend_not_local", pid=row["pid"], server_says=row["started"], process_started=started)
    return None


def _is_postgres(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "postgres"
    except (OSError, ValueError):  # gone, or a name that is not text: not a PostgreSQL backend
        return False


def build(
    settings: Settings,
    *,
    idle_poll: float = 1.0,
    process: bool = False,
    boosted: bool = False,
    backends: list[int] | None = None,
    status: _StatusFile | None = None,
) -> Writer:
    """The writer: a process of its own (``process``: it reports in ``writer.json`` and its
    backend runs at its priority), or a task of a worker. ``boosted``: a process at the
    workers' priority, which stores at full speed. ``backends``: set to the pid of its backend
    when that runs on this machine and the writer is lowered. ``status``: the process's
    ``writer.json`` (by default one of its own)."""
    assert settings.database_url
    if process and status is None:
        status = _StatusFile(settings.journal_path / STATUS_FILE, boosted)
    backends = [] if backends is None else backends
    lowered = process and not boosted
    return Writer(
        JournalReader(settings.journal_path),
        connector(
            settings.database_url,
            settings.writer_nice if lowered else 0,
            lowered and settings.writer_sched_idle,
            backends if lowered else None,
        ),
        batch_size=settings.writer_batch_size,
        interval=settings.writer_interval_seconds,
        quarantine_max_rows=settings.quarantine_max_rows,
        after_insert=hooks(settings),
        idle_poll=idle_poll,
        on_status=status.update if status is not None else None,
        # Resting helps only a process of its own, in SCHED_IDLE: its waits, and the CPU time of the
        # machine's other processes (not its own, nor its backend's), say the workers want the CPUs.
        pacing=(
            Pacing(settings.writer_busy_share, settings.journal_max_bytes // PACED_SHARE, others=OthersBusy(lambda: backends))
            if lowered
            else None
        ),
    )


# The writer rests (receiver/pacing.py) only while the journal's backlog, all workers' together,
# is under this fraction (1/4) of one worker's bound: well before /readyz says "filling" (half of
# it) and far from the 503s.
PACED_SHARE = 4


class _StatusFile:
    """``writer.json``. It also tells the next writer of the same run of a service (``run``: the
    supervisor's token) whether the journal's disk was checked (``disk_checked``), so that a
    service says it once, not again after each burst that raised its writer."""

    def __init__(self, path: Path, boosted: bool = False, run: str | None = None, disk_checked: bool = False) -> None:
        self.path = path
        self.boosted = boosted
        self.run = run
        self.disk_checked = disk_checked
        self._written: tuple[Any, ...] = ()
        self._at = 0.0

    def update(self, writer: Writer) -> None:
        """Rewrite the status when it changed, and at least every second (its age says the
        writer is alive)."""
        now = time.time()
        state = (writer.last_error, writer.locked, self.disk_checked)
        if state == self._written and now - self._at < 1.0:
            return
        self._written, self._at = state, now
        data = {"pid": os.getpid(), "error": writer.last_error, "locked": writer.locked,
                "stored_at": writer.last_store_at, "updated_at": now, "boosted": self.boosted,
                "run": self.run, "disk_checked": self.disk_checked}  # fmt: skip
        staging = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        with contextlib.suppress(OSError):
            staging.write_text(json.dumps(data))
            staging.replace(self.path)


def _last_status(journal_root: Path) -> dict[str, Any]:
    """What the last writer wrote in ``writer.json`` (empty: nothing readable)."""
    try:
        data = json.loads((journal_root / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def disk_checked(journal_root: Path, run: str) -> bool:
    """Whether an earlier writer of ``run`` (a service's run: its supervisor's token) checked
    the journal's disk, by its last ``writer.json``."""
    data = _last_status(journal_root)
    return data.get("run") == run and data.get("disk_checked") is True


def read_status(journal_root: Path) -> dict[str, Any]:
    """The writer process's last word: ``running`` (it spoke within :data:`STALE_AFTER` s),
    ``error`` (its last database error, None when its last batch went through) and ``boosted``
    (it runs at the workers' priority: the backlog passed half a worker's bound)."""
    data = _last_status(journal_root)
    try:
        running = time.time() - float(data["updated_at"]) < STALE_AFTER
    except (KeyError, TypeError, ValueError):
        return {"running": False, "error": None, "boosted": False}
    return {"running": running, "error": data.get("error"), "boosted": bool(data.get("boosted")) and running}


# --- the process ---------------------------------------------------------------------------------


def main(*, supervised: bool = False, boosted: bool = False, run: str | None = None) -> int:
    """``python -m receiver writer``: drain the journal until told to stop (its standard input
    closes, as when the supervisor stops it or dies, or SIGTERM), then store what is left (for
    up to ``RECEIVER_SHUTDOWN_DRAIN_SECONDS``) and exit 0. ``supervised`` (by ``receiver
    serve``): exit :data:`EXIT_BOOST` or :data:`EXIT_CALM` instead when its priority should
    change (see the module's text); ``boosted``: run at the priority it was started with;
    ``run``: the service's run (the supervisor's token, the same for every writer it starts)."""
    settings = Settings()
    logs.configure(settings.log_level, settings.log_format)
    lowers = settings.writer_nice > 0 or settings.writer_sched_idle
    if not boosted:
        lower_priority(0, settings.writer_nice, settings.writer_sched_idle)  # before any thread: they inherit it
        if settings.writer_sched_idle:
            lower_autogroup(0)  # started by the supervisor in a session of its own: its scheduling group
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is for the supervisor, which says when
    return asyncio.run(_run(settings, changes=supervised and lowers, boosted=boosted, run=run))


async def _run(settings: Settings, *, changes: bool = False, boosted: bool = False, run: str | None = None) -> int:
    backends: list[int] = []
    checked = run is not None and disk_checked(settings.journal_path, run)  # by an earlier writer of this run
    status = _StatusFile(settings.journal_path / STATUS_FILE, boosted, run, checked)
    writer = build(settings, idle_poll=0.05, process=True, boosted=boosted, backends=backends, status=status)
    lowers_autovacuum = not boosted and settings.writer_sched_idle
    autovacuum: set[int] = set()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    _watch_stdin(loop, stop)
    task = asyncio.create_task(writer.run())
    assert settings.database_url
    pool = await asyncpg.create_pool(settings.database_url, min_size=0, max_size=1, timeout=5)
    sweeper = sweep.start(pool, settings.report_window, settings.sweep_interval_seconds)
    partitioner = partitions.start(pool)
    # A lowered writer says whether the journal shares a disk with its local PostgreSQL: at its
    # start, or once it has a backend of its own; once a service (a writer after a burst that
    # raised the one before it finds in writer.json that an earlier one did).
    checks = not boosted and not status.disk_checked
    disk_check = asyncio.create_task(_check_disk(pool, settings.journal_path)) if checks else None
    log.info("writer.started", pid=os.getpid(), journal=str(settings.journal_path), boosted=boosted)
    started, change = time.monotonic(), 0
    # What start-up made (modules, classes, the settings, the connections) lives as long as the
    # process: out of the collector's way, so that each full collection walks only what the
    # batches made since (30 ms a collection otherwise, several a minute while it stores).
    gc.collect()
    gc.freeze()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.25)  # also how soon a new autovacuum worker is lowered
        if task.done():
            task.result()  # raises what killed the loop: the supervisor starts a new writer
        if disk_check is not None and disk_check.done():
            reached = disk_check.result()
            if not reached and backends:  # PostgreSQL was away at start (if that backend has gone since, nothing is said)
                warn_if_shared_disk(settings.journal_path, backends[0])
            if reached or backends:
                disk_check, status.disk_checked = None, True
        if lowers_autovacuum and backends:
            lower_autovacuum(parent(backends[0]), settings.writer_nice, autovacuum)
        if changes and not stop.is_set():
            backlog = writer.reader.backlog_bytes
            change = priority_change(
                backlog, settings.journal_max_bytes, boosted=boosted, seconds=time.monotonic() - started
            )
            if change:
                log.info("writer.boost" if change == EXIT_BOOST else "writer.calm", backlog_bytes=backlog)
                break
    if disk_check is not None:
        disk_check.cancel()
    await sweep.stop(sweeper)
    await partitions.stop(partitioner)
    drained = await (writer.step_down() if change else writer.stop(settings.shutdown_drain_seconds))
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    writer.reader.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(pool.close(), timeout=5)
    log.info("writer.stopped", drained=drained, stored=writer.stored_events)
    return change


def _watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """The supervisor holds our standard input open while we are to run: its end (the
    supervisor closed it, or died, even by ``kill -9``) says stop. Unlike a signal, it cannot
    arrive before we are ready to hear it: it waits in the pipe."""

    def readable() -> None:
        try:
            data = os.read(0, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(0)
            stop.set()

    with contextlib.suppress(OSError, ValueError, NotImplementedError):
        if stat.S_ISFIFO(os.fstat(0).st_mode):  # a pipe: ours. A terminal or /dev/null (run by hand, systemd): not
            loop.add_reader(0, readable)


class Supervisor:
    """Runs the writer process while the service runs; starts it again when it dies, or at
    another priority when it asks to."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.boosted = False  # the writer runs at the workers' priority (it asked to)
        # This run of the service, for its writers (a pid is no name for it: the same 1 at each
        # start of a container, and reused after a reboot).
        self.run = uuid.uuid4().hex
        self._stopping = threading.Event()
        # Held while a writer is started and while stop() takes the one to stop: no writer is
        # started after stop() has looked.
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="writer-supervisor", daemon=True)

    def start(self) -> None:
        with self._lock:
            self._spawn()
        self._thread.start()

    def _spawn(self) -> None:
        # Its standard input is a pipe we hold: closing it is how we tell it to stop. In a session
        # of its own, under autogroups its scheduling group is its own, lowered as its priority is.
        argv = [sys.executable, "-m", "receiver", "writer", "--supervised", "--run", self.run,
                *(["--boosted"] if self.boosted else [])]  # fmt: skip
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, start_new_session=True)

    def _respawn(self) -> bool:
        with self._lock:
            if self._stopping.is_set():
                return False
            self._spawn()
            return True

    def _watch(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            process = self.process
            assert process is not None
            code = process.wait()
            if self._stopping.is_set():
                return
            if code in (EXIT_BOOST, EXIT_CALM):  # it asked for another priority: at once
                self.boosted = code == EXIT_BOOST
                if not self._respawn():
                    return
                continue
            self.boosted = False
            log.error("writer.died", code=code, restart_in=backoff)
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, 5.0)
            self.restarts += 1
            if not self._respawn():
                return

    def stop(self) -> int | None:
        """Tell the writer to stop and wait while it stores what is left."""
        with self._lock:
            self._stopping.set()
            process = self.process
        if process is None:
            return None
        code = self._stop(process)
        if code in (EXIT_BOOST, EXIT_CALM):  # it stepped down as we stopped, without a drain: one that drains
            self.boosted = code == EXIT_BOOST
            self._spawn()
            assert self.process is not None
            code = self._stop(self.process)
        return code

    def _stop(self, process: subprocess.Popen[bytes]) -> int:
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        try:
            return process.wait(timeout=self.settings.shutdown_drain_seconds + 10)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()
