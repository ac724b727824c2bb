"""Sends after an opt-out: a registered send whose recipient was blacklisted, in a scope covering
the send, at the send's createTime. The rule (``rules.entry_at``), then on a real PostgreSQL:
every order of sends and blacklist events, opt-outs and re-subscribes around the send time,
scopes, platform codes and people's entries, a rebuild, and what the API, the event feed, the
dashboard view and the metrics show."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from support import Harness, run, serving, value

from receiver import applications, metrics, sends
from receiver.blacklist import store
from receiver.blacklist.rules import Entry, Scope, Signal, entry_at
from receiver.config import Settings
from receiver.correlation.sent import SentMessage
from receiver.protocol import StatusReport, Uplink
from receiver.records import ReportRecord, UplinkRecord
from receiver.writer import store as write_batch

T0 = datetime(2026, 1, 1, tzinfo=UTC)
N1, N2 = "+8615112345678", "+8613112345678"
A, B = "10691002019", "10690000001"


def minutes(n: float) -> datetime:
    return T0 + timedelta(minutes=n)


# --- the rule -------------------------------------------------------------------------------------

OPTOUT = Signal(N1, "add", "keyword", A, "replied 'T'", minutes(0), "u1", uplink_id=1)
RESUBSCRIBE = Signal(N1, "remove", "keyword", A, "replied 'START'", minutes(10), "u2", uplink_id=2)
PLATFORM = Signal(N1, "add", "platform", A, "status SC:0016", minutes(-60), "m0", report_id=1)
MANUAL_B = Signal(N1, "add", "manual", B, "asked by phone", minutes(0), actor="support", id=1)
MANUAL_OFF = Signal(N1, "remove", "manual", None, "consent on file", minutes(20), actor="support", id=2)

KEYWORD_ALL = Entry(N1, None, "keyword", "replied 'T'", "u1", None, minutes(0))
KEYWORD_A = Entry(N1, A, "keyword", "replied 'T'", "u1", None, minutes(0))

RULES: list[tuple[str, list[Signal], Scope, datetime, str | None, Entry | None]] = [
    ("sent before the opt-out", [OPTOUT], "all", minutes(-0.01), A, None),
    ("sent at the very moment of the opt-out", [OPTOUT], "all", minutes(0), A, KEYWORD_ALL),
    ("sent after the opt-out", [OPTOUT], "all", minutes(5), A, KEYWORD_ALL),
    ("another channel, scope all", [OPTOUT], "all", minutes(5), B, KEYWORD_ALL),
    ("sent between opt-out and re-subscribe", [OPTOUT, RESUBSCRIBE], "all", minutes(5), A, KEYWORD_ALL),
    ("sent at the very moment of the re-subscribe", [OPTOUT, RESUBSCRIBE], "all", minutes(10), A, None),
    ("sent after the re-subscribe", [RESUBSCRIBE, OPTOUT], "all", minutes(15), A, None),
    ("scope channel: the channel replied to", [OPTOUT], "channel", minutes(5), A, KEYWORD_A),
    ("scope channel: another channel", [OPTOUT], "channel", minutes(5), B, None),
    ("scope channel: a send of unknown channel", [OPTOUT], "channel", minutes(5), None, KEYWORD_A),
    ("a person's entry for channel B", [MANUAL_B], "all", minutes(5), B,
     Entry(N1, B, "manual", "asked by phone", None, "support", minutes(0))),
    ("a person's entry for channel B, sent from A", [MANUAL_B], "all", minutes(5), A, None),
    ("a re-subscribe leaves the platform's entry", [PLATFORM, OPTOUT, RESUBSCRIBE], "all", minutes(15), A,
     Entry(N1, None, "platform", "status SC:0016", "m0", None, minutes(-60))),
    ("two entries: the oldest", [OPTOUT, PLATFORM], "all", minutes(5), A,
     Entry(N1, None, "platform", "status SC:0016", "m0", None, minutes(-60))),
    ("a person's removal lifts them all", [PLATFORM, OPTOUT, MANUAL_OFF], "all", minutes(25), A, None),
]  # fmt: skip


@pytest.mark.parametrize(("signals", "scope", "at", "channel", "entry"), [r[1:] for r in RULES],
                         ids=[r[0] for r in RULES])  # fmt: skip
def test_rules(signals: list[Signal], scope: Scope, at: datetime, channel: str | None, entry: Entry | None) -> None:
    assert entry_at(signals, scope, at, channel) == entry
    assert entry_at(reversed(signals), scope, at, channel) == entry


# --- on a real PostgreSQL: every order ------------------------------------------------------------

SETTINGS = Settings(resubscribe_keywords="START")  # type: ignore[arg-type]


def _send(sms_msg_id: str, to: str, at: datetime | None, channel: str | None = A) -> SentMessage:
    return SentMessage(sms_msg_id, to, channel, "000000", at, "CN", 1, None, None, None, None, {})


def _reply(app_id: int, sms_msg_id: str, number: str, body: str, at: datetime, channel: str = A) -> UplinkRecord:
    return UplinkRecord(app_id, at, "", Uplink(sms_msg_id, number, channel, body))


async def _flags(conn: asyncpg.Connection, number: str) -> dict[str, tuple[object, ...]]:
    rows = await conn.fetch(
        """SELECT s.sms_msg_id, f.source, f.reason, f.cause_sms_msg_id, f.added_at
           FROM sends_after_optout f JOIN sent_messages s USING (sms_msg_id)
           WHERE s."to" = $1 AND f.source IS NOT NULL""",
        number,
    )
    return {row["sms_msg_id"].split("/")[-1]: tuple(row)[1:] for row in rows}


@pytest.mark.parametrize("scope", ["all", "channel"])
def test_sends_and_blacklist_events_in_every_order_give_the_same_flags(db_url: str, scope: Scope) -> None:
    """Opt-out at 0:00 and re-subscribe at 0:10 (both replies to channel A), sends at -0:05, 0:00,
    0:05 (from A and from B) and 0:15, recorded in every order."""
    settings = Settings(resubscribe_keywords="START", blacklist_scope=scope)  # type: ignore[arg-type]
    hook = store.after_insert_hook(settings)

    async def go() -> list[tuple[tuple[str, ...], dict[str, tuple[object, ...]], list[str]]]:
        conn = await asyncpg.connect(db_url)
        results = []
        try:
            app, _ = await applications.create(conn, "shop", [A])
            for n, order in enumerate(itertools.permutations(["optout", "resubscribe", "early", "late"])):
                number = f"+86151{n:08d}"
                steps = {
                    "optout": [_reply(app.id, f"{n}/u1", number, "T", minutes(0))],
                    "resubscribe": [_reply(app.id, f"{n}/u2", number, "START", minutes(10))],
                    "early": [_send(f"{n}/before", number, minutes(-5)), _send(f"{n}/at", number, minutes(0))],
                    "late": [_send(f"{n}/between", number, minutes(5)), _send(f"{n}/between-b", number, minutes(5), B),
                             _send(f"{n}/after", number, minutes(15))],
                }  # fmt: skip
                answers: list[str] = []
                for step in order:
                    if step in ("optout", "resubscribe"):
                        await write_batch(conn, steps[step], [hook])  # type: ignore[arg-type]
                    else:
                        done = await sends.register(conn, steps[step], "tests", settings)  # type: ignore[arg-type]
                        answers += [i.split("/")[-1] for i in done.blacklisted_at_send]
                results.append((order, await _flags(conn, number), sorted(answers)))
        finally:
            await conn.close()
        return results

    keyword = ("keyword", "replied 'T'")
    expected = {"at", "between", "between-b"} if scope == "all" else {"at", "between"}
    for order, flags, answered in run(go()):
        assert set(flags) == expected, order
        assert all(f[:2] == keyword and f[3] == minutes(0) for f in flags.values()), order
        # POST /v1/sent answers what was known when it was called: after both replies, the truth
        if order.index("early") > 1 and order.index("late") > 1:
            assert set(answered) == expected, order


def test_a_backdated_resubscribe_withdraws_the_finding_and_the_feed_says_so(db_url: str) -> None:
    hook = store.after_insert_hook(SETTINGS)

    async def go() -> tuple[list[object], list[tuple[object, ...]]]:
        conn = await asyncpg.connect(db_url)
        try:
            app, _ = await applications.create(conn, "shop", [A])
            before = metrics.SENDS_AFTER_OPTOUT._value.get()
            await write_batch(conn, [_reply(app.id, "u1", N1, "T", minutes(0))], [hook])
            first = await sends.register(conn, [_send("m1", N1, minutes(5))], "tests", SETTINGS)
            # a re-subscribe received at 0:01 is stored only now (the writer lagged): m1 was sent after it
            await write_batch(conn, [_reply(app.id, "u2", N1, "START", minutes(1))], [hook])
            again = await sends.register(conn, [_send("m1", N1, minutes(5))], "tests", SETTINGS)
            events = await conn.fetch(
                """SELECT sms_msg_id, number, data->'blacklisted_at_send'->>'source' AS source
                   FROM events WHERE kind = 'sent_after_optout' ORDER BY id"""
            )
            counted = metrics.SENDS_AFTER_OPTOUT._value.get() - before
            return [sorted(first.blacklisted_at_send), again.blacklisted_at_send, counted], [tuple(e) for e in events]
        finally:
            await conn.close()

    answers, events = run(go())
    assert answers == [["m1"], {}, 1]
    assert events == [("m1", N1, "keyword"), ("m1", N1, None)]


def test_a_platform_code_blacklists_later_sends_not_the_reported_one(db_url: str) -> None:
    hook = store.after_insert_hook(SETTINGS)

    async def go() -> dict[str, tuple[object, ...]]:
        conn = await asyncpg.connect(db_url)
        try:
            app, _ = await applications.create(conn, "shop", [A])
            await sends.register(conn, [_send("m1", N1, minutes(-1))], "tests", SETTINGS)
            code = ReportRecord(app.id, "form", minutes(0), "", StatusReport("m1", "SC:0016"))
            await write_batch(conn, [code], [hook])
            await sends.register(conn, [_send("m2", N1, minutes(60))], "tests", SETTINGS)
            return await _flags(conn, N1)
        finally:
            await conn.close()

    assert run(go()) == {"m2": ("platform", "status SC:0016", "m1", minutes(0))}


def test_people_adding_and_removing_by_hand(db_url: str) -> None:
    config = store.Config.of(SETTINGS)

    async def go() -> dict[str, tuple[object, ...]]:
        conn = await asyncpg.connect(db_url)
        try:
            async with conn.transaction():
                await store.add(conn, config, N1, reason="asked by phone", actor="support", channel=B)
            await sends.register(conn, [_send("from-b", N1, None, B), _send("from-a", N1, None, A)], "tests",
                                 SETTINGS)  # fmt: skip
            async with conn.transaction():
                await store.remove(conn, config, N1, reason="consent on file", actor="support")
            await sends.register(conn, [_send("lifted", N1, None, B)], "tests", SETTINGS)
            flags = await _flags(conn, N1)
            async with conn.transaction():
                await store.rebuild(conn, config)
            assert await _flags(conn, N1) == flags  # a rebuild gives the same findings
            return flags
        finally:
            await conn.close()

    flags = run(go())
    assert {k: v[:3] for k, v in flags.items()} == {"from-b": ("manual", "asked by phone", None)}


# --- what users see -------------------------------------------------------------------------------


def test_the_api_the_feed_the_view_and_the_counter(harness: Harness) -> None:
    body = f"smsMsgId=u1&from=%2B{N1.lstrip('+')}&to=csms100000001&body=T"
    assert harness.post("uplink", body).status_code == 200
    harness.settle()
    before = value(harness.client.get("/metrics").text, "receiver_sends_after_optout_total")
    result = [
        {"smsMsgId": "s1", "from": "csms100000001", "originTo": N1, "status": "000000"},  # sent now: after the T
        {"smsMsgId": "s2", "from": "csms100000001", "originTo": N2, "status": "000000"},
        {"smsMsgId": "s0", "from": "csms100000001", "originTo": N1, "status": "000000",
         "createTime": "2024-11-22T02:16:46Z"},  # before it
    ]  # fmt: skip
    first = harness.api("POST", "/v1/sent", json={"code": "000000", "result": result})
    assert first.status_code == 200
    answer = first.json()
    assert (answer["registered"], [b["sms_msg_id"] for b in answer["blacklisted"]]) == (3, ["s1"])
    entry = answer["blacklisted"][0]["blacklisted_at_send"]
    assert answer["blacklisted"][0]["to"] == N1
    assert {k: entry[k] for k in ("number", "channel", "source", "reason", "sms_msg_id", "added_by")} == {
        "number": N1, "channel": None, "source": "keyword", "reason": "replied 'T'", "sms_msg_id": "u1",
        "added_by": None}  # fmt: skip
    again = harness.api("POST", "/v1/sent", json={"code": "000000", "result": result}).json()
    assert (again["registered"], again["blacklisted"]) == (0, answer["blacklisted"])

    assert harness.api("GET", "/v1/messages/s1").json()["blacklisted_at_send"] == entry
    assert harness.api("GET", "/v1/messages/s0").json()["blacklisted_at_send"] is None
    assert harness.api("GET", "/v1/messages/s2").json()["blacklisted_at_send"] is None

    def listed(**params: str) -> list[tuple[str, bool]]:
        response = harness.api("GET", "/v1/messages", params=params)
        assert response.status_code == 200, response.text
        return [(m["sms_msg_id"], m["blacklisted_at_send"]) for m in response.json()["messages"]]

    assert listed(blacklisted_at_send="true") == [("s1", True)]
    assert sorted(listed(blacklisted_at_send="false")) == [("s0", False), ("s2", False)]
    assert listed(blacklisted_at_send="true", to=N2) == []
    bad = harness.api("GET", "/v1/messages", params={"blacklisted_at_send": "yes"})
    assert (bad.status_code, bad.json()["error"]) == (400, "invalid_field")

    events = harness.api("GET", "/v1/events", params={"kinds": "sent_after_optout"}).json()["events"]
    assert [(e["sms_msg_id"], e["number"], e["data"]["blacklisted_at_send"]["reason"]) for e in events] == [
        ("s1", N1, "replied 'T'")]  # fmt: skip

    view = "SELECT sms_msg_id, \"to\", source, reason, entry_channel FROM dashboard_sends_after_optout"
    assert harness.rows(view) == [("s1", N1, "keyword", "replied 'T'", None)]
    after = value(harness.client.get("/metrics").text, "receiver_sends_after_optout_total")
    assert after - before == 1  # the second registration found nothing new


def test_scope_channel_through_the_api(db_url: str, tmp_path: Path) -> None:
    with serving(db_url, tmp_path, blacklist_scope="channel") as h:
        assert h.post("uplink", f"smsMsgId=u1&from=%2B{N1.lstrip('+')}&to={A}&body=TD").status_code == 200
        h.settle()
        result = [{"smsMsgId": "a", "from": A, "originTo": N1, "status": "000000"},
                  {"smsMsgId": "b", "from": B, "originTo": N1, "status": "000000"}]  # fmt: skip
        answer = h.api("POST", "/v1/sent", json={"code": "000000", "result": result}).json()
        assert [(x["sms_msg_id"], x["blacklisted_at_send"]["channel"]) for x in answer["blacklisted"]] == [("a", A)]


def test_prune_takes_the_finding_with_its_send_and_announces_nothing(db_url: str) -> None:
    from receiver import retention

    hook = store.after_insert_hook(SETTINGS)

    async def go() -> tuple[dict[str, int], list[str], int]:
        conn = await asyncpg.connect(db_url)
        try:
            app, _ = await applications.create(conn, "shop", [A])
            await write_batch(conn, [_reply(app.id, "u1", N1, "T", minutes(0))], [hook])
            await sends.register(conn, [_send("old", N1, minutes(5)), _send("new", N1, None)], "tests", SETTINGS)
            await conn.execute("DELETE FROM events")
            result = await retention.prune(conn, timedelta(days=7))
            left = [row[0] for row in await conn.fetch("SELECT sms_msg_id FROM sends_after_optout")]
            return result.counts, left, await conn.fetchval("SELECT count(*) FROM events")
        finally:
            await conn.close()

    counts, left, events = run(go())
    assert (counts["sent_messages"], counts["sends_after_optout"], left, events) == (1, 1, ["new"], 0)


def test_paging_through_the_sends_after_an_optout(harness: Harness) -> None:
    assert harness.post("uplink", f"smsMsgId=u1&from=%2B{N1.lstrip('+')}&to=csms100000001&body=T").status_code == 200
    harness.settle()
    now = datetime.now(UTC)
    result = [
        {"smsMsgId": f"m{i}", "from": "csms100000001", "originTo": N1 if i % 3 else N2, "status": "000000",
         "createTime": (now + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M:%SZ")}
        for i in range(1, 10)
    ]  # fmt: skip
    assert harness.api("POST", "/v1/sent", json={"code": "000000", "result": result}).status_code == 200
    seen, cursor = [], None
    for _ in range(10):
        params = {"blacklisted_at_send": "true", "limit": "2", **({"cursor": cursor} if cursor else {})}
        page = harness.api("GET", "/v1/messages", params=params).json()
        if not page["messages"]:
            break
        seen += [m["sms_msg_id"] for m in page["messages"]]
        cursor = page["cursor"]
    assert seen == ["m1", "m2", "m4", "m5", "m7", "m8"]
    since = (now + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    later = harness.api("GET", "/v1/messages", params={"blacklisted_at_send": "true", "since": since}).json()
    assert [m["sms_msg_id"] for m in later["messages"]] == ["m5", "m7", "m8"]
