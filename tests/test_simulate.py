"""``receiver simulate``: what it generates (pure), and the whole flow against ``receiver serve``."""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
from support import Service, cli, create_app_token, fetch, run, service_env, wait_for

from receiver.blacklist.keywords import Keywords
from receiver.config import Settings
from receiver.protocol import parse_status_report_batch, parse_status_report_form, parse_uplink_form
from receiver.simulate import push, scenario
from receiver.simulate.scenario import Options


def form_pushes(plan: scenario.Scenario, endpoint: str) -> list[scenario.Push]:
    return [p for p in plan.pushes if p.endpoint == endpoint]


def test_same_seed_same_pushes_and_every_push_parses() -> None:
    start = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
    options = Options(
        messages=300, seed=7, long=0.3, failures=0.2, duplicates=0.1, replies=0.2, optouts=0.1, start=start
    )
    plan = scenario.build(options)
    again = scenario.build(options)
    assert [p.body for p in plan.pushes] == [p.body for p in again.pushes]
    later = scenario.build(replace(options, start=None))  # times follow the clock, the rest the seed
    assert [s.sms_msg_id for s in later.sends] == [s.sms_msg_id for s in plan.sends]
    assert [s.to for s in later.sends] == [s.to for s in plan.sends]

    reports = [parse_status_report_form(p.body) for p in form_pushes(plan, "status-report")]
    replies = [parse_uplink_form(p.body) for p in form_pushes(plan, "uplink")]
    assert len(reports) + len(replies) == len(plan.pushes)
    distinct_reports = {p.body for p in form_pushes(plan, "status-report")}
    assert len(distinct_reports) == plan.expected.reports == sum(s.total for s in plan.sends)
    assert len({r.sms_msg_id for r in replies}) == plan.expected.replies
    assert sum(1 for p in plan.pushes if p.duplicate) > 0
    assert len(plan.pushes) == plan.expected.reports + plan.expected.replies + sum(
        p.duplicate for p in plan.pushes
    )
    assert plan.expected.delivered | plan.expected.failed == {s.sms_msg_id for s in plan.sends}
    assert {r.status for r in reports} >= {"DELIVRD", "UNDELIV"}


def test_encodings_and_fields_are_the_platforms() -> None:
    plan = scenario.build(Options(messages=400, seed=3, replies=0.3, optouts=0.1, extend=0.5))
    report_bodies = [p.body.decode("ascii") for p in form_pushes(plan, "status-report")]
    assert all(":" not in body for body in report_bodies)  # %3A in updateTime
    assert any("updateTime=20" in body and "%3A" in body for body in report_bodies)
    with_to = [body for body in report_bodies if "&to=" in body]
    assert with_to and all("&extend=order-" in body and "&to=%2B86" in body for body in with_to)
    first = dict(parse_qsl(report_bodies[0]))
    assert list(first)[:2] == ["sequence", "total"]  # the official example's field order
    reply_bodies = [p.body.decode("ascii") for p in form_pushes(plan, "uplink")]
    assert all(body.startswith("from=%2B86") for body in reply_bodies)
    assert any("%E9%80%80%E8%AE%A2" in body for body in reply_bodies)  # 退订, UTF-8
    # Registration documents are the send API's answer, grouped by send request.
    requests = plan.requests
    results = [r.response["result"] for r in requests]
    assert all(isinstance(result, list) for result in results)
    assert sum(len(result) for result in results if isinstance(result, list)) == len(plan.sends)
    for result in results:
        assert isinstance(result, list)
        ids = [item["smsMsgId"] for item in result]
        assert len({i.rsplit("_", 1)[0] for i in ids}) == 1  # one UUID prefix, counting suffixes


def test_replies_mean_what_the_receivers_default_keywords_say() -> None:
    keywords = Keywords.of(Settings().optout_keywords, Settings().resubscribe_keywords)
    assert all(keywords.intent(text) == "optout" for text in scenario.OPTOUT_REPLIES)
    assert all(keywords.intent(text) is None for text in scenario.REPLIES)
    assert "Ｔ" in scenario.OPTOUT_REPLIES and "退订" in scenario.OPTOUT_REPLIES


def test_long_messages_arrive_out_of_order_only_when_asked() -> None:
    def part_orders(plan: scenario.Scenario) -> list[list[int]]:
        seen: dict[str, list[int]] = {}
        for p in form_pushes(plan, "status-report"):
            if not p.duplicate:
                report = parse_status_report_form(p.body)
                if report.total and report.total > 1:
                    seen.setdefault(report.sms_msg_id, []).append(report.sequence or 0)
        return list(seen.values())

    options = {"messages": 300, "seed": 11, "long": 0.5, "duplicates": 0.0}
    in_order = part_orders(scenario.build(Options(**options)))  # type: ignore[arg-type]
    assert in_order and all(parts == sorted(parts) for parts in in_order)
    shuffled = part_orders(scenario.build(Options(**options, reorder=True)))  # type: ignore[arg-type]
    assert any(parts != sorted(parts) for parts in shuffled)


def test_batches_hold_1_to_50_reports_and_parse_whole() -> None:
    plan = scenario.build(Options(messages=500, seed=5, batch=True, duplicates=0.0))
    batches = form_pushes(plan, "status-reports")
    assert batches and not form_pushes(plan, "status-report")
    items = 0
    for p in batches:
        parsed = parse_status_report_batch(p.body)
        assert not parsed.rejected and 1 <= len(parsed.reports) == p.items <= 50
        items += p.items
        assert all("%3A" not in raw for _, raw in parsed.reports)  # JSON: times as they are
    assert items == plan.expected.reports


def test_options_are_checked() -> None:
    with pytest.raises(ValueError):
        Options(messages=0)
    with pytest.raises(ValueError):
        Options(duplicates=1.5)
    with pytest.raises(ValueError):
        Options(replies=0.7, optouts=0.5)


def test_requests_carry_the_platforms_headers() -> None:
    target = push.Target("http://127.0.0.1:9/base/", "tok/en")
    p = scenario.Push("status-report", scenario.FORM, b"smsMsgId=a&status=DELIVRD")
    raw = push.request_bytes(target, p)
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /base/callbacks/tok%2Fen/status-report HTTP/1.1"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["Host"] == "127.0.0.1:9" and headers["Connection"] == "close"
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert headers["Content-Length"] == str(len(body)) and body == p.body
    assert headers["Pooltype"] == "approxy" and headers["TrcModule"] == "AP" and len(headers["Ompsid"]) == 32
    assert "Authorization" not in headers
    signed = push.request_bytes(push.Target("http://127.0.0.1:9", "t", push_key=("ak", "sk")), p, now=0)
    assert b"X-Sdk-Date: 19700101T000000Z\r\n" in signed
    assert b"Authorization: SDK-HMAC-SHA256 Access=ak,SignedHeaders=connection;content-length;" in signed


def test_progress_bar_is_one_line_rewritten() -> None:
    stream = io.StringIO()
    bar = push.ProgressBar(4, stream=stream, enabled=True)
    result = push.Result(pushes=4, codes=Counter({200: 3, 503: 1}))
    bar(result)
    bar.close()
    text = stream.getvalue()
    assert (
        text.startswith("\r[")
        and text.endswith("\n")
        and "4/4" in text
        and "ok 3" in text
        and "failed 1" in text
    )
    quiet = io.StringIO()
    push.ProgressBar(4, stream=quiet)(result)  # not a terminal: nothing
    assert quiet.getvalue() == ""


# --- the whole flow -----------------------------------------------------------------------------


def outcome(url: str, reports: int, replies: int) -> tuple[int, int, Counter[str], set[str]]:
    """What the database holds, once it holds ``reports`` reports and ``replies`` replies (or after 30 s)."""

    def counts() -> tuple[int, int]:
        row = run(
            fetch(
                url, "SELECT (SELECT count(*) FROM status_reports) AS r, (SELECT count(*) FROM uplinks) AS u"
            )
        )
        return row[0]["r"], row[0]["u"]

    wait_for(lambda: counts() == (reports, replies), timeout=30)
    states = Counter({r["state"]: r["n"] for r in run(fetch(url, "SELECT state, count(*) AS n FROM message_states GROUP BY state"))})  # fmt: skip
    blacklisted = {r["number"] for r in run(fetch(url, "SELECT DISTINCT number FROM blacklist"))}
    return *counts(), states, blacklisted


def test_simulate_against_serve_registers_pushes_and_checks(db_url: str, tmp_path: Path) -> None:
    env = service_env(tmp_path / "data", db_url)
    token = create_app_token(env)["token"]
    key = json.loads(cli("apikey", "create", "simulator", "--json", env=env).stdout)["key"]
    service = Service(env, workers=2).start()
    try:
        url = f"http://127.0.0.1:{service.port}"
        common = [
            "--url",
            url,
            "--token",
            token,
            "--api-key",
            key,
            "--messages",
            "300",
            "--rate",
            "0",
            "--json",
        ]
        done = cli(
            "simulate",
            *common,
            "--seed",
            "21",
            "--reorder",
            "--duplicates",
            "0.1",
            "--optouts",
            "0.05",
            env=env,
        )
        summary = json.loads(done.stdout)
        assert summary["ok"] is True and summary["registered"] == 300
        assert summary["push"]["acknowledged"] == summary["push"]["pushes"]
        first = scenario.build(Options(messages=300, seed=21, reorder=True, duplicates=0.1, optouts=0.05))
        e = first.expected
        assert summary["outcome"] == {
            "delivered": len(e.delivered), "failed": len(e.failed), "pending": 0,
            "blacklisted": len(e.blacklisted(registered=True)),
        }  # fmt: skip
        assert e.optouts, "the scenario should unsubscribe someone"
        reports, replies, states, blacklisted = outcome(db_url, e.reports, e.replies)
        assert (reports, replies) == (e.reports, e.replies)
        assert states == Counter({"delivered": len(e.delivered), "failed": len(e.failed)})
        assert blacklisted == e.blacklisted(registered=True)

        # Batches this time, on top: the database holds both runs, nothing twice.
        cli("simulate", *common, "--seed", "22", "--batch", "--channel", "csms100000002", env=env)
        second = scenario.build(Options(messages=300, seed=22, batch=True, channel="csms100000002")).expected
        reports, replies, states, blacklisted = outcome(
            db_url, e.reports + second.reports, e.replies + second.replies
        )
        assert (reports, replies) == (e.reports + second.reports, e.replies + second.replies)
        assert blacklisted == e.blacklisted(True) | second.blacklisted(True)
        via = {r["via"]: r["n"] for r in run(fetch(db_url, "SELECT via, count(*) AS n FROM status_reports GROUP BY via"))}  # fmt: skip
        assert via == {"form": e.reports, "batch": second.reports}
    finally:
        assert service.terminate() == 0


def test_simulate_without_a_key_only_pushes(db_url: str, tmp_path: Path) -> None:
    env = service_env(tmp_path / "data", db_url)
    token = create_app_token(env)["token"]
    service = Service(env, workers=1).start()
    try:
        url = f"http://127.0.0.1:{service.port}"
        done = cli(
            "simulate",
            "--url",
            url,
            "--token",
            token,
            "--messages",
            "50",
            "--seed",
            "3",
            "--rate",
            "500",
            env=env,
        )
        assert "pushed" in done.stdout and "--api-key" in done.stdout
        plan = scenario.build(Options(messages=50, seed=3))
        reports, replies, _, blacklisted = outcome(db_url, plan.expected.reports, plan.expected.replies)
        assert (reports, replies) == (plan.expected.reports, plan.expected.replies)
        assert blacklisted == plan.expected.blacklisted(registered=False)
        wrong = cli(
            "simulate", "--url", url, "--token", "not-a-token", "--messages", "5", env=env, check=False
        )
        assert wrong.returncode == 1 and "404" in wrong.stdout
    finally:
        assert service.terminate() == 0


def test_signed_pushes_verify_with_the_receivers_verifier() -> None:
    from receiver.protocol import signature

    target = push.Target("http://127.0.0.1:8080", "tok", push_key=("pushAk", "pushSk*1231d881wd"))
    p = scenario.build(Options(messages=5, seed=1)).pushes[0]
    raw = push.request_bytes(target, p, now=1_700_000_000)
    head, body = raw.split(b"\r\n\r\n", 1)
    request_line, *lines = head.split(b"\r\n")
    headers = [tuple(line.split(b": ", 1)) for line in lines]
    path = request_line.split(b" ")[1]
    common = {
        "method": "POST",
        "raw_path": path,
        "query_string": b"",
        "headers": headers,
        "now": 1_700_000_000,
        "max_skew": 900,
    }
    assert signature.verify({"pushAk": "pushSk*1231d881wd"}, body=body, **common) == "pushAk"  # type: ignore[arg-type]
    with pytest.raises(signature.SignatureError):
        signature.verify({"pushAk": "another secret"}, body=body, **common)  # type: ignore[arg-type]


def test_simulate_signs_pushes_for_an_application_with_push_keys(db_url: str, tmp_path: Path) -> None:
    env = service_env(tmp_path / "data", db_url)
    token = json.loads(cli("app", "create", "signed", "--push-key", "simAk:simSk", "--json", env=env).stdout)[
        "token"
    ]
    service = Service(env, workers=1).start()
    try:
        url = f"http://127.0.0.1:{service.port}"
        common = ["--url", url, "--token", token, "--messages", "30", "--seed", "8", "--json"]
        signed = json.loads(cli("simulate", *common, "--push-key", "simAk:simSk", env=env).stdout)
        assert signed["ok"] is True and signed["push"]["codes"] == {"200": signed["push"]["pushes"]}
        unsigned = cli("simulate", *common, env=env, check=False)
        assert unsigned.returncode == 1 and set(json.loads(unsigned.stdout)["push"]["codes"]) == {"401"}
    finally:
        assert service.terminate() == 0
