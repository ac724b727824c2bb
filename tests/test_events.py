"""The event feed (/v1/events): what downstream services see happen, as pages and as a live stream."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import uvicorn
from support import (
    Harness,
    OwnPostgres,
    Service,
    all_stored,
    cli,
    create_app_token,
    free_port,
    run,
    service_env,
    until,
    wait_for,
)

from receiver import apikeys, applications
from receiver.config import Settings
from receiver.correlation.queries import encode_cursor
from receiver.events import feed as events_feed
from receiver.events.hub import Hub
from receiver.http import events as events_http
from receiver.http.app import create_app

NUMBER = "+8613712343774"
SEND = {"result": [{"createTime": "2024-11-22T02:16:46Z", "from": "csms100000001", "originTo": NUMBER,
                    "smsMsgId": "m1", "status": "000000", "total": 1}]}  # fmt: skip


def report_body(sms_msg_id: str, status: str = "DELIVRD", when: str = "2024-11-22T02%3A16%3A50Z") -> str:
    return f"smsMsgId={sms_msg_id}&status={status}&sequence=1&total=1&updateTime={when}&source=2"


def uplink_body(sms_msg_id: str, sender: str = NUMBER, body: str = "ok") -> str:
    return f"smsMsgId={sms_msg_id}&from=%2B{sender.lstrip('+')}&to=csms100000001&body={body}" \
           "&createTime=2024-11-22T02%3A20%3A00Z"  # fmt: skip


# Each stored in a transaction of its own (the writer would batch events that come together, and
# a transaction's events come in this order: reports, states, replies, opt-outs and opt-ins).
def report(
    harness: Harness, sms_msg_id: str, status: str = "DELIVRD", when: str = "2024-11-22T02%3A16%3A50Z"
) -> None:
    assert harness.post("status-report", report_body(sms_msg_id, status, when)).status_code == 200
    harness.settle()


def uplink(harness: Harness, sms_msg_id: str, sender: str = NUMBER, body: str = "ok") -> None:
    assert harness.post("uplink", uplink_body(sms_msg_id, sender, body)).status_code == 200
    harness.settle()


def feed(harness: Harness, **params: str) -> dict[str, Any]:
    response = harness.api("GET", "/v1/events", params=params)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


def kinds(events: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(e["kind"], e["sms_msg_id"]) for e in events]


# --- pages ------------------------------------------------------------------------------------


def test_each_happening_is_one_event_in_order_and_duplicates_add_none(harness: Harness) -> None:
    harness.api("POST", "/v1/sent", json=SEND)
    report(harness, "m1", "DELIVRD")
    report(harness, "m1", "DELIVRD")  # the platform pushes it again: nothing new
    report(harness, "m1", "DELIVRD", "2024-11-22T02%3A16%3A59Z")  # a new report, but the state stays
    uplink(harness, "r1", body="T")  # an unsubscribe reply
    uplink(harness, "r1", body="T")
    harness.api("POST", "/v1/sent", json=SEND)  # registered twice: no state change
    lifted = harness.api("DELETE", f"/v1/blacklist/{NUMBER}", params={"reason": "asked by phone"})
    assert lifted.status_code == 200
    events = feed(harness)["events"]
    assert kinds(events) == [
        ("state", "m1"), ("report", "m1"), ("state", "m1"), ("report", "m1"), ("reply", "r1"),
        ("optout", "r1"), ("optin", None),
    ]  # fmt: skip
    registered, delivered_report, delivered, _, reply, optout, optin = events
    assert registered["number"] == NUMBER
    assert registered["data"]["state"] == "pending" and registered["data"]["previous"] is None
    assert delivered_report["number"] == NUMBER
    assert delivered_report["data"]["status"] == "DELIVRD"
    assert delivered_report["data"]["update_time"] == "2024-11-22T02:16:50+00:00"
    assert delivered_report["data"]["application"] == "shop"
    assert (delivered["data"]["previous"], delivered["data"]["state"]) == ("pending", "delivered")
    assert delivered["data"]["parts"] == {"total": 1, "delivered": 1}
    assert delivered["data"]["latency_seconds"] == 4
    assert reply["number"] == NUMBER
    assert (reply["data"]["body"], reply["data"]["reply_to"], reply["data"]["to"]) == (
        "T",
        "m1",
        "csms100000001",
    )
    assert (optout["number"], optout["data"]["source"], optout["data"]["actor"]) == (
        NUMBER,
        "keyword",
        "recipient",
    )
    assert (optin["number"], optin["data"]["actor"], optin["data"]["reason"]) == (
        NUMBER,
        "tests",
        "asked by phone",
    )
    assert len({e["id"] for e in events}) == len(events)
    assert all(e["at"].endswith("+00:00") for e in events)


def test_a_first_state_is_an_event_and_registering_later_changes_nothing(harness: Harness) -> None:
    report(harness, "m1", "UNDELIV")  # before its send is registered: the state is already failed
    harness.api("POST", "/v1/sent", json=SEND)
    events = feed(harness)["events"]
    assert kinds(events) == [("report", "m1"), ("state", "m1")]
    assert events[1]["data"]["state"] == "failed"
    assert events[0]["number"] == NUMBER  # the report has no `to`: its registered send's, when read


def test_a_reply_is_announced_again_once_the_send_it_answers_is_registered(harness: Harness) -> None:
    uplink(harness, "r1")  # the reply comes before its send is registered: it answers nothing yet
    harness.api("POST", "/v1/sent", json=SEND)
    harness.api("POST", "/v1/sent", json=SEND)  # registered again: the link stays, nothing announced
    events = feed(harness)["events"]
    assert kinds(events) == [("reply", "r1"), ("state", "m1"), ("reply", "r1")]
    first, _, linked = events
    assert (first["data"]["reply_to"], linked["data"]["reply_to"]) == (None, "m1")
    assert linked["number"] == NUMBER and linked["data"]["body"] == "ok" and not linked["data"]["ambiguous"]


def send_at(sms_msg_id: str, create_time: str) -> dict[str, Any]:
    return {"result": [{**SEND["result"][0], "smsMsgId": sms_msg_id, "createTime": create_time}]}


def test_a_reply_is_announced_again_only_when_its_answer_or_ambiguity_changes(harness: Harness) -> None:
    harness.api("POST", "/v1/sent", json=send_at("m1", "2024-11-22T02:10:00Z"))
    uplink(harness, "r1")  # at 02:20: answers m1
    harness.api("POST", "/v1/sent", json=send_at("m2", "2024-11-22T02:15:00Z"))  # now m2, of two
    harness.api("POST", "/v1/sent", json=send_at("m0", "2024-11-22T02:00:00Z"))  # still m2, of three
    replies = feed(harness, kinds="reply")["events"]
    assert [(e["data"]["reply_to"], e["data"]["ambiguous"]) for e in replies] == [("m1", False), ("m2", True)]
    assert harness.rows("SELECT sms_msg_id, candidates FROM reply_links") == [("m2", 3)]


def test_pages_follow_the_cursor_without_gaps_or_repeats(harness: Harness) -> None:
    for i in range(7):
        report(harness, f"p{i}", "UNDELIV" if i % 2 else "DELIVRD")
    everything = feed(harness)["events"]
    assert len(everything) == 14
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(20):
        page = feed(harness, limit="3", **({"after": cursor} if cursor else {}))
        assert len(page["events"]) <= 3
        seen += page["events"]
        if page["next"] == cursor:
            break
        cursor = page["next"]
    assert seen == everything
    assert cursor is not None
    assert feed(harness, after=cursor)["events"] == []
    assert (
        feed(harness, after=everything[-2]["id"])["events"] == everything[-1:]
    )  # an event's id is a cursor too
    report(harness, "later")
    assert kinds(feed(harness, after=cursor)["events"]) == [("report", "later"), ("state", "later")]


def test_kinds_filter_and_its_cursor_moves_past_the_others(harness: Harness) -> None:
    report(harness, "m1")
    uplink(harness, "r1", body="T")
    uplink(harness, "r2", "+8613100000002", "hello")
    only = feed(harness, kinds="reply,optout")
    assert kinds(only["events"]) == [("reply", "r1"), ("optout", "r1"), ("reply", "r2")]
    assert kinds(feed(harness, kinds="state")["events"]) == [("state", "m1")]
    assert kinds(feed(harness, kinds="optin")["events"]) == []
    past = feed(harness, kinds="optin")["next"]
    report(harness, "m2")
    assert kinds(feed(harness, after=past)["events"]) == [("report", "m2"), ("state", "m2")]


def test_after_now_starts_at_the_end(harness: Harness) -> None:
    report(harness, "before")
    start = feed(harness, after="now")
    assert start["events"] == []
    report(harness, "after")
    assert kinds(feed(harness, after=start["next"])["events"]) == [("report", "after"), ("state", "after")]


def test_an_event_that_commits_late_is_not_skipped(harness: Harness) -> None:
    """A transaction that began first but commits last: its events come after the cursor of
    whoever read the others meanwhile, never behind it."""
    loop = asyncio.new_event_loop()
    slow = loop.run_until_complete(asyncpg.connect(harness.url))
    try:
        transaction = slow.transaction()
        loop.run_until_complete(transaction.start())
        loop.run_until_complete(slow.execute(
            """INSERT INTO blacklist_history (number, source, action, actor, reason)
               VALUES ('+8613100000009', 'manual', 'add', 'slow', 'a long transaction')"""))  # fmt: skip
        report(harness, "quick")  # commits while the slow one runs
        page = feed(harness)
        assert page["events"] == []  # held back, not skipped
        loop.run_until_complete(transaction.commit())
        later = feed(harness, after=page["next"])
        assert kinds(later["events"]) == [("optout", None), ("report", "quick"), ("state", "quick")]
    finally:
        loop.run_until_complete(slow.close())
        loop.close()


def test_events_need_an_api_key(harness: Harness) -> None:
    for path in ("/v1/events", "/v1/events/stream"):
        response = harness.client.get(path)
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"
        assert harness.client.get(path, headers={"Authorization": "Bearer rcv_nope"}).status_code == 401


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"after": "bad"}, "invalid_cursor"),
        ({"after": encode_cursor("0", 5)}, "invalid_cursor"),  # the uplinks feed's cursor
        ({"after": encode_cursor("ev", "-1", 5)}, "invalid_cursor"),
        ({"after": encode_cursor("ev", "1", "x")}, "invalid_cursor"),
        ({"after": base64.urlsafe_b64encode(b"[" * 5000).decode()}, "invalid_cursor"),  # too deep to decode
        ({"after": encode_cursor("ev", "٣٣", 1)}, "invalid_cursor"),  # digits, but not ASCII ones
        ({"after": encode_cursor("ev", "99999999999999999999", 1)}, "invalid_cursor"),  # over 2**64
        ({"after": encode_cursor("ev", "010", 1)}, "invalid_cursor"),  # PostgreSQL would read it as 8
        ({"limit": "0"}, "invalid_field"),
        ({"limit": "1001"}, "invalid_field"),
        ({"kinds": "report,gossip"}, "invalid_field"),
    ],
)
def test_bad_parameters_get_400_json(harness: Harness, params: dict[str, str], error: str) -> None:
    response = harness.api("GET", "/v1/events", params=params)
    assert response.status_code == 400
    assert response.json()["error"] == error
    if "limit" not in params:  # a stream has no limit
        stream = harness.api("GET", "/v1/events/stream", params=params)
        assert stream.status_code == 400
        assert stream.json()["error"] == error


def test_bad_last_event_id_gets_400_before_any_stream(harness: Harness) -> None:
    response = harness.api("GET", "/v1/events", headers={"Accept": "text/event-stream", "Last-Event-ID": "x"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_cursor"


# --- live streams -----------------------------------------------------------------------------


@dataclass
class Live:
    """The application served by uvicorn in a thread of the test process: streams are real, and
    the worker's state can be looked at."""

    server: uvicorn.Server
    app: Any
    port: int
    token: str
    key: str
    url: str

    def post(self, endpoint: str, body: str) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("POST", f"/callbacks/{self.token}/{endpoint}", body.encode(),
                         {"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
            assert conn.getresponse().status == 200
        finally:
            conn.close()
        state = self.app.state  # stored in a transaction of its own, as in the tests above
        assert wait_for(
            lambda: not state.journal._flushing and all_stored(state.settings.journal_path), timeout=30, interval=0.01
        )

    def stream(self, path: str = "/v1/events", **headers: str) -> Stream:
        return Stream(
            self.port, path, {"Authorization": f"Bearer {self.key}", "Accept": "text/event-stream", **headers}
        )

    @property
    def hub(self) -> Hub:
        hub: Hub = self.app.state.events_hub
        return hub


class Stream:
    """A Server-Sent Events client: reads frames as they come."""

    def __init__(self, port: int, path: str, headers: dict[str, str]) -> None:
        self.conn = http.client.HTTPConnection(
            "127.0.0.1", port, timeout=60
        )  # a safety net, not a speed check
        self.conn.request("GET", path, headers=headers)
        self.response = self.conn.getresponse()
        assert self.response.status == 200, self.response.read()
        assert self.response.getheader("Content-Type", "").startswith("text/event-stream")
        assert self.frame() == {"retry": "1000"}  # how soon to reconnect after a drop

    def frame(self) -> dict[str, str] | None:
        """The next frame with fields (comments skipped); None at the end of the stream."""
        fields: dict[str, str] = {}
        while True:
            line = self.response.readline()
            if not line:
                return None
            text = line.decode().rstrip("\n")
            if text == "":
                if fields:
                    return fields
                continue
            if text.startswith(":"):
                continue
            name, _, value = text.partition(":")
            fields[name] = value.removeprefix(" ")

    def events(self, n: int) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        while len(found) < n:
            fields = self.frame()
            assert fields is not None, "the stream ended"
            if "data" in fields:
                event = json.loads(fields["data"])
                assert (fields["id"], fields["event"]) == (event["id"], event["kind"])
                found.append(event)
        return found

    def close(self) -> None:
        self.conn.close()


@contextlib.contextmanager
def live_server(db_url: str, data_dir: Path) -> Iterator[Live]:
    async def make() -> tuple[str, str]:
        conn = await asyncpg.connect(db_url)
        try:
            _, token = await applications.create(conn, "shop", ["csms100000001"])
            return token, await apikeys.create(conn, "tests")
        finally:
            await conn.close()

    token, key = run(make())
    app = create_app(Settings(database_url=db_url, data_dir=data_dir, log_format="json"))
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="warning",
                            timeout_graceful_shutdown=5)  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_for(lambda: server.started or not thread.is_alive(), timeout=60) and server.started
    try:
        yield Live(server, app, port, token, key, db_url)
    finally:
        server.should_exit = True
        thread.join(timeout=60)


@pytest.fixture
def live(db_url: str, tmp_path: Path) -> Iterator[Live]:
    with live_server(db_url, tmp_path) as served:
        yield served


def test_a_stream_gets_events_committed_after_it_opened_and_resumes_after_last_event_id(live: Live) -> None:
    live.post("status-report", report_body("before"))
    stream = live.stream()
    first = stream.events(2)
    assert kinds(first) == [("report", "before"), ("state", "before")]
    live.post("status-report", report_body("m1"))
    live.post("uplink", uplink_body("r1", body="T"))
    seen = stream.events(4)
    assert kinds(seen) == [("report", "m1"), ("state", "m1"), ("reply", "r1"), ("optout", "r1")]
    stream.close()
    assert wait_for(lambda: live.hub.subscribers == 0, timeout=30), (
        "a client that left still has a subscription"
    )

    live.post("status-report", report_body("missed", "UNDELIV"))  # while nobody listens
    resumed = live.stream(
        "/v1/events/stream?after=ignored-when-last-event-id-is-given", **{"Last-Event-ID": seen[-1]["id"]}
    )
    assert kinds(resumed.events(2)) == [("report", "missed"), ("state", "missed")]
    live.post("status-report", report_body("sentinel"))
    assert kinds(resumed.events(2)) == [
        ("report", "sentinel"),
        ("state", "sentinel"),
    ]  # and nothing in between
    resumed.close()
    again = live.stream(f"/v1/events/stream?after={first[-1]['id']}")  # or from any event of the past
    assert kinds(again.events(4)) == kinds(seen)
    again.close()


def test_a_stream_polls_while_an_older_transaction_held_its_event_back(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction that began before an event holds it back from pages. When it ends, with no
    NOTIFY of its own, just after the page that could not show the event, the stream still reads
    again within a second or so, not only at its 15 s heartbeat: the page and the check of what
    is held back see one snapshot."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    def on_loop(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

    blocker = on_loop(asyncpg.connect(live.url))
    on_loop(blocker.execute("BEGIN; SELECT pg_current_xact_id()"))  # a write transaction's id, older than the event's
    original = events_feed.held_back

    async def held_back_after_the_blocker_ends(conn: asyncpg.Connection) -> bool:
        committed: bool = await conn.fetchval("SELECT EXISTS (SELECT FROM events WHERE sms_msg_id = 'm1')")
        if committed and not blocker.is_closed():  # the page just read could not show it
            await asyncio.to_thread(on_loop, blocker.close())  # the blocker ends before this check
        return await original(conn)

    monkeypatch.setattr(events_feed, "held_back", held_back_after_the_blocker_ends)
    try:
        stream = live.stream()
        live.post("status-report", report_body("m1"))  # committed while the blocker runs: held back
        started = time.monotonic()
        assert kinds(stream.events(2)) == [("report", "m1"), ("state", "m1")]
        assert time.monotonic() - started < events_http.HEARTBEAT_SECONDS / 2
        stream.close()
    finally:
        if not blocker.is_closed():
            on_loop(blocker.close())
        loop.call_soon_threadsafe(loop.stop)


def test_a_stream_filters_kinds_and_can_start_now(live: Live) -> None:
    live.post("uplink", uplink_body("old", body="T"))
    stream = live.stream("/v1/events?after=now&kinds=optout,optin")
    live.post("status-report", report_body("m1"))
    live.post("uplink", uplink_body("r2", "+8613100000002", "TD"))
    [event] = stream.events(1)
    assert (event["kind"], event["sms_msg_id"], event["number"]) == ("optout", "r2", "+8613100000002")
    stream.close()


def test_streams_end_with_the_worker_and_leave_nothing_behind(live: Live) -> None:
    live.hub.exit_flag = lambda: (
        live.server.should_exit
    )  # what SIGTERM sets (in a thread uvicorn takes no signals)
    streams = [live.stream() for _ in range(3)]
    assert wait_for(lambda: live.hub.subscribers == 3 and live.hub.listening, timeout=30)
    streams[0].close()
    assert wait_for(lambda: live.hub.subscribers == 2, timeout=30), (
        "a client that left still has a subscription"
    )
    pool = live.app.state.pool
    assert wait_for(lambda: pool.get_idle_size() == pool.get_size(), timeout=30), (
        "a stream holds a connection"
    )
    live.server.should_exit = True
    for stream in streams[1:]:
        assert stream.frame() is None  # ended cleanly
        stream.close()
    assert live.hub.closed and live.hub.subscribers == 0


def test_an_idle_stream_sends_keep_alive_comments(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    from receiver.http import events

    monkeypatch.setattr(events, "HEARTBEAT_SECONDS", 0.1)
    stream = live.stream()
    assert stream.response.readline() == b": keep-alive\n"
    stream.close()


def test_without_its_listen_connection_a_stream_polls_and_misses_nothing(live: Live) -> None:
    live.hub.dsn = "postgresql://nobody@127.0.0.1:1/nowhere"  # LISTEN never connects; the pool does
    stream = live.stream()
    live.post("status-report", report_body("m1"))
    live.post("uplink", uplink_body("r1"))
    assert kinds(stream.events(3)) == [("report", "m1"), ("state", "m1"), ("reply", "r1")]
    assert not live.hub.listening
    stream.close()


def test_the_hub_wakes_streams_on_commit_and_comes_back_after_postgres_restarts(own_pg: OwnPostgres) -> None:
    from receiver.db import migrate

    async def scenario() -> None:
        conn = await asyncpg.connect(own_pg.url)
        await migrate.apply(conn)
        hub = Hub(own_pg.url, poll_seconds=0.2, check_seconds=0.5, exit_flag=None)
        subscription = hub.subscribe()
        try:
            assert await until(lambda: hub.listening, timeout=60, interval=0.05)
            await subscription.wait(0)  # the catch-up ring of a new connection
            await conn.execute("INSERT INTO blacklist_history (number, source, action, actor, reason) "
                               "VALUES ('+8613100000009', 'manual', 'add', 'tests', 'x')")  # fmt: skip
            assert await subscription.wait(30), "no wake-up for a commit"
            await conn.close()
            own_pg.stop()
            assert await until(lambda: not hub.listening, timeout=60, interval=0.05)
            own_pg.start()
            assert await until(lambda: hub.listening, timeout=60, interval=0.05)
            await subscription.wait(0)
            conn = await asyncpg.connect(own_pg.url)
            await conn.execute("SELECT pg_notify('receiver_events', '')")
            assert await subscription.wait(30), "no wake-up after PostgreSQL came back"
        finally:
            subscription.close()
            await hub.close()
            await conn.close()

    run(scenario())


def test_sigterm_ends_open_streams_and_the_service_exits_0(db_url: str, tmp_path: Path) -> None:
    env = service_env(tmp_path / "data", db_url)
    token = create_app_token(env)["token"]
    key = json.loads(cli("apikey", "create", "tests", "--json", env=env).stdout)["key"]
    service = Service(env, workers=2).start()
    try:
        streams = [
            Stream(service.port, "/v1/events/stream", {"Authorization": f"Bearer {key}"}) for _ in range(3)
        ]
        assert service.post_form(f"/callbacks/{token}/status-report", report_body("m1"))[0] == 200
        for stream in streams:
            assert kinds(stream.events(2)) == [("report", "m1"), ("state", "m1")]
        assert service.terminate() == 0
        for stream in streams:
            assert stream.frame() is None
            stream.close()
        assert "timeout graceful shutdown exceeded" not in service.log.read_text()
    finally:
        service.stop()
