"""Metrics and logs: /metrics by route template, counted at commit, added up over workers; one
masked log line per callback with a request id."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
import structlog
from starlette.testclient import TestClient
from structlog.testing import capture_logs
from support import Harness, Service, create_app_token, run, service_env, value, wait_for

from receiver import applications, metrics, metrics_dir
from receiver.config import Settings
from receiver.http.app import create_app

STATUS_REPORT = "/callbacks/{token}/status-report"
UPLINK = "/callbacks/{token}/uplink"


def scrape(harness: Harness) -> str:
    response = harness.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def test_metrics_count_requests_by_route_template_and_events_at_commit(harness: Harness) -> None:
    before = scrape(harness)
    for i in range(3):
        body = f"smsMsgId=m-{i}&status=DELIVRD&total=1&sequence=1&updateTime=2026-01-01T00%3A00%3A00Z"
        assert harness.post("status-report", body).status_code == 200
    assert harness.post("status-report", "smsMsgId=m-0&status=DELIVRD&total=1&sequence=1&updateTime=2026-01-01T00%3A00%3A00Z").status_code == 200  # fmt: skip
    assert harness.post("status-report", "smsMsgId=m-9&status=mk:0036").status_code == 200
    assert harness.post("status-report", "smsMsgId=m-8&status=%3Cx+y%3E").status_code == 200
    assert harness.post("status-report", "status=DELIVRD").status_code == 400
    assert (
        harness.post("status-report", "smsMsgId=x&status=DELIVRD", token="no-such-token").status_code == 404
    )
    assert (
        harness.post("uplink", "from=%2B8615123456789&to=csms100000001&body=T&smsMsgId=u-1").status_code
        == 200
    )
    assert harness.client.get("/no/such/path").status_code == 404
    harness.settle()
    after = scrape(harness)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("receiver_http_requests_total", endpoint=STATUS_REPORT, code="200") == 6
    assert delta("receiver_http_requests_total", endpoint=STATUS_REPORT, code="400") == 1
    assert delta("receiver_http_requests_total", endpoint=STATUS_REPORT, code="404") == 1
    assert delta("receiver_http_requests_total", endpoint=UPLINK, code="200") == 1
    assert delta("receiver_http_requests_total", endpoint="unmatched", code="404") == 1
    assert delta("receiver_callback_ack_seconds_count", endpoint=STATUS_REPORT) == 6  # 2xx only
    assert harness.token not in after and "no-such-token" not in after

    # What was stored, once: the duplicate counts nowhere; odd codes are bounded labels.
    assert delta("receiver_status_reports_total", status="DELIVRD") == 3
    assert delta("receiver_status_reports_total", status="MK:0036") == 1
    assert delta("receiver_status_reports_total", status="other") == 1
    assert delta("receiver_uplinks_total") == 1
    assert delta("receiver_blacklist_changes_total", action="add", source="keyword") == 1
    assert delta("receiver_writer_batch_records_sum") >= 7  # 6 reports + 1 reply (+ quarantined requests)
    assert delta("receiver_writer_lag_seconds_count") >= 1
    assert value(after, "receiver_journal_backlog_bytes") >= 0
    assert value(after, "receiver_journal_max_bytes") == 256 << 20


def test_journal_age_grows_while_postgres_refuses_and_errors_are_counted(harness: Harness) -> None:
    state = harness.client.app.state  # type: ignore[attr-defined]
    before = scrape(harness)
    real_connect = state.writer.connect

    async def refuse():  # type: ignore[no-untyped-def]
        raise OSError("PostgreSQL is away (test)")

    state.writer.connect = refuse
    state.writer._conn = None
    try:
        assert harness.post("status-report", "smsMsgId=away-1&status=DELIVRD").status_code == 200
        assert wait_for(
            lambda: value(scrape(harness), "receiver_journal_oldest_age_seconds") >= 1.0, timeout=10
        )
        during = scrape(harness)
        assert value(during, "receiver_journal_backlog_bytes") > 0
        errors = value(during, "receiver_database_errors_total", stage="writer")
        assert errors > value(before, "receiver_database_errors_total", stage="writer")
    finally:
        state.writer.connect = real_connect
    harness.settle()
    assert wait_for(lambda: value(scrape(harness), "receiver_journal_oldest_age_seconds") == 0.0, timeout=10)


def test_status_labels_are_bounded() -> None:
    assert metrics.status_label(" delivrd ") == "DELIVRD"
    assert metrics.status_label("E200027") == "E200027"
    assert metrics.status_label("1") == "1"
    assert metrics.status_label("DELIVRD-but-longer") == "other"
    assert metrics.status_label("a b") == "other"
    assert metrics.status_label("") == "other"
    assert metrics.status_label(None) == "other"
    seen = set(metrics._statuses)
    try:
        metrics._statuses.update(f"X{i}" for i in range(metrics.MAX_STATUS_LABELS))
        assert metrics.status_label("NEWCODE") == "other"
        assert metrics.status_label("DELIVRD") == "DELIVRD"  # known ones keep their label
    finally:
        metrics._statuses.clear()
        metrics._statuses.update(seen)


def test_on_commit_drops_updates_of_a_failed_block() -> None:
    done: list[int] = []
    with pytest.raises(RuntimeError), metrics.on_commit():
        metrics.later(lambda: done.append(1))
        raise RuntimeError("rolled back")
    assert done == []
    with metrics.on_commit():
        metrics.later(lambda: done.append(2))
        assert done == []
    assert done == [2]
    metrics.later(lambda: done.append(3))  # outside a block: at once
    assert done == [2, 3]


# --- logs -------------------------------------------------------------------------------------


def test_a_callback_logs_one_masked_line_with_its_request_id(harness: Harness) -> None:
    form = "application/x-www-form-urlencoded"
    report = "smsMsgId=log-1&status=DELIVRD&total=1&sequence=1&extend=order-7&to=%2B8615112346789"
    reply = "from=%2B8613912345678&to=csms100000001&body=%E5%A5%BD%E7%9A%84%E8%B0%A2%E8%B0%A2&smsMsgId=log-u1"
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as entries:
        first = harness.client.post(
            f"/callbacks/{harness.token}/status-report",
            content=report,
            headers={"Content-Type": form, "X-Request-Id": "platform-trace.42"},
        )
        second = harness.client.post(
            f"/callbacks/{harness.token}/uplink", content=reply, headers={"Content-Type": form}
        )
        third = harness.client.post(
            f"/callbacks/{harness.token}/uplink",
            content=reply,
            headers={"Content-Type": form, "X-Request-Id": "a b"},
        )
        harness.settle()
    assert first.status_code == second.status_code == third.status_code == 200
    assert first.headers["x-request-id"] == "platform-trace.42"
    generated = second.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert re.fullmatch(r"[0-9a-f]{32}", third.headers["x-request-id"])  # not sane: replaced

    by_request = {
        rid: [e for e in entries if e.get("request_id") == rid] for rid in ("platform-trace.42", generated)
    }
    [line] = by_request["platform-trace.42"]
    assert line["event"] == "callback" and line["log_level"] == "info"
    assert line["endpoint"] == "status-report" and line["code"] == 200 and line["application"] == "shop"
    assert line["sms_msg_id"] == "log-1" and line["status"] == "DELIVRD"
    assert line["to"] == "+86151****6789" and line["bytes"] == len(report)
    [line] = by_request[generated]
    assert (
        line["endpoint"] == "uplink"
        and line["from"] == "+86139****5678"
        and line["channel"] == "csms100000001"
    )
    text = repr(entries)
    for secret in (harness.token, "15112346789", "13912345678", "好的谢谢", "%E5%A5%BD", report, reply):
        assert secret not in text


def test_refused_and_unknown_callbacks_log_one_line_each(harness: Harness) -> None:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as entries:
        bad = harness.post("status-report", "status=DELIVRD")
        unknown = harness.post("status-report", "smsMsgId=x&status=DELIVRD", token="guess")
    for response, error in ((bad, "missing_field"), (unknown, "unknown_application")):
        rid = response.headers["x-request-id"]
        [line] = [e for e in entries if e.get("request_id") == rid]
        assert line["event"] == "callback" and line["code"] == response.status_code and line["error"] == error
    assert "guess" not in repr(entries)


@pytest.mark.parametrize("harness", [True], ids=["lane"], indirect=True)
def test_a_defect_on_the_lane_answers_500_with_a_reason_and_is_logged_like_any_callback(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(token: str, pool: object) -> None:
        raise RuntimeError("a defect")

    monkeypatch.setattr(harness.client.app.state.registry, "known", broken)  # type: ignore[attr-defined]
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as entries:
        response = harness.post("status-report", "smsMsgId=d-1&status=DELIVRD")
    assert response.status_code == 500 and response.json()["error"] == "internal_error"
    rid = response.headers["x-request-id"]
    lines = [e for e in entries if e.get("request_id") == rid]
    assert [e["event"] for e in lines] == ["callback.failed", "callback"] and lines[1]["code"] == 500


def test_a_push_with_a_bad_signature_logs_one_line(db_url: str, tmp_path: Path) -> None:
    async def keyed_app() -> str:
        conn = await asyncpg.connect(db_url)
        try:
            _, token = await applications.create(conn, "keyed", [])
            await applications.set_push_keys(conn, "keyed", [("ak1", "sk1")])
        finally:
            await conn.close()
        return token

    token = run(keyed_app())
    settings = Settings(database_url=db_url, data_dir=tmp_path, log_format="json")
    capture = capture_logs(processors=[structlog.contextvars.merge_contextvars])
    with TestClient(create_app(settings)) as client, capture as entries:
        response = client.post(
            f"/callbacks/{token}/status-report",
            content="smsMsgId=s-1&status=DELIVRD",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    assert response.status_code == 401
    [line] = [e for e in entries if e.get("request_id") == response.headers["x-request-id"]]
    assert line["event"] == "callback" and line["error"] == "invalid_signature"
    assert line["signature"] == "missing_header" and line["application"] == "keyed"


def test_console_output_in_a_terminal_json_otherwise() -> None:
    code = (
        "import structlog; from receiver import logs; logs.configure('info', 'auto');"
        "structlog.get_logger('t').info('hello', sms_msg_id='m-1')"
    )
    leader, follower = pty.openpty()
    try:
        subprocess.run([sys.executable, "-c", code], stderr=follower, check=True, timeout=60)
        os.close(follower)
        follower = -1
        out = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    text = out.decode()
    assert "hello" in text and "sms_msg_id" in text and not text.lstrip().startswith("{")
    piped = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(piped.stderr)["event"] == "hello"


def test_log_level_is_configurable(db_url: str, tmp_path: Path) -> None:
    env = service_env(tmp_path / "data", db_url, RECEIVER_LOG_LEVEL="warning")
    token = create_app_token(env)["token"]
    service = Service(env, workers=1).start()
    try:
        assert (
            service.post_form(f"/callbacks/{token}/status-report", "smsMsgId=quiet&status=DELIVRD")[0] == 200
        )
    finally:
        assert service.terminate() == 0
    assert '"callback"' not in service.log.read_text()


# --- several workers ----------------------------------------------------------------------------


def test_metrics_add_up_over_workers_and_survive_a_killed_one(db_url: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = service_env(data, db_url)
    token = create_app_token(env)["token"]
    stale = data / "metrics" / "12345-deadbeef"
    stale.mkdir(parents=True)
    (stale / "counter_12345.db").write_bytes(b"left by a run that was killed")
    service = Service(env, workers=2).start()
    try:
        assert not stale.exists(), "the metrics of a previous run were not cleared"
        [folder] = [p for p in (data / "metrics").iterdir() if p.is_dir()]
        n = 40
        for i in range(n):
            status, _ = service.post_form(
                f"/callbacks/{token}/status-report", f"smsMsgId=w-{i}&status=DELIVRD"
            )
            assert status == 200

        def total(text: str) -> float:
            return value(text, "receiver_http_requests_total", endpoint=STATUS_REPORT, code="200")

        status_file = data / "journal" / "writer.json"  # written once the writer process is under way
        assert wait_for(status_file.exists, timeout=30)
        writer = json.loads(status_file.read_text())["pid"]
        assert wait_for(lambda: writer in {int(p.stem.rsplit("_", 1)[1]) for p in folder.glob("gauge_livesum_*.db")})
        processes = {int(p.stem.rsplit("_", 1)[1]) for p in folder.glob("gauge_livesum_*.db")}
        assert writer in processes, "the writer process's metrics are added up too"
        workers = processes - {writer}
        assert len(workers) == 2, "each worker writes its own files"
        # A request is counted just after its answer is sent: the last one may still be on its way.
        assert wait_for(lambda: total(service.get("/metrics")[1].decode()) == n, timeout=10)
        # Whichever worker answers, it adds up both (the kernel spreads connections over them).
        scrapes = [service.get("/metrics")[1].decode() for _ in range(12)]
        assert {total(text) for text in scrapes} == {n}
        assert wait_for(lambda: value(service.get("/metrics")[1].decode(), "receiver_status_reports_total", status="DELIVRD") == n)  # fmt: skip

        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        assert wait_for(lambda: service.get("/healthz")[0] == 200)
        # The supervisor reaps it and starts another; the next scrape drops its gauges.
        assert wait_for(
            lambda: service.get("/metrics")[0] == 200 and not list(folder.glob(f"gauge_live*_{victim}.db"))
        )
        text = service.get("/metrics")[1].decode()
        assert total(text) == n, "a killed worker's counts must stay"
        assert value(text, "receiver_journal_max_bytes") == 256 << 20
    finally:
        assert service.terminate() == 0
    # A new run starts from zero.
    service = Service(env, workers=2).start()
    try:
        assert not folder.exists()
        assert value(service.get("/metrics")[1].decode(), "receiver_http_requests_total", endpoint=STATUS_REPORT, code="200") == 0  # fmt: skip
    finally:
        service.stop()


def test_metrics_dir_keeps_a_running_serves_folder(tmp_path: Path) -> None:
    saved = os.environ.get(metrics_dir.ENV)
    first = metrics_dir.prepare(tmp_path)
    try:
        assert first is not None
        second = metrics_dir.prepare(tmp_path)  # another serve on the same data folder
        assert second is not None and first.path.exists() and second.path != first.path
        second.release()
        first.lock_fd, fd = -1, first.lock_fd
        os.close(fd)  # as if that serve died
        third = metrics_dir.prepare(tmp_path)
        assert third is not None and not first.path.exists()
        third.release()
    finally:
        if saved is None:
            os.environ.pop(metrics_dir.ENV, None)
        else:
            os.environ[metrics_dir.ENV] = saved


def test_api_keys_never_reach_logs_or_answers(harness: Harness) -> None:
    """Privacy: a key, right or wrong, is in no log line and no answer; without a valid
    key the query API says nothing about what it holds."""
    assert harness.post("status-report", "smsMsgId=priv-1&status=DELIVRD&to=%2B8615112346789").status_code == 200
    harness.settle()
    wrong = "not-the-key-5f2b9c"
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as entries:
        answers = [
            harness.client.get("/v1/messages/priv-1", headers={"Authorization": f"Bearer {wrong}"}),
            harness.client.get("/v1/messages?to=%2B8615112346789", headers={"Authorization": wrong}),
            harness.client.get("/v1/blacklist/%2B8615112346789"),
            harness.api("GET", "/v1/messages/priv-1"),
        ]
    assert [a.status_code for a in answers[:3]] == [401, 401, 401]
    for answer in answers[:3]:
        assert "priv-1" not in answer.text and "15112346789" not in answer.text
    text = repr(entries) + "".join(a.text + repr(dict(a.headers)) for a in answers)
    assert wrong not in text and harness.api_key not in text


@pytest.mark.parametrize("seconds", [[], [0.0], [0.0004, 0.0005, 0.003, 0.7, 11.0], [0.01] * 5 + [2.5, 9.99]])
def test_callback_counts_kept_in_memory_expose_as_observe_would(seconds: list[float]) -> None:
    """The callback path counts in plain memory (metrics.Tally) and adds its counts to the
    histogram through prometheus_client's internals: the exposition must be what observe() gives,
    or a prometheus_client upgrade changed what the tally relies on."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    def exposition(feed: object) -> bytes:
        registry = CollectorRegistry()
        histogram = Histogram("t_seconds", "t", ["endpoint"], buckets=metrics.ACK_SECONDS._upper_bounds[:-1],
                              registry=registry)  # fmt: skip
        feed(histogram.labels("e"))  # type: ignore[operator]
        return b"\n".join(line for line in generate_latest(registry).splitlines() if b"_created" not in line)

    def one_by_one(child: object) -> None:
        for s in seconds:
            child.observe(s)  # type: ignore[attr-defined]

    def tallied(child: object) -> None:
        bounds = metrics.ACK_SECONDS._upper_bounds
        buckets = [0] * len(bounds)
        for s in seconds:
            buckets[next(i for i, b in enumerate(bounds) if s <= b)] += 1
        metrics._add_observations(child, buckets, sum(seconds))  # type: ignore[arg-type]

    assert exposition(tallied) == exposition(one_by_one)


def test_a_scrape_shows_the_callbacks_answered_just_before_it(harness: Harness) -> None:
    """Counted in memory, flushed at the scrape: nothing waits for the next second."""
    def counts() -> tuple[float, float]:
        text = harness.client.get("/metrics").text
        return (value(text, "receiver_http_requests_total", endpoint=STATUS_REPORT, code="200"),
                value(text, "receiver_callback_ack_seconds_count", endpoint=STATUS_REPORT))  # fmt: skip

    before = counts()  # the process's registry: other tests' counts too
    for i in range(3):
        assert harness.post("status-report", f"smsMsgId=t-{i}&status=DELIVRD").status_code == 200
    after = counts()
    assert (after[0] - before[0], after[1] - before[1]) == (3, 3)
