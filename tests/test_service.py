"""``receiver serve`` as users run it: several workers, kill -9, PostgreSQL going away, SIGTERM."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import (
    Load,
    OwnPostgres,
    Service,
    autogroup_nice,
    create_app_token,
    descendants,
    fetch,
    proc_stat,
    run,
    service_env,
    wait_for,
    world_readable_tmpdir,
)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def stored_ids(url: str) -> set[str]:
    return {r["sms_msg_id"] for r in run(fetch(url, "SELECT sms_msg_id FROM status_reports"))}


def duplicate_rows(url: str) -> int:
    rows = run(fetch(url, "SELECT count(*) - count(DISTINCT sms_msg_id) AS d FROM status_reports"))
    return int(rows[0]["d"])


def journal_folders(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "journal").glob("w-*"))


def test_kill_9_under_load_loses_nothing_acknowledged(own_pg: OwnPostgres, data_dir: Path) -> None:
    env = service_env(data_dir, own_pg.url)
    token = create_app_token(env)["token"]
    service = Service(env, workers=2).start()
    try:
        with Load(service, token) as load:
            assert wait_for(lambda: load.acked_count() >= 300, timeout=30)
            # Part of the load is acknowledged from the journal alone: PostgreSQL goes away.
            own_pg.stop()
            before = load.acked_count()
            assert wait_for(lambda: load.acked_count() >= before + 200, timeout=30)
            service.kill9()
        acked = set(load.acked)
        assert sum(1 for f in journal_folders(data_dir) for s in f.glob("*.seg") if s.stat().st_size) >= 1
        dead = set(journal_folders(data_dir))
        own_pg.start()
        service.start(workers=1)  # a different number of workers than before the crash
        assert wait_for(lambda: acked <= stored_ids(own_pg.url), timeout=60), "acknowledged events are missing"
        assert duplicate_rows(own_pg.url) == 0
        assert wait_for(lambda: not dead & set(journal_folders(data_dir)), timeout=30), "dead workers' journals remain"
    finally:
        service.stop()


def holder_of(path: Path) -> int:
    """The process that has ``path`` open (a worker and its journal folder's lock)."""
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            if fd.readlink() == path:
                return int(fd.parts[2])
        except OSError:
            continue
    raise AssertionError(f"nobody holds {path}")


def writer_pid(data_dir: Path) -> int | None:
    try:
        return int(json.loads((data_dir / "journal" / "writer.json").read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def test_the_writer_is_a_process_of_its_own_at_a_lower_priority(db_url: str, data_dir: Path) -> None:
    env = service_env(data_dir, db_url)
    token = create_app_token(env)["token"]
    service = Service(env, workers=2).start()
    try:
        assert service.post_form(f"/callbacks/{token}/status-report", "smsMsgId=p-1&status=DELIVRD")[0] == 200
        assert wait_for(lambda: stored_ids(db_url) == {"p-1"}, timeout=30)
        assert wait_for(lambda: writer_pid(data_dir) is not None, timeout=30)
        pid = writer_pid(data_dir)
        assert pid is not None and pid != service.proc.pid  # type: ignore[union-attr]
        assert os.getpriority(os.PRIO_PROCESS, pid) == 19  # the lowest priority there is
        assert os.sched_getscheduler(pid) == os.SCHED_IDLE  # and only on CPU time the workers leave
        # Under autogroups a class and a niceness rank a process only within its session's
        # scheduling group: the writer has one of its own, at the lowest priority; the main
        # process's stays as it was.
        assert os.getsid(pid) == pid
        assert autogroup_nice(pid) == "19"
        assert autogroup_nice(service.proc.pid) == "0"  # type: ignore[union-attr]
        ready = json.loads(service.get("/readyz")[1])
        assert ready["writer"] == {"running": True, "error": None, "boosted": False}
        # Its PostgreSQL backend (local, ours to renice) runs at its priority too.
        sql = "SELECT pid FROM pg_stat_activity WHERE application_name = 'receiver-writer'"
        assert wait_for(lambda: run(fetch(db_url, sql)), timeout=30)
        [backend] = [r["pid"] for r in run(fetch(db_url, sql))]
        assert os.getpriority(os.PRIO_PROCESS, backend) == os.getpriority(os.PRIO_PROCESS, pid)
        assert os.sched_getscheduler(backend) == os.SCHED_IDLE
        # PostgreSQL runs each backend in a session of its own: under autogroups a scheduling
        # group of its own, which weighs as much as all the workers unless it is lowered too.
        assert autogroup_nice(backend) == "19"
    finally:
        service.stop()


def writer_status(data_dir: Path) -> dict[str, object]:
    from receiver import writer_process

    return writer_process.read_status(data_dir / "journal")


def test_past_half_its_bound_the_writer_is_started_again_at_the_workers_priority(
    own_pg: OwnPostgres, data_dir: Path
) -> None:
    """A writer in SCHED_IDLE gets hardly any CPU while the workers keep the machine busy, and
    cannot raise its priority again: past half a worker's journal bound the supervisor starts a
    writer at the workers' priority, and once it has caught up a lowered one again."""
    # These reports take about 55 bytes each in the journal: the writer is boosted from 12 KiB
    # (about 225 of them), lowered again under 3 KiB, and 503s would start at 24 KiB (about 450).
    env = service_env(data_dir, own_pg.url, RECEIVER_JOURNAL_MAX_BYTES="24576")
    token = create_app_token(env)["token"]
    service = Service(env, workers=1).start()
    try:
        assert wait_for(lambda: writer_pid(data_dir) is not None, timeout=30)
        lowered = writer_pid(data_dir)
        assert lowered is not None and os.sched_getscheduler(lowered) == os.SCHED_IDLE
        shares = shares_disk(data_dir / "journal", own_pg.url)
        assert wait_for(lambda: (SHARED_DISK in service.log.read_text()) == shares, timeout=15)
        own_pg.stop()  # nothing is stored meanwhile: the backlog grows
        codes = {
            f"boost-{i}": service.post_form(f"/callbacks/{token}/status-report", f"smsMsgId=boost-{i}&status=DELIVRD")[0]
            for i in range(300)
        }
        assert set(codes.values()) == {200}, codes
        assert wait_for(lambda: writer_status(data_dir)["boosted"], timeout=30), "no boosted writer"
        boosted = writer_pid(data_dir)
        assert boosted is not None and boosted != lowered and not running(lowered)
        main = service.proc.pid  # type: ignore[union-attr]
        assert os.sched_getscheduler(boosted) == os.sched_getscheduler(main) == os.SCHED_OTHER  # the workers' priority
        assert os.getpriority(os.PRIO_PROCESS, boosted) == os.getpriority(os.PRIO_PROCESS, main)
        assert autogroup_nice(boosted) == autogroup_nice(main)
        assert json.loads(service.get("/readyz")[1])["writer"]["boosted"] is True
        own_pg.start()
        assert wait_for(lambda: set(codes) <= stored_ids(own_pg.url), timeout=60), "acknowledged events are missing"
        # Caught up: a lowered writer again.
        assert wait_for(lambda: writer_pid(data_dir) not in (None, boosted), timeout=30)
        calm = writer_pid(data_dir)
        assert calm is not None and os.sched_getscheduler(calm) == os.SCHED_IDLE
        assert wait_for(lambda: writer_status(data_dir)["running"] and not writer_status(data_dir)["boosted"])
        assert duplicate_rows(own_pg.url) == 0
        # The service said once whether the journal shares PostgreSQL's disk: the lowered writer
        # after the burst, which has a backend of its own by the time it stores, says nothing.
        assert service.post_form(f"/callbacks/{token}/status-report", "smsMsgId=calm-1&status=DELIVRD")[0] == 200
        assert wait_for(lambda: "calm-1" in stored_ids(own_pg.url), timeout=30)
        time.sleep(0.5)  # its loop looks at its check every quarter second
        assert service.log.read_text().count(SHARED_DISK) == (1 if shares else 0)
        status = json.loads((data_dir / "journal" / "writer.json").read_text())
        assert status["pid"] == calm and status["disk_checked"] is True  # what the next one will read
    finally:
        service.stop()


def test_a_writer_that_steps_down_as_the_service_stops_is_followed_by_one_that_drains(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A writer that asked for another priority just as the service stopped has stored what was
    in flight, not what was left: the supervisor starts one more writer, which drains."""
    from receiver import writer_process
    from receiver.config import Settings

    started: list[bool] = []  # each writer started: boosted or not

    def spawn(self: writer_process.Supervisor) -> None:
        # A stand-in writer: the first exits as a step-down would once told to stop, the next as a drain
        code = writer_process.EXIT_BOOST if not started else 0
        started.append(self.boosted)
        self.process = subprocess.Popen(
            [sys.executable, "-c", f"import sys; sys.stdin.read(); sys.exit({code})"], stdin=subprocess.PIPE
        )

    monkeypatch.setattr(writer_process.Supervisor, "_spawn", spawn)
    supervisor = writer_process.Supervisor(Settings(database_url="postgresql://unused"))
    supervisor.start()
    assert supervisor.stop() == 0
    assert started == [False, True]  # the second at the priority the first asked for


def test_a_writer_of_another_service_run_does_not_spare_the_disk_check(tmp_path: Path) -> None:
    """The status a writer leaves tells the next writer of the same run of the service that the
    journal's disk was checked; a service started again (another run) checks again."""
    from types import SimpleNamespace

    from receiver import writer_process
    from receiver.config import Settings

    status = writer_process._StatusFile(tmp_path / writer_process.STATUS_FILE, run="a1")
    writer = SimpleNamespace(last_error=None, locked=False, last_store_at=None)
    status.update(writer)  # type: ignore[arg-type]
    assert not writer_process.disk_checked(tmp_path, "a1")
    status.disk_checked = True
    status.update(writer)  # type: ignore[arg-type]  # a change is written at once
    assert writer_process.disk_checked(tmp_path, "a1")
    assert not writer_process.disk_checked(tmp_path, "b2")
    (tmp_path / writer_process.STATUS_FILE).write_text("[]")
    assert not writer_process.disk_checked(tmp_path, "a1")
    # Each service (each supervisor) is a run of its own, whatever its pid.
    runs = {writer_process.Supervisor(Settings(database_url="postgresql://unused")).run for _ in range(2)}
    assert len(runs) == 2


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's parent may be slow to reap it)."""
    fields = proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def workers_of(service: Service) -> list[int]:
    """The HTTP workers: the processes uvicorn's supervisor spawned."""

    def spawned(pid: int) -> bool:
        try:
            return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False  # gone meanwhile

    return [pid for pid in descendants(service.proc.pid) if spawned(pid)]  # type: ignore[union-attr]


def test_workers_run_in_scheduling_groups_of_their_own_and_end_with_the_main_process(
    db_url: str, data_dir: Path
) -> None:
    env = service_env(data_dir, db_url)
    token = create_app_token(env)["token"]
    service = Service(env, workers=2).start()
    try:
        ids = [f"g-{i}" for i in range(20)]
        for sms_msg_id in ids:
            assert service.post_form(f"/callbacks/{token}/status-report", f"smsMsgId={sms_msg_id}&status=DELIVRD")[0] == 200
        assert wait_for(lambda: len(workers_of(service)) == 2, timeout=30)
        workers = workers_of(service)
        main = service.proc.pid  # type: ignore[union-attr]
        # Each worker leads a session of its own, once started: under autogroups, a scheduling
        # group of its own (not one shared by both, weighed like a single PostgreSQL backend).
        assert wait_for(lambda: [os.getsid(pid) for pid in workers] == workers, timeout=30)
        groups = {Path(f"/proc/{pid}/autogroup").read_text().split()[0] for pid in [main, *workers]}
        assert len(groups) == 3
        # No process group reaches them now: when the main process dies, they stop too, and
        # leave the port to the next start.
        os.kill(main, signal.SIGKILL)
        service.proc.wait(timeout=10)  # type: ignore[union-attr]
        assert wait_for(lambda: not any(running(pid) for pid in workers), timeout=30), "workers outlived the main process"
        service.start()
        assert wait_for(lambda: set(ids) <= stored_ids(db_url), timeout=60), "acknowledged events are missing"
    finally:
        service.stop()


def test_kill_9_of_the_writer_under_load_loses_nothing_and_it_comes_back(db_url: str, data_dir: Path) -> None:
    env = service_env(data_dir, db_url)
    token = create_app_token(env)["token"]
    service = Service(env, workers=2).start()
    try:
        assert wait_for(lambda: writer_pid(data_dir) is not None, timeout=30)
        first = writer_pid(data_dir)
        with Load(service, token) as load:
            assert wait_for(lambda: load.acked_count() >= 300, timeout=30)
            os.kill(first, signal.SIGKILL)  # type: ignore[arg-type]
            before = load.acked_count()
            assert wait_for(lambda: load.acked_count() >= before + 300, timeout=30), "acks stopped with the writer"
            assert wait_for(lambda: writer_pid(data_dir) not in (None, first), timeout=30), "no new writer"
        assert set(load.statuses) == {200}, load.statuses
        acked = set(load.acked)
        assert wait_for(lambda: acked <= stored_ids(db_url), timeout=60), "acknowledged events are missing"
        assert duplicate_rows(db_url) == 0
    finally:
        service.stop()


def test_a_killed_workers_journal_is_stored_while_the_service_runs(db_url: str, data_dir: Path) -> None:
    """Nobody has to take the dead worker's place: the writer reads every worker's journal."""
    env = service_env(data_dir, db_url, RECEIVER_WRITER_INTERVAL_SECONDS="0")
    token = create_app_token(env)["token"]
    service = Service(env, workers=2).start()
    try:
        with Load(service, token) as load:
            assert wait_for(lambda: load.acked_count() >= 300, timeout=30)
            folders = journal_folders(data_dir)  # a worker's folder appears with its first record
            assert folders
            victim = holder_of(folders[0] / "lock")
            os.kill(victim, signal.SIGKILL)
            before = load.acked_count()
            assert wait_for(lambda: load.acked_count() >= before + 200, timeout=30)
        acked = set(load.acked)
        assert wait_for(lambda: acked <= stored_ids(db_url), timeout=60), "acknowledged events are missing"
        assert wait_for(lambda: not folders[0].exists(), timeout=30), "the dead worker's folder stays"
    finally:
        service.stop()


def test_postgres_down_under_load_keeps_acknowledging_and_drains_later(own_pg: OwnPostgres, data_dir: Path) -> None:
    env = service_env(data_dir, own_pg.url)
    token = create_app_token(env)["token"]
    service = Service(env, workers=2).start()
    try:
        with Load(service, token) as load:
            assert wait_for(lambda: load.acked_count() >= 200, timeout=30)
            own_pg.stop()
            during = load.acked_count()
            assert wait_for(lambda: load.acked_count() >= during + 300, timeout=30), "no acks while PostgreSQL is down"
            status, body = service.get("/readyz")
            assert status == 503 and json.loads(body)["database"]["reachable"] is False
            own_pg.start()
            after = load.acked_count()
            assert wait_for(lambda: load.acked_count() >= after + 200, timeout=30)
        assert set(load.statuses) == {200}, load.statuses
        acked = set(load.acked)
        assert wait_for(lambda: acked <= stored_ids(own_pg.url), timeout=60), "the journal did not drain"
        assert duplicate_rows(own_pg.url) == 0
        assert wait_for(lambda: service.get("/readyz")[0] == 200, timeout=30)
        assert service.terminate() == 0
    finally:
        service.stop()


def test_unwritable_journal_answers_503_never_200(db_url: str, data_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("the journal cannot be created below a file")
    env = service_env(data_dir, db_url, RECEIVER_JOURNAL_DIR=str(blocker / "journal"))
    token = create_app_token(env)["token"]
    service = Service(env, workers=1).start()
    try:
        status, body = service.post_form(f"/callbacks/{token}/status-report", "smsMsgId=x&status=DELIVRD")
        assert status == 503
        assert json.loads(body)["error"] == "not_durable"
        status, body = service.get("/readyz")
        assert status == 503
        assert json.loads(body)["journal"]["writable"] is False
        time.sleep(0.5)
        assert stored_ids(db_url) == set()
    finally:
        service.stop()


def test_full_journal_answers_503(own_pg: OwnPostgres, data_dir: Path) -> None:
    env = service_env(data_dir, own_pg.url, RECEIVER_JOURNAL_MAX_BYTES="1024")  # about 20 reports
    token = create_app_token(env)["token"]
    service = Service(env, workers=1).start()
    try:
        own_pg.stop()
        codes = [
            service.post_form(f"/callbacks/{token}/status-report", f"smsMsgId=full-{i}&status=DELIVRD")[0]
            for i in range(40)
        ]
        assert codes[0] == 200 and codes[-1] == 503 and set(codes) == {200, 503}
        ready = json.loads(service.get("/readyz")[1])
        assert ready["journal"]["filling"] is True
        own_pg.start()
        accepted = {f"full-{i}" for i, code in enumerate(codes) if code == 200}
        assert wait_for(lambda: accepted == stored_ids(own_pg.url), timeout=60)
        assert wait_for(
            lambda: service.post_form(f"/callbacks/{token}/status-report", "smsMsgId=again&status=DELIVRD")[0] == 200
        )
    finally:
        service.stop()


def test_sigterm_finishes_in_flight_work_flushes_and_exits_0(db_url: str, data_dir: Path) -> None:
    env = service_env(data_dir, db_url)
    token = create_app_token(env)["token"]
    service = Service(env, workers=2).start()
    try:
        with Load(service, token, threads=4) as load:
            assert wait_for(lambda: load.acked_count() >= 200, timeout=30)
            assert service.terminate() == 0
        acked = set(load.acked)
        assert acked <= stored_ids(db_url), "SIGTERM left acknowledged events in the journal"
        assert journal_folders(data_dir) == []
    finally:
        service.stop()


def test_serve_prints_callback_urls_and_uses_the_embedded_default(tmp_path: Path) -> None:
    data_dir = world_readable_tmpdir("receiver-embedded-") / "data"
    env = service_env(data_dir, None)
    service = Service(env, workers=1)
    try:
        service.start(timeout=120)
        printed = service.log.read_text()
        urls = [line.split()[-1] for line in printed.splitlines() if "/callbacks/" in line]
        assert [u.rsplit("/", 1)[1] for u in urls] == ["status-report", "status-reports", "uplink"]
        path = "/" + urls[2].split("/", 3)[3]
        body = "from=%2B8615123456789&to=10691002019&body=T&smsMsgId=embedded-1"
        assert service.post_form(path, body)[0] == 200
        assert (data_dir / "pgdata" / "PG_VERSION").exists()
        assert service.terminate() == 0
        # The embedded server stopped with the service; `receiver db url` starts it again.
        from support import cli

        url = cli("db", "url", env=env).stdout.strip()
        assert url.startswith("postgresql://")
        rows = run(fetch(url, 'SELECT "from", body FROM uplinks'))
        assert [tuple(r.values()) for r in rows] == [("+8615123456789", "T")]
        cli("db", "stop", env=env)
    finally:
        service.stop()
        shutil.rmtree(data_dir.parent, ignore_errors=True)


def test_starts_and_acknowledges_while_postgres_is_down(own_pg: OwnPostgres, data_dir: Path) -> None:
    env = service_env(data_dir, own_pg.url)
    token = create_app_token(env)["token"]
    service = Service(env, workers=2).start()
    service.terminate()  # it ran once: it knows the application
    own_pg.stop()
    try:
        earlier = len(service.log.read_text())
        service.start()
        assert "PostgreSQL is unreachable" in service.log.read_text()
        codes = [
            service.post_form(f"/callbacks/{token}/status-report", f"smsMsgId=down-{i}&status=DELIVRD")[0]
            for i in range(20)
        ]
        assert set(codes) == {200}
        own_pg.start()
        assert wait_for(lambda: stored_ids(own_pg.url) == {f"down-{i}" for i in range(20)}, timeout=60)
        assert service.terminate() == 0
        # A writer started while the server was away says whether the journal shares the
        # server's disk once its own backend comes.
        shares = shares_disk(data_dir / "journal", own_pg.url)
        assert (SHARED_DISK in service.log.read_text()[earlier:]) == shares
    finally:
        service.stop()


def test_the_writer_run_by_hand_drains_until_sigterm(db_url: str, data_dir: Path) -> None:
    """`receiver writer` under another supervisor (systemd gives it /dev/null for input): it
    stores what the journal holds and stops on SIGTERM, having stored everything."""
    import asyncio
    import subprocess
    import sys

    from receiver.journal import Journal, envelope
    from receiver.records import accepted

    env = service_env(data_dir, db_url)
    create_app_token(env)
    [app_id] = [r["id"] for r in run(fetch(db_url, "SELECT id FROM applications"))]

    async def journal_two() -> None:
        journal = Journal(data_dir / "journal", max_bytes=1 << 20, segment_bytes=1 << 20)
        for i in (1, 2):
            body = f"smsMsgId=hand-{i}&status=DELIVRD".encode()
            await journal.append(accepted(envelope.Kind.STATUS_REPORT, app_id, time.time(), body))
        await journal.close()

    asyncio.run(journal_two())
    writer = subprocess.Popen([sys.executable, "-m", "receiver", "writer"], env=env, stdin=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: stored_ids(db_url) == {"hand-1", "hand-2"}, timeout=30)
        assert writer.poll() is None, "it runs until told to stop"
        writer.send_signal(signal.SIGTERM)
        assert writer.wait(timeout=30) == 0
        assert journal_folders(data_dir) == []
    finally:
        if writer.poll() is None:
            writer.kill()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_request_sent_as_listening_is_printed_is_answered(db_url: str, data_dir: Path, workers: int) -> None:
    """A script that starts the service and sends once it says it is listening is not refused:
    the port is listening before the line is printed (the request waits for a worker)."""
    data_dir.mkdir(parents=True)
    env = service_env(data_dir, db_url)
    service = Service(env, workers=workers)
    log = service.log
    service.output = open(log, "a")  # noqa: SIM115
    service.proc = subprocess.Popen(
        [sys.executable, "-m", "receiver", "serve", "--port", str(service.port), "--workers", str(workers)],
        env=env, stdout=service.output, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert wait_for(lambda: "Listening on http://" in log.read_text(), timeout=60), log.read_text()
        conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
        conn.request("GET", "/healthz")  # at once: refused if the port were not listening yet
        assert conn.getresponse().status == 200
        conn.close()
        # At its start, before anything is stored, the writer says whether the journal is on the
        # disk of the (local) PostgreSQL's files.
        shares = shares_disk(data_dir / "journal", db_url)
        assert wait_for(lambda: (SHARED_DISK in log.read_text()) == shares, timeout=15)
    finally:
        service.stop()


SHARED_DISK = "writer.journal_shares_disk"


def shares_disk(journal: Path, url: str) -> bool:
    """Whether the writer should find ``journal`` on a disk of the server at ``url``: asked of
    its checkpointer, which lives as long as the server (none of this machine's: no)."""
    from receiver import disks

    [row] = run(fetch(url, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'"))
    comm = Path(f"/proc/{row['pid']}/comm")
    local = comm.exists() and comm.read_text().strip() == "postgres"
    return local and disks.shared_disk(journal, row["pid"]) is not None
