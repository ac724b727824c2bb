"""The blacklist, table-driven on a real PostgreSQL: callbacks in, blacklist rows and history out;
the /v1/blacklist API; the CLI; rebuilding; a blacklisting surviving kill -9."""

from __future__ import annotations

import csv
import http.client
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import asyncpg
import pytest
from support import (
    JSON,
    Harness,
    OwnPostgres,
    Service,
    cli,
    create_app_token,
    fetch,
    run,
    service_env,
    serving,
    wait_for,
)

from receiver import applications, partitions
from receiver.blacklist import store
from receiver.blacklist.rules import Signal, fold
from receiver.config import Settings
from receiver.protocol import StatusReport, Uplink
from receiver.records import ReportRecord, UplinkRecord
from receiver.writer import store as write_batch

N1 = "+8615112345678"
N2 = "+8613112345678"
N3 = "+8613712343774"
CHANNEL = "10691002019"
OTHER_CHANNEL = "10690000001"


def uplink(body: str, sender: str = N1, sms_msg_id: str = "u1", channel: str = CHANNEL) -> str:
    return urlencode({"smsMsgId": sms_msg_id, "from": sender, "to": channel, "body": body})


def report(sms_msg_id: str, status: str, to: str | None = None) -> str:
    fields = {"smsMsgId": sms_msg_id, "status": status, "total": "1", "sequence": "1", "source": "2",
              "updateTime": "2026-01-01T00:00:00Z"}  # fmt: skip
    if to is not None:
        fields.update(extend="x", to=to)
    return urlencode(fields)


def entries(h: Harness) -> list[tuple[object, ...]]:
    return h.rows('SELECT number, channel, source, reason, sms_msg_id, added_by FROM blacklist ORDER BY 1, 2, 3')


def history(h: Harness) -> list[tuple[object, ...]]:
    return h.rows("SELECT number, channel, source, action, actor, reason FROM blacklist_history ORDER BY id")


# --- callbacks in, rows out -------------------------------------------------------------------

KEYWORD_ROW = (N1, None, "keyword", "replied 'T'", "u1", None)

FLOWS = [
    ("reply T", [("uplink", uplink("T"))], [KEYWORD_ROW]),
    ("reply full-width with punctuation", [("uplink", uplink("ＴＤ。"))],
     [(N1, None, "keyword", "replied 'ＴＤ。'", "u1", None)]),
    ("reply R lower case", [("uplink", uplink(" r! "))], [(N1, None, "keyword", "replied 'r!'", "u1", None)]),
    ("reply 退订", [("uplink", uplink("退订"))], [(N1, None, "keyword", "replied '退订'", "u1", None)]),
    ("T-shirt unsubscribes no one", [("uplink", uplink("T-shirt"))], []),
    ("Thanks unsubscribes no one", [("uplink", uplink("Thanks"))], []),
    ("Tomorrow unsubscribes no one", [("uplink", uplink("Tomorrow"))], []),
    ("退订，谢谢 is more than the keyword", [("uplink", uplink("退订，谢谢"))], []),
    ("masked demo number is not blacklisted", [("uplink", uplink("T", sender="+86151****6789"))], []),
    ("the same reply twice", [("uplink", uplink("T")), ("uplink", uplink("T"))], [KEYWORD_ROW]),
    ("a second unsubscribe keeps the first cause",
     [("uplink", uplink("T")), ("uplink", uplink("退订", sms_msg_id="u2"))], [KEYWORD_ROW]),
    ("number without plus", [("uplink", uplink("T", sender="8615112345678"))], [KEYWORD_ROW]),
    ("report SC:0016 with its to", [("status-report", report("m1", "SC:0016", to=N2))],
     [(N2, None, "platform", "status SC:0016", "m1", None)]),
    ("report mbblack, any case", [("status-report", report("m1", "mbblack", to=N2))],
     [(N2, None, "platform", "status MBBLACK", "m1", None)]),
    ("every platform code", [("status-report", report(f"m{i}", code, to=number))
                             for i, (code, number) in enumerate(
                                 [("SC:0003", N1), ("SC:0005", N2), ("BLACK", N3), ("TDBLACK", "+8613912345678"),
                                  ("TSBLACK", "+8618912345678")])],
     [(N2, None, "platform", "status SC:0005", "m1", None), (N3, None, "platform", "status BLACK", "m2", None),
      (N1, None, "platform", "status SC:0003", "m0", None),
      ("+8613912345678", None, "platform", "status TDBLACK", "m3", None),
      ("+8618912345678", None, "platform", "status TSBLACK", "m4", None)]),
    ("other failures blacklist no one", [("status-report", report("m1", code, to=N2))
                                         for code in ("DELIVRD", "UNDELIV", "SC:0004", "KEYWORD", "E200027")], []),
    ("a code with no number waits for its send", [("status-report", report("m1", "SC:0016"))], []),
    ("batch of reports", [("status-reports", json.dumps({"statusReportList": [
        {"smsMsgId": "m1", "status": "BLACK", "extend": "x", "to": N2},
        {"smsMsgId": "m2", "status": "DELIVRD", "extend": "x", "to": N3}]}))],
     [(N2, None, "platform", "status BLACK", "m1", None)]),
    ("reply and report", [("uplink", uplink("T")), ("status-report", report("m1", "SC:0016", to=N1))],
     [KEYWORD_ROW, (N1, None, "platform", "status SC:0016", "m1", None)]),
]  # fmt: skip


@pytest.mark.parametrize(("posts", "rows"), [c[1:] for c in FLOWS], ids=[c[0] for c in FLOWS])
def test_callbacks_blacklist(harness: Harness, posts: list[tuple[str, str]], rows: list[tuple[object, ...]]) -> None:
    for endpoint, body in posts:
        content_type = JSON if endpoint == "status-reports" else "application/x-www-form-urlencoded"
        assert harness.post(endpoint, body, content_type).status_code == 200
    assert sorted(entries(harness), key=str) == sorted(rows, key=str)
    assert sorted((r[0], r[2], r[3]) for r in history(harness)) == sorted((r[0], r[2], "add") for r in rows)
    # replies are stored as ordinary uplinks all the same
    replies = {body for endpoint, body in posts if endpoint == "uplink"}
    assert harness.rows("SELECT count(*) FROM uplinks") == [(len(replies),)]


def test_history_says_who_and_why(harness: Harness) -> None:
    assert harness.post("uplink", uplink("T")).status_code == 200
    assert harness.post("status-report", report("m1", "SC:0016", to=N2)).status_code == 200
    assert history(harness) == [
        (N1, None, "keyword", "add", "recipient", "replied 'T'"),
        (N2, None, "platform", "add", "platform", "status SC:0016"),
    ]
    [(at,)] = harness.rows(f"SELECT added_at FROM blacklist WHERE number = '{N1}'")
    [(received,)] = harness.rows("SELECT received_at FROM uplinks")
    assert at == received


class Recorder:
    """Stands in for the module's structlog logger: what was logged, with which fields."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, object]]] = []

    def __getattr__(self, level: str):  # type: ignore[no-untyped-def]
        return lambda event, **fields: self.events.append((event, fields))


def test_unparseable_numbers_are_logged_masked(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    monkeypatch.setattr(store, "log", recorder)
    assert harness.post("uplink", uplink("T", sender="+86151****6789")).status_code == 200
    assert harness.post("uplink", uplink("T", sender="+86151ab6789", sms_msg_id="u2")).status_code == 200
    assert harness.post("uplink", uplink("Thanks", sender="+86151ab6789", sms_msg_id="u3")).status_code == 200
    harness.settle()
    assert recorder.events == [
        ("blacklist.unparseable_number", {"number": "+86151****6789", "sms_msg_id": "u1"}),
        ("blacklist.unparseable_number", {"number": "+861****6789", "sms_msg_id": "u2"}),
    ]
    assert entries(harness) == []


# --- reports before and after their sends ------------------------------------------------------


async def register_send(url: str, sms_msg_id: str, to: str, channel: str = "csms100000001", *,
                        settings: Settings | None = None) -> None:  # fmt: skip
    """What POST /v1/sent does for the blacklist: insert the send, then after_sent in the same transaction."""
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute(
                """INSERT INTO sent_messages (sms_msg_id, "to", "from", status, create_time, raw)
                   VALUES ($1, $2, $3, '000000', now(), '{}')""",
                sms_msg_id, to, channel,
            )  # fmt: skip
            await store.after_sent(conn, [sms_msg_id], partitions.span([datetime.now(UTC)]), settings)
    finally:
        await conn.close()


def test_a_code_reported_before_its_send_applies_when_the_send_is_registered(harness: Harness) -> None:
    assert harness.post("status-report", report("m1", "SC:0016")).status_code == 200
    assert harness.post("status-report", report("m2", "DELIVRD")).status_code == 200
    assert entries(harness) == []
    run(register_send(harness.url, "m1", N2))
    run(register_send(harness.url, "m2", N3))
    run(register_send(harness.url, "m3", N1))
    assert entries(harness) == [(N2, None, "platform", "status SC:0016", "m1", None)]


def test_a_code_reported_after_its_send_finds_the_number(harness: Harness) -> None:
    run(register_send(harness.url, "m1", N2))
    assert harness.post("status-report", report("m1", "SC:0016")).status_code == 200
    assert entries(harness) == [(N2, None, "platform", "status SC:0016", "m1", None)]


def test_send_then_report_and_report_then_send_give_the_same_entry(
    db_url: str, empty_db_url: str, tmp_path: Path
) -> None:
    results = []
    for order, url in (("send first", db_url), ("report first", empty_db_url)):
        if order == "report first":
            cli("migrate", env=service_env(tmp_path, url))
        settings = {"blacklist_scope": "channel"}
        with serving(url, tmp_path / order, **settings) as h:
            if order == "send first":
                run(register_send(url, "m1", N2, settings=Settings(**settings)))  # type: ignore[arg-type]
            assert h.post("status-report", report("m1", "SC:0016", to=N2)).status_code == 200
            h.settle()
            if order == "report first":
                assert entries(h) == [(N2, None, "platform", "status SC:0016", "m1", None)]  # channel not known yet
                run(register_send(url, "m1", N2, settings=Settings(**settings)))  # type: ignore[arg-type]
            results.append(h.rows("SELECT number, channel, source, reason, sms_msg_id FROM blacklist"))
    assert results[0] == results[1] == [(N2, "csms100000001", "platform", "status SC:0016", "m1")]


# --- order: events folded by when they happened, not when they were stored ----------------------


def _records(app_id: int) -> tuple[UplinkRecord, UplinkRecord, ReportRecord]:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    out = UplinkRecord(app_id, t0, "", Uplink("u1", N1, CHANNEL, "T"))
    back = UplinkRecord(app_id, t0 + timedelta(minutes=5), "", Uplink("u2", N1, CHANNEL, "START"))
    code = ReportRecord(app_id, "form", t0 + timedelta(minutes=1), "", StatusReport("m1", "SC:0016", to=N1))
    return out, back, code


@pytest.mark.parametrize("order", [(0, 1, 2), (1, 0, 2), (2, 1, 0), (1, 2, 0)])
def test_arrival_order_does_not_matter(db_url: str, order: tuple[int, int, int]) -> None:
    hook = store.after_insert_hook(Settings(resubscribe_keywords="START"))  # type: ignore[arg-type]

    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(db_url)
        try:
            app, _ = await applications.create(conn, "shop", [])
            records = _records(app.id)
            for index in order:
                await write_batch(conn, [records[index]], [hook])
            return await conn.fetch("SELECT number, source, sms_msg_id FROM blacklist")
        finally:
            await conn.close()

    # unsubscribed at 0:00, platform code at 0:01, re-subscribed at 0:05: only the platform's entry stays
    assert [tuple(r) for r in run(go())] == [(N1, "platform", "m1")]


# --- re-subscribe, scope ------------------------------------------------------------------------


def test_resubscribe_lifts_the_keyword_entry_only(db_url: str, tmp_path: Path) -> None:
    with serving(db_url, tmp_path, resubscribe_keywords="START,订阅") as h:
        assert h.post("uplink", uplink("T")).status_code == 200
        assert h.post("uplink", uplink("T", sender=N2, sms_msg_id="u2")).status_code == 200
        assert h.post("status-report", report("m1", "SC:0016", to=N2)).status_code == 200
        assert h.api("PUT", f"/v1/blacklist/{N3}", json={"reason": "asked by phone"}).status_code == 201
        for i, (number, word) in enumerate([(N1, "start"), (N2, "订阅。"), (N3, "START")]):
            assert h.post("uplink", uplink(word, sender=number, sms_msg_id=f"r{i}")).status_code == 200
        assert h.rows("SELECT number, source FROM blacklist ORDER BY 1") == [(N2, "platform"), (N3, "manual")]
        removals = "SELECT number, action, actor, reason FROM blacklist_history WHERE action = 'remove' ORDER BY 1"
        assert h.rows(removals) == sorted(
            [(N1, "remove", "recipient", "replied 'start'"), (N2, "remove", "recipient", "replied '订阅。'")]
        )
        # and unsubscribing again blacklists again
        assert h.post("uplink", uplink("T", sms_msg_id="u3")).status_code == 200
        assert h.rows(f"SELECT sms_msg_id FROM blacklist WHERE number = '{N1}'") == [("u3",)]


def test_no_resubscribe_keyword_by_default(harness: Harness) -> None:
    assert harness.post("uplink", uplink("T")).status_code == 200
    assert harness.post("uplink", uplink("START", sms_msg_id="u2")).status_code == 200
    assert entries(harness) == [KEYWORD_ROW]


def test_scope_channel_blocks_only_the_channel_replied_to(db_url: str, tmp_path: Path) -> None:
    with serving(db_url, tmp_path, blacklist_scope="channel", resubscribe_keywords="START") as h:
        assert h.post("uplink", uplink("T", channel=CHANNEL)).status_code == 200
        assert entries(h) == [(N1, CHANNEL, "keyword", "replied 'T'", "u1", None)]
        assert h.api("GET", f"/v1/blacklist/{N1}?channel={CHANNEL}").status_code == 200
        assert h.api("GET", f"/v1/blacklist/{N1}?channel={OTHER_CHANNEL}").status_code == 404
        assert h.api("GET", f"/v1/blacklist/{N1}").status_code == 200  # no channel said: any entry counts
        checked = h.api("POST", "/v1/blacklist/check", json={"numbers": [N1], "channel": OTHER_CHANNEL})
        assert checked.json() == {"blacklisted": []}
        checked = h.api("POST", "/v1/blacklist/check", json={"numbers": [N1], "channel": CHANNEL})
        assert checked.json() == {"blacklisted": [N1]}
        # a re-subscribe to another channel lifts nothing; to the same one, the entry
        assert h.post("uplink", uplink("START", channel=OTHER_CHANNEL, sms_msg_id="u2")).status_code == 200
        assert len(entries(h)) == 1
        assert h.post("uplink", uplink("START", channel=CHANNEL, sms_msg_id="u3")).status_code == 200
        assert entries(h) == []


def test_scope_all_blocks_every_channel(harness: Harness) -> None:
    assert harness.post("uplink", uplink("T", channel=CHANNEL)).status_code == 200
    assert harness.api("GET", f"/v1/blacklist/{N1}?channel={OTHER_CHANNEL}").status_code == 200


# --- the API -----------------------------------------------------------------------------------


def test_every_blacklist_route_needs_an_api_key(harness: Harness) -> None:
    client = harness.client
    routes: list[tuple[str, str, dict[str, object] | None]] = [
        ("GET", f"/v1/blacklist/{N1}", None), ("POST", "/v1/blacklist/check", {"numbers": []}),
        ("PUT", f"/v1/blacklist/{N1}", {"reason": "x"}), ("DELETE", f"/v1/blacklist/{N1}?reason=x", None),
    ]  # fmt: skip
    for method, path, body in routes:
        for headers in ({}, {"Authorization": "Bearer rcv_wrong"}, {"Authorization": "Basic abc"}):
            response = client.request(method, path, json=body, headers=headers)
            assert response.status_code == 401, (method, headers)
            assert response.json()["error"] == "unauthorized"
    assert harness.rows("SELECT count(*) FROM blacklist_signals") == [(0,)]


def test_get_answers_the_entry_in_e164_for_any_form(harness: Harness) -> None:
    assert harness.post("uplink", uplink("T")).status_code == 200
    for form in ("+8615112345678", "%2B8615112345678", "8615112345678", "15112345678", "%252B8615112345678"):
        response = harness.api("GET", f"/v1/blacklist/{form}")
        assert response.status_code == 200, form
        body = response.json()
        assert (body["number"], body["source"], body["sms_msg_id"], body["channel"]) == (N1, "keyword", "u1", None)
        assert body["reason"] == "replied 'T'" and body["added_at"].endswith("Z")
        assert [e["source"] for e in body["entries"]] == ["keyword"]
    missing = harness.api("GET", f"/v1/blacklist/{N2}")
    assert missing.status_code == 404
    assert missing.json() == {"error": "not_blacklisted", "detail": {"number": N2}}


@pytest.mark.parametrize("bad", ["+86151****6789", "csms100000001", "hello", "+", "%2B"])
def test_get_refuses_what_is_no_number(harness: Harness, bad: str) -> None:
    response = harness.api("GET", f"/v1/blacklist/{bad}")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_number"


def test_check_up_to_500_numbers(harness: Harness) -> None:
    assert harness.post("uplink", uplink("T")).status_code == 200
    assert harness.post("status-report", report("m1", "BLACK", to=N2)).status_code == 200
    others = [f"+86139{i:08d}" for i in range(497)]
    numbers = [*others[:200], "8615112345678", *others[200:], "%2B8613112345678", N3]
    assert len(numbers) == 500
    response = harness.api("POST", "/v1/blacklist/check", json={"numbers": numbers})
    assert response.status_code == 200
    assert response.json() == {"blacklisted": [N1, N2]}
    assert harness.api("POST", "/v1/blacklist/check", json={"numbers": []}).json() == {"blacklisted": []}
    twice = harness.api("POST", "/v1/blacklist/check", json={"numbers": [N1, "8615112345678", 8615112345678]})
    assert twice.json() == {"blacklisted": [N1]}


CHECK_REFUSALS = [
    ({"numbers": [N1] * 501}, "too_many_numbers"),
    ({"numbers": [N1, "+86151****6789", None, "x"]}, "invalid_numbers"),
    ({"numbers": N1}, "invalid_field"),
    ({}, "invalid_field"),
    ([N1], "invalid_body"),
    ({"numbers": [N1], "channel": 5}, "invalid_field"),
]


@pytest.mark.parametrize(("body", "error"), CHECK_REFUSALS)
def test_check_refuses_bad_input_with_a_4xx(harness: Harness, body: object, error: str) -> None:
    response = harness.api("POST", "/v1/blacklist/check", json=body)
    assert response.status_code == 400
    assert response.json()["error"] == error


def test_check_details_the_bad_numbers(harness: Harness) -> None:
    response = harness.api("POST", "/v1/blacklist/check", json={"numbers": [N1, "+86151****6789", None]})
    assert response.json()["detail"] == {
        "invalid": [{"index": 1, "number": "+86151****6789"}, {"index": 2, "number": None}]
    }
    not_json = harness.api("POST", "/v1/blacklist/check", content=b"{nope", headers={"Content-Type": JSON})
    assert (not_json.status_code, not_json.json()["error"]) == (400, "invalid_json")


def test_put_and_delete_by_hand_are_audited(harness: Harness) -> None:
    first = harness.api("PUT", "/v1/blacklist/8615112345678", json={"reason": "asked by phone, ticket 42"})
    assert first.status_code == 201
    assert (first.json()["number"], first.json()["source"], first.json()["added_by"]) == (N1, "manual", "tests")
    again = harness.api("PUT", f"/v1/blacklist/{N1}", json={"reason": "again"})
    assert again.status_code == 200
    assert again.json()["reason"] == "asked by phone, ticket 42"
    scoped = harness.api("PUT", f"/v1/blacklist/{N1}", json={"reason": "one channel", "channel": CHANNEL})
    assert scoped.status_code == 201 and len(scoped.json()["entries"]) == 2
    assert harness.api("GET", f"/v1/blacklist/{N1}").status_code == 200

    removed = harness.api("DELETE", f"/v1/blacklist/{N1}", json={"reason": "consent given, ticket 43"})
    assert removed.status_code == 200
    assert removed.json()["blacklisted"] is False
    assert sorted(e["channel"] or "" for e in removed.json()["removed"]) == ["", CHANNEL]
    assert harness.api("GET", f"/v1/blacklist/{N1}").status_code == 404
    gone = harness.api("DELETE", f"/v1/blacklist/{N1}?reason=twice")
    assert gone.status_code == 404 and gone.json()["error"] == "not_blacklisted"

    assert history(harness) == [
        (N1, None, "manual", "add", "tests", "asked by phone, ticket 42"),
        (N1, CHANNEL, "manual", "add", "tests", "one channel"),
        (N1, None, "manual", "remove", "tests", "consent given, ticket 43"),
        (N1, CHANNEL, "manual", "remove", "tests", "consent given, ticket 43"),
    ]
    # what changed nothing left no trace
    assert harness.rows("SELECT action, reason FROM blacklist_signals ORDER BY id") == [
        ("add", "asked by phone, ticket 42"), ("add", "one channel"), ("remove", "consent given, ticket 43")
    ]  # fmt: skip


def test_delete_lifts_keyword_and_platform_entries_too(harness: Harness) -> None:
    assert harness.post("uplink", uplink("T")).status_code == 200
    assert harness.post("status-report", report("m1", "SC:0016", to=N1)).status_code == 200
    response = harness.api("DELETE", f"/v1/blacklist/{N1}?reason=platform+lifted+it%2C+ticket+7")
    assert response.status_code == 200
    assert {e["source"] for e in response.json()["removed"]} == {"keyword", "platform"}
    assert entries(harness) == []
    # a later unsubscribe counts again
    assert harness.post("uplink", uplink("TD", sms_msg_id="u9")).status_code == 200
    assert [r[4] for r in entries(harness)] == ["u9"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "error"),
    [("PUT", f"/v1/blacklist/{N1}", {}, 400, "missing_field"),
     ("PUT", f"/v1/blacklist/{N1}", {"reason": "   "}, 400, "missing_field"),
     ("PUT", f"/v1/blacklist/{N1}", {"reason": "x" * 501}, 400, "invalid_field"),
     ("PUT", f"/v1/blacklist/{N1}", {"reason": "x", "channel": "c" * 22}, 400, "invalid_field"),
     ("PUT", "/v1/blacklist/+86151****6789", {"reason": "x"}, 400, "invalid_number"),
     ("DELETE", f"/v1/blacklist/{N1}", None, 400, "missing_field"),
     ("DELETE", "/v1/blacklist/nope?reason=x", None, 400, "invalid_number")],
)  # fmt: skip
def test_manual_care_refuses_bad_input(
    harness: Harness, method: str, path: str, body: object, status: int, error: str
) -> None:
    response = harness.api(method, path, json=body)
    assert (response.status_code, response.json()["error"]) == (status, error)
    assert harness.rows("SELECT count(*) FROM blacklist_signals") == [(0,)]


# --- the CLI -----------------------------------------------------------------------------------


def test_cli_add_check_list_remove(db_url: str, tmp_path: Path) -> None:
    env = service_env(tmp_path, db_url)
    added = cli("blacklist", "add", "8615112345678", "--by", "alice", "--reason", "ticket 1", env=env)
    assert added.stdout.strip() == f"{N1} blacklisted (every channel)"
    scoped = cli("blacklist", "add", N2, "--by", "alice", "--reason", "ticket 2", "--scope-channel", CHANNEL, env=env)
    assert "channel 10691002019" in scoped.stdout
    again = cli("blacklist", "add", N1, "--by", "bob", "--reason", "dup", env=env)
    assert "already" in again.stdout

    checked = cli("blacklist", "check", N1, "+8613712343774", env=env).stdout.splitlines()
    assert checked[0].startswith(f"{N1}\t*\tmanual\t") and checked[0].endswith("\talice\tticket 1")
    assert checked[1] == f"{N3}\tnot blacklisted"
    other = cli("blacklist", "check", N2, "--channel", OTHER_CHANNEL, env=env)
    assert other.stdout == f"{N2}\tnot blacklisted\n"
    listed = cli("blacklist", "list", env=env).stdout.splitlines()
    assert [line.split("\t")[:3] for line in listed] == [[N2, CHANNEL, "manual"], [N1, "*", "manual"]]

    removed = cli("blacklist", "remove", N1, "--by", "carol", "--reason", "consent", env=env)
    assert removed.stdout.startswith(f"removed {N1}")
    missing = cli("blacklist", "remove", N1, "--by", "carol", "--reason", "again", env=env, check=False)
    assert missing.returncode == 1 and "not blacklisted" in missing.stderr
    bad = cli("blacklist", "add", "+86151****6789", "--by", "x", "--reason", "y", env=env, check=False)
    assert bad.returncode == 1 and "no phone number" in bad.stderr
    rows = run(fetch(db_url, "SELECT number, action, actor, reason FROM blacklist_history ORDER BY id"))
    assert [tuple(r) for r in rows] == [
        (N1, "add", "alice", "ticket 1"), (N2, "add", "alice", "ticket 2"), (N1, "remove", "carol", "consent")
    ]  # fmt: skip


def test_cli_export_import_round_trip(harness: Harness, empty_db_url: str, tmp_path: Path) -> None:
    assert harness.post("uplink", uplink("退订")).status_code == 200
    assert harness.post("status-report", report("m1", "TDBLACK", to=N2)).status_code == 200
    put = harness.api("PUT", f"/v1/blacklist/{N3}", json={"reason": "ticket 9, \"quoted\"", "channel": CHANNEL})
    assert put.status_code == 201
    harness.settle()
    exported = tmp_path / "out.csv"
    cli("blacklist", "export", str(exported), env=service_env(tmp_path, harness.url))
    rows = list(csv.DictReader(io.StringIO(exported.read_text())))
    assert [(r["number"], r["channel"], r["source"], r["reason"]) for r in rows] == [
        (N2, "", "platform", "status TDBLACK"), (N3, CHANNEL, "manual", 'ticket 9, "quoted"'),
        (N1, "", "keyword", "replied '退订'"),
    ]  # fmt: skip
    assert cli("blacklist", "export", env=service_env(tmp_path, harness.url)).stdout == exported.read_text()

    other = service_env(tmp_path, empty_db_url)
    imported = cli("blacklist", "import", str(exported), "--by", "migration", env=other)
    assert imported.stdout.strip() == "imported 3 row(s): 3 new entries"
    again = cli("blacklist", "import", str(exported), "--by", "migration", env=other)
    assert again.stdout.strip() == "imported 3 row(s): 0 new entries"
    reimported = tmp_path / "again.csv"
    cli("blacklist", "export", str(reimported), env=other)
    back = list(csv.DictReader(io.StringIO(reimported.read_text())))
    assert sorted((r["number"], r["channel"], r["reason"]) for r in back) == sorted(
        (r["number"], r["channel"], r["reason"]) for r in rows
    )
    assert {(r["source"], r["added_by"]) for r in back} == {("manual", "migration")}
    count = run(fetch(empty_db_url, "SELECT count(*) AS n FROM blacklist_signals"))[0]["n"]
    assert count == 3  # the second import recorded nothing


def test_cli_import_plain_lists_and_refuses_bad_rows(db_url: str, tmp_path: Path) -> None:
    env = service_env(tmp_path, db_url)
    plain = tmp_path / "plain.csv"
    plain.write_text("\ufeff8615112345678\n+8613112345678,10691002019,complaint\n\n", encoding="utf-8")
    done = cli("blacklist", "import", str(plain), "--by", "ops", "--reason", "legacy list", env=env)
    assert done.stdout.strip() == "imported 2 row(s): 2 new entries"
    rows = run(fetch(db_url, "SELECT number, channel, reason, added_by FROM blacklist ORDER BY number"))
    assert [tuple(r) for r in rows] == [(N2, CHANNEL, "complaint", "ops"), (N1, None, "legacy list", "ops")]
    bad = tmp_path / "bad.csv"
    bad.write_text("number,reason\n+8613712343774,ok\n+86151****6789,masked\n")
    refused = cli("blacklist", "import", str(bad), "--by", "ops", env=env, check=False)
    assert refused.returncode == 1
    assert "line 3" in refused.stderr and "nothing imported" in refused.stderr
    assert run(fetch(db_url, "SELECT count(*) AS n FROM blacklist"))[0]["n"] == 2


# --- rebuilding ---------------------------------------------------------------------------------

SNAPSHOT = "SELECT number, channel, source, reason, sms_msg_id, added_by, added_at FROM blacklist ORDER BY 1, 2, 3"


@pytest.mark.parametrize("scope", ["all", "channel"])
def test_rebuild_from_the_stored_events_gives_the_same_list(db_url: str, tmp_path: Path, scope: str) -> None:
    settings = {"resubscribe_keywords": "START", "blacklist_scope": scope}
    with serving(db_url, tmp_path, **settings) as h:
        posts = [
            uplink("T", sender=N1, sms_msg_id="u1"),
            uplink("Thanks", sender=N2, sms_msg_id="u2"),
            uplink("退订", sender=N2, sms_msg_id="u3", channel=OTHER_CHANNEL),
            uplink("START", sender=N2, sms_msg_id="u4", channel=OTHER_CHANNEL),
            uplink("td", sender="+8618912345678", sms_msg_id="u5"),
            uplink("T", sender="+86151****6789", sms_msg_id="u6"),
        ]
        for body in posts:
            assert h.post("uplink", body).status_code == 200
        assert h.post("status-report", report("m1", "SC:0016", to=N3)).status_code == 200
        assert h.post("status-report", report("m2", "MBBLACK")).status_code == 200
        assert h.post("status-report", report("m3", "BLACK")).status_code == 200
        h.settle()
        run(register_send(db_url, "m2", "+8613912345678", settings=Settings(**settings)))  # type: ignore[arg-type]
        assert h.api("PUT", "/v1/blacklist/+8617712345678", json={"reason": "by hand"}).status_code == 201
        assert h.api("DELETE", "/v1/blacklist/+8618912345678", json={"reason": "consent"}).status_code == 200
        before = h.rows(SNAPSHOT)
        assert {r[0] for r in before} == {N1, N3, "+8613912345678", "+8617712345678"}

        env = service_env(tmp_path, db_url, RECEIVER_RESUBSCRIBE_KEYWORDS="START", RECEIVER_BLACKLIST_SCOPE=scope)
        unchanged = cli("blacklist", "rebuild", env=env)
        assert unchanged.stdout.startswith("rebuilt: 4 entries; 0 added, 0 removed")
        assert h.rows(SNAPSHOT) == before

        run(fetch(db_url, "DELETE FROM blacklist"))
        run(fetch(db_url, "DELETE FROM blacklist_signals WHERE source <> 'manual'"))
        rebuilt = cli("blacklist", "rebuild", env=env)
        assert rebuilt.stdout.startswith("rebuilt: 4 entries; 4 added, 0 removed")
        assert h.rows(SNAPSHOT) == before
        assert h.rows("SELECT count(*) FROM blacklist_history WHERE actor = 'rebuild'") == [(4,)]


def test_rebuild_applies_changed_keywords(harness: Harness, tmp_path: Path) -> None:
    assert harness.post("uplink", uplink("T")).status_code == 200
    assert harness.post("uplink", uplink("STOP", sender=N2, sms_msg_id="u2")).status_code == 200
    harness.settle()
    env = service_env(tmp_path, harness.url, RECEIVER_OPTOUT_KEYWORDS="STOP")
    out = cli("blacklist", "rebuild", env=env).stdout
    assert out.startswith("rebuilt: 1 entry; 1 added, 1 removed")
    assert [r[0] for r in entries(harness)] == [N2]
    assert harness.rows("SELECT number, action, actor FROM blacklist_history WHERE actor = 'rebuild' ORDER BY id") == [
        (N1, "remove", "rebuild"), (N2, "add", "rebuild")
    ]  # fmt: skip


# --- the pure fold, where HTTP cannot reach ------------------------------------------------------

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_manual_removal_outweighs_earlier_events_that_arrive_later() -> None:
    removal = Signal(N1, "remove", "manual", None, "consent", T0 + timedelta(minutes=10), actor="alice", id=1)
    late = Signal(N1, "add", "platform", None, "status BLACK", T0 + timedelta(minutes=5), report_id=7)
    later = Signal(N1, "add", "keyword", CHANNEL, "replied 'T'", T0 + timedelta(minutes=15), uplink_id=3)
    assert fold([removal, late], "all").entries == {}
    assert list(fold([later, removal, late], "all").entries) == [(N1, None, "keyword")]
    assert list(fold([later, removal, late], "channel").entries) == [(N1, CHANNEL, "keyword")]


# --- kill -9 --------------------------------------------------------------------------------------


def get_with_key(service: Service, path: str, key: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {key}"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_an_unsubscribe_survives_kill_9_before_the_writer_ran(own_pg: OwnPostgres, tmp_path: Path) -> None:
    env = service_env(tmp_path / "data", own_pg.url)
    token = create_app_token(env)["token"]
    key = json.loads(cli("apikey", "create", "sender", "--json", env=env).stdout)["key"]
    service = Service(env, workers=1).start()
    try:
        own_pg.stop()  # the writer cannot store anything: the reply is in the journal only
        status, _ = service.post_form(f"/callbacks/{token}/uplink", uplink("退订"))
        assert status == 200
        service.kill9()
        own_pg.start()
        service.start()
        assert wait_for(lambda: get_with_key(service, f"/v1/blacklist/{N1}", key)[0] == 200, timeout=60)
        found = json.loads(get_with_key(service, f"/v1/blacklist/{N1}", key)[1])
        assert (found["number"], found["source"], found["sms_msg_id"]) == (N1, "keyword", "u1")
        rows = run(fetch(own_pg.url, "SELECT count(*) AS n FROM uplinks"))
        assert rows[0]["n"] == 1  # and the reply itself is stored as an ordinary uplink
    finally:
        service.stop()
