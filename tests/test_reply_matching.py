"""Which message a reply answers, by which rule, and how sure: over every order of arrival.

A user's view: sends registered through POST /v1/sent, replies pushed to an application's uplink
URL, reply numbers given to applications; then the link as GET /v1/uplinks, GET
/v1/messages/{id} and the event feed show it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from starlette.testclient import TestClient
from support import Harness, fetch, run

from receiver import apikeys, applications, cli
from receiver.config import Settings
from receiver.correlation import links
from receiver.http.app import create_app

SHOP_CHANNEL = "csms100000001"  # the harness's application "shop" lists it
CONSOLE = "csms12345678"  # a channel number no application lists
WINDOW = timedelta(hours=72)
SENT_AT = "2024-11-22T02:16:46Z"
REPLY_AT = "2024-11-22T02:20:00Z"


@dataclass(frozen=True)
class World:
    harness: Harness
    tokens: dict[str, str]  # application -> callback token
    keys: dict[str, str]  # "tests" (no application), "shop", "bank" (scoped) -> API key


@pytest.fixture
def world(db_url: str, tmp_path: Path) -> Iterator[World]:
    """The service with two applications, shop (channel csms100000001) and bank, an API key of no
    application and one scoped to each, all made before it starts (its caches load them then)."""

    async def make() -> tuple[dict[str, str], dict[str, str]]:
        conn = await asyncpg.connect(db_url)
        try:
            _, shop = await applications.create(conn, "shop", [SHOP_CHANNEL])
            _, bank = await applications.create(conn, "bank", ["csms200000002"])
            keys = {"tests": await apikeys.create(conn, "tests")}
            for app in ("shop", "bank"):
                keys[app] = await apikeys.create(conn, f"{app}-key", app)
            return {"shop": shop, "bank": bank}, keys
        finally:
            await conn.close()

    tokens, keys = run(make())
    settings = Settings(database_url=db_url, data_dir=tmp_path, log_format="json")
    with TestClient(create_app(settings)) as client:
        yield World(Harness(client, tokens["shop"], db_url, keys["tests"]), tokens, keys)


# --- steps: each one thing a user does; {i} in numbers and ids keeps each order apart ---------


@dataclass(frozen=True)
class Send:
    id: str
    from_: str
    at: str = SENT_AT
    key: str = "tests"
    application: str | None = None


@dataclass(frozen=True)
class Reply:
    to: str
    app: str = "shop"
    body: str = "ok"


@dataclass(frozen=True)
class ReplyNumber:
    app: str
    number: str


Step = Send | Reply | ReplyNumber


def sender(i: int) -> str:
    return f"+86137123400{i:02d}"


def send(world: World, step: Send, i: int, number: str | None = None) -> None:
    item = {"createTime": step.at, "from": step.from_, "originTo": number or sender(i),
            "smsMsgId": f"{step.id}-{i}", "status": "000000"}  # fmt: skip
    body: dict[str, Any] = {"result": [item]}
    if step.application:
        body["application"] = step.application
    world.harness.settle()
    response = world.harness.client.post(
        "/v1/sent", json=body, headers={"Authorization": f"Bearer {world.keys[step.key]}"}
    )
    assert response.status_code == 200, response.text


def reply(world: World, step: Reply, i: int, number: str | None = None) -> None:
    form = (f"smsMsgId=r1-{i}&from=%2B{(number or sender(i)).lstrip('+')}&to={step.to.format(i=i)}"
            f"&body={step.body}&createTime={REPLY_AT.replace(':', '%3A')}")  # fmt: skip
    assert world.harness.post("uplink", form, token=world.tokens[step.app]).status_code == 200
    world.harness.settle()


def reply_number(world: World, step: ReplyNumber, i: int) -> None:
    async def add() -> None:
        conn = await asyncpg.connect(world.harness.url)
        try:
            assert await applications.change_reply_numbers(conn, step.app, [step.number.format(i=i)], [], WINDOW)
        finally:
            await conn.close()

    world.harness.settle()
    run(add())


def do(world: World, step: Step, i: int) -> None:
    if isinstance(step, Send):
        send(world, step, i)
    elif isinstance(step, Reply):
        reply(world, step, i)
    else:
        reply_number(world, step, i)


def orders(steps: list[Step]) -> list[tuple[Step, ...]]:
    """Every order of up to three steps; of more, as listed and reversed."""
    if len(steps) <= 3:
        return list(itertools.permutations(steps))
    return [tuple(steps), tuple(reversed(steps))]


def link_of(world: World, i: int) -> tuple[str | None, str | None, int, str | None]:
    """The reply's link as GET /v1/uplinks shows it, checked against the other two places."""
    uplinks = world.harness.api("GET", "/v1/uplinks", params={"limit": "500"}).json()["uplinks"]
    [item] = [u for u in uplinks if u["sms_msg_id"] == f"r1-{i}"]
    shown = (item["reply_to"], item["match"], item["candidates"], item["unlinked_reason"])
    assert item["ambiguous"] == (item["candidates"] > 1)
    if item["reply_to"]:
        message = world.harness.api("GET", f"/v1/messages/{item['reply_to']}").json()
        [answer] = [r for r in message["replies"] if r["sms_msg_id"] == f"r1-{i}"]
        assert (answer["match"], answer["candidates"], answer["unlinked_reason"]) == shown[1:]
    events = world.harness.api("GET", "/v1/events", params={"kinds": "reply", "limit": "1000"}).json()["events"]
    last = [e["data"] for e in events if e["sms_msg_id"] == f"r1-{i}"][-1]
    assert (last["reply_to"], last["match"], last["unlinked_reason"]) == (shown[0], shown[1], shown[3])
    reply_to = item["reply_to"].rsplit("-", 1)[0] if item["reply_to"] else None
    return reply_to, item["match"], item["candidates"], item["unlinked_reason"]


EARLIER = "2024-11-22T02:00:00Z"
LATER = "2024-11-22T02:10:00Z"
REPLY_NUMBER = "106910{i}2019"  # what recipients see; the platform may append extension digits

SCENARIOS: dict[str, tuple[list[Step], tuple[str | None, str | None, int, str | None]]] = {
    "the documented channel rule": (
        [Send("m1", SHOP_CHANNEL), Reply(SHOP_CHANNEL)], ("m1", "channel", 1, None)),
    "the channel rule has no window": (
        [Send("m1", SHOP_CHANNEL, at="2024-10-01T00:00:00Z"), Reply(SHOP_CHANNEL)], ("m1", "channel", 1, None)),
    "the channel rule beats a later send of the application": (
        [Send("m1", SHOP_CHANNEL, at=EARLIER), Send("m2", CONSOLE, at=LATER, key="shop"), Reply(SHOP_CHANNEL)],
        ("m1", "channel", 1, None)),
    "a reply number with extension digits, whatever URL the reply came to": (
        [ReplyNumber("shop", REPLY_NUMBER), Send("m1", CONSOLE, key="shop"), Reply(REPLY_NUMBER + "123", app="bank")],
        ("m1", "reply_number", 1, None)),
    "the longest reply number wins": (
        [ReplyNumber("shop", "106910{i}"), ReplyNumber("bank", REPLY_NUMBER), Send("m1", CONSOLE, key="shop"),
         Send("m2", CONSOLE, at=EARLIER, key="bank"), Reply(REPLY_NUMBER + "7")],
        ("m2", "reply_number", 1, None)),
    "the application's send, by its scoped key": (
        [Send("m1", CONSOLE, key="shop"), Reply(REPLY_NUMBER)], ("m1", "application", 1, None)),
    "the application's send, named in the body": (
        [Send("m1", CONSOLE, application="shop"), Reply(REPLY_NUMBER)], ("m1", "application", 1, None)),
    "the application's send, by its channel": (
        [Send("m1", SHOP_CHANNEL), Reply(REPLY_NUMBER)], ("m1", "application", 1, None)),
    "a send of no application": (
        [Send("m1", CONSOLE), Reply(REPLY_NUMBER)], ("m1", "number", 1, None)),
    "two candidates: the latest, ambiguous": (
        [Send("m1", CONSOLE, at=EARLIER), Send("m2", CONSOLE, at=LATER), Reply(REPLY_NUMBER)],
        ("m2", "number", 2, None)),
    "outside the report window": (
        [Send("m1", CONSOLE, at="2024-11-19T02:19:59Z"), Reply(REPLY_NUMBER)], (None, None, 0, "outside_window")),
    "only another application's send": (
        [Send("m1", CONSOLE, key="bank"), Reply(REPLY_NUMBER)], (None, None, 0, "other_application")),
    "a send after the reply answers nothing": (
        [Send("m1", CONSOLE, at="2024-11-22T02:30:00Z"), Reply(REPLY_NUMBER)], (None, None, 0, "no_send")),
}  # fmt: skip


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_a_reply_links_the_same_whatever_the_order(world: World, name: str) -> None:
    steps, expected = SCENARIOS[name]
    every = orders(steps)
    for i, order in enumerate(every):
        for step in order:
            do(world, step, i)
    found = [link_of(world, i) for i in range(len(every))]
    assert found == [expected] * len(every), [(order, link) for order, link in zip(every, found, strict=True)]


def test_the_issue_as_reported_links_by_number_and_says_so(world: World) -> None:
    """A send answered from the console channel, a reply to the 106... number the demos show."""
    send(world, Send("m1", CONSOLE), 0, number="+8613800138000")
    reply(world, Reply("10691002019"), 0, number="+8613800138000")
    message = world.harness.api("GET", "/v1/messages/m1-0").json()
    assert [(r["sms_msg_id"], r["match"], r["candidates"], r["ambiguous"]) for r in message["replies"]] == [
        ("r1-0", "number", 1, False)
    ]


def test_a_reply_from_no_phone_number_says_so(world: World) -> None:
    send(world, Send("m1", SHOP_CHANNEL), 0)
    reply(world, Reply(SHOP_CHANNEL), 0, number="+86151****6789")  # a masked demo number
    [item] = world.harness.api("GET", "/v1/uplinks").json()["uplinks"]
    assert (item["reply_to"], item["match"], item["unlinked_reason"]) == (None, None, "invalid_number")


def test_opt_out_keywords_work_whatever_the_match(world: World) -> None:
    """The unsubscribe depends on the replying number only: one "T" linked by each rule, one by none."""
    replies: list[tuple[int, list[Step], Step, str | None]] = [
        (0, [Send("m1", SHOP_CHANNEL)], Reply(SHOP_CHANNEL, body="T"), "channel"),
        (1, [ReplyNumber("bank", REPLY_NUMBER), Send("m1", CONSOLE, key="bank")], Reply(REPLY_NUMBER + "5", body="T"),
         "reply_number"),
        (2, [Send("m1", CONSOLE, key="shop")], Reply(REPLY_NUMBER, body="T"), "application"),
        (3, [Send("m1", CONSOLE)], Reply(REPLY_NUMBER, body="T"), "number"),
        (4, [], Reply(REPLY_NUMBER, body="T"), None),
    ]  # fmt: skip
    for i, before, last, _ in replies:
        for step in [*before, last]:
            do(world, step, i)
    assert [link_of(world, i)[1] for i, *_ in replies] == [match for *_, match in replies]
    blacklisted = world.harness.rows("SELECT number, source FROM blacklist ORDER BY number")
    assert blacklisted == [(sender(i), "keyword") for i, *_ in replies]


def test_sends_belong_to_the_application_of_the_key_or_the_body(world: World) -> None:
    h = world.harness

    def register(key: str, sms_msg_id: str, application: str | None = None) -> Any:
        body: dict[str, Any] = {"result": [{"smsMsgId": sms_msg_id, "originTo": sender(0), "status": "000000"}]}
        if application is not None:
            body = {"response": body, "application": application}
        h.settle()
        return h.client.post("/v1/sent", json=body, headers={"Authorization": f"Bearer {world.keys[key]}"})

    assert register("shop", "by-key").status_code == 200
    assert register("tests", "by-body", "bank").status_code == 200
    assert register("bank", "both", "bank").status_code == 200
    assert register("tests", "none").status_code == 200
    refused = register("shop", "other", "bank")
    assert (refused.status_code, refused.json()["error"]) == (403, "application_not_allowed")
    unknown = register("tests", "unknown", "nope")
    assert (unknown.status_code, unknown.json()["error"]) == (400, "unknown_application")
    shown = {i: h.api("GET", f"/v1/messages/{i}").json()["application"] for i in ("by-key", "by-body", "both", "none")}
    assert shown == {"by-key": "shop", "by-body": "bank", "both": "bank", "none": None}
    assert h.api("GET", "/v1/messages/other").status_code == 404


def test_relink_applies_the_rules_to_history(world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """`receiver relink`: a wider report window links replies it could not; --since leaves older ones."""
    for i in (0, 1):
        send(world, Send("m1", CONSOLE, at="2024-11-18T00:00:00Z"), i)
        reply(world, Reply(REPLY_NUMBER), i)
    world.harness.rows("UPDATE uplinks SET received_at = received_at - interval '40 days' WHERE sms_msg_id = 'r1-1'")
    monkeypatch.setenv("RECEIVER_DATABASE_URL", world.harness.url)
    monkeypatch.setenv("RECEIVER_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RECEIVER_REPORT_WINDOW", "P7D")
    assert cli.main(["relink", "--since", "30d"]) == 0
    assert capsys.readouterr().out.strip() == "relinked 1 reply: 1 link(s) made or changed"
    assert [link_of(world, i)[1:] for i in (0, 1)] == [("number", 1, None), (None, 0, "outside_window")]
    assert cli.main(["relink"]) == 0
    assert capsys.readouterr().out.strip() == "relinked 2 replies: 1 link(s) made or changed"
    assert link_of(world, 1)[1] == "number"
    assert cli.main(["relink"]) == 0
    assert capsys.readouterr().out.strip() == "relinked 2 replies: 0 link(s) made or changed"


def test_relink_works_through_batches(world: World) -> None:
    for i in range(5):
        reply(world, Reply(REPLY_NUMBER), i)
    world.harness.rows("UPDATE reply_links SET unlinked_reason = 'other_application'")

    async def go() -> tuple[int, int]:
        conn = await asyncpg.connect(world.harness.url)
        try:
            return await links.relink(conn, WINDOW, batch_size=2)
        finally:
            await conn.close()

    assert run(go()) == (5, 5)
    assert {link_of(world, i)[3] for i in range(5)} == {"no_send"}


def test_reply_numbers_from_the_command_line(world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """app reply-numbers adds, removes and refuses; the replies they concern are linked again."""
    send(world, Send("m1", CONSOLE, key="bank"), 0)
    reply(world, Reply("10691002019123"), 0)  # at shop's URL, to bank's number-to-be
    assert link_of(world, 0)[3] == "other_application"
    monkeypatch.setenv("RECEIVER_DATABASE_URL", world.harness.url)
    monkeypatch.setenv("RECEIVER_DATA_DIR", str(tmp_path))
    assert cli.main(["app", "reply-numbers", "bank", "1069-1002-019", "10692"]) == 0
    assert capsys.readouterr().out.strip() == (
        "bank: replies to 10691002019, 10692 (and longer numbers starting so) are its replies"
    )
    assert link_of(world, 0) == ("m1", "reply_number", 1, None)
    assert cli.main(["app", "reply-numbers", "shop", "10691002019"]) == 1
    assert "10691002019 is 'bank''s" in capsys.readouterr().err
    assert cli.main(["app", "reply-numbers", "shop", "106x"]) == 2
    assert cli.main(["app", "reply-numbers", "nobody", "10693"]) == 1
    assert cli.main(["app", "reply-numbers", "bank", "--remove", "10691002019"]) == 0
    assert "bank: replies to 10692 " in capsys.readouterr().out
    assert link_of(world, 0) == (None, None, 0, "other_application")
    assert cli.main(["app", "reply-numbers", "shop"]) == 0
    assert capsys.readouterr().out.strip() == "shop: no reply numbers"


def test_app_create_with_reply_numbers_and_a_scoped_api_key(db_url: str, monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.setenv("RECEIVER_DATABASE_URL", db_url)
    monkeypatch.setenv("RECEIVER_DATA_DIR", str(tmp_path))
    argv = ["app", "create", "shop", "--channel", "csms12345678", "--reply-number", "10691002019", "--json"]
    assert cli.main(argv) == 0
    assert set(_json(capsys.readouterr().out)) == {"name", "token", "status_report_url", "batch_status_report_url",
                                                   "uplink_url"}  # fmt: skip
    assert cli.main(["app", "create", "bank", "--reply-number", "10691002019"]) == 1
    assert "belongs to one application" in capsys.readouterr().err
    assert cli.main(["apikey", "create", "shop-service", "--application", "shop", "--json"]) == 0
    assert cli.main(["apikey", "create", "lost", "--application", "nope"]) == 1
    rows = run(fetch(db_url, "SELECT r.number, a.name FROM reply_numbers r JOIN applications a ON a.id = r.application_id"))
    assert [(r["number"], r["name"]) for r in rows] == [("10691002019", "shop")]
    keys = run(fetch(db_url, "SELECT k.name, a.name AS app FROM api_keys k LEFT JOIN applications a ON a.id = k.application_id"))
    assert [(k["name"], k["app"]) for k in keys] == [("shop-service", "shop")]
    assert run(fetch(db_url, "SELECT count(*) AS n FROM applications WHERE name = 'bank'"))[0]["n"] == 0


def _json(text: str) -> dict[str, Any]:
    import json

    return dict(json.loads(text))


def test_a_send_registered_while_its_reply_is_being_stored_links_it(world: World) -> None:
    """The writer has stored a reply and is linking it (held here by a trigger), uncommitted, when
    the send it answers is registered: neither transaction sees the other's row. The registration
    waits for the writer's lock on the replying number, then sees the reply and links it."""
    h = world.harness
    h.rows(
        """CREATE FUNCTION hold_links() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
               IF NEW.sms_msg_id IS NULL THEN
                   PERFORM pg_sleep(1.5);
               END IF;
               RETURN NEW;
           END $$"""
    )
    h.rows("CREATE TRIGGER hold_links BEFORE INSERT ON reply_links FOR EACH ROW EXECUTE FUNCTION hold_links()")
    form = f"smsMsgId=r1-0&from=%2B{sender(0).lstrip('+')}&to={SHOP_CHANNEL}&body=ok&createTime=2024-11-22T02%3A20%3A00Z"
    assert h.post("uplink", form).status_code == 200

    async def linking() -> bool:
        for _ in range(250):
            rows = await fetch(h.url, "SELECT 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
                                      " AND datname = current_database()")  # fmt: skip
            if rows:
                return True
            await asyncio.sleep(0.02)
        return False

    assert run(linking()), "the writer never reached the link"
    item = {"createTime": SENT_AT, "from": SHOP_CHANNEL, "originTo": sender(0), "smsMsgId": "m1-0", "status": "000000"}
    response = h.client.post("/v1/sent", json={"result": [item]}, headers={"Authorization": f"Bearer {h.api_key}"})
    assert response.status_code == 200
    assert link_of(world, 0) == ("m1", "channel", 1, None)


@pytest.mark.parametrize(
    ("written", "window"),
    [("259200", timedelta(hours=72)), ("P7D", timedelta(days=7)), ("36:00:00", timedelta(hours=36)), ("0", None),
     ("-1", None), ("3 days", timedelta(days=3)), ("three days", None)],
)  # fmt: skip
def test_the_report_window_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, written: str, window: timedelta | None
) -> None:
    monkeypatch.setenv("RECEIVER_REPORT_WINDOW", written)
    if window is None:
        with pytest.raises(ValueError, match="report_window"):
            Settings()
    else:
        assert Settings().report_window == window
