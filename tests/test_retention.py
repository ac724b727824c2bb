"""Retention (`receiver prune`): old events go, recent ones stay, messages go whole, the blacklist
never changes, and a rebuild after a prune gives the same list. Events are stored through the
service, then dated back with SQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import asyncpg
import pytest
from support import Harness, cli, fetch, run, service_env, serving

from receiver import retention
from receiver.correlation import store as correlation_store

CHANNEL = "csms100000001"
NOW = datetime.now(UTC)
RECENT = NOW - timedelta(days=1)
AGE = "400 days"  # how far back aged events go; the prunes below keep 180 days
# Old sends are registered a day before their reports come, as the platform has it (a report
# comes within 72 hours of its send), then dated back with them (age): 401 days old.
OLD_SENDS = ("gone", "unanswered", "straddles", "replied")


def send(h: Harness, sms_msg_id: str, at: datetime, number: str = "+8613100000000") -> None:
    item = {"smsMsgId": sms_msg_id, "from": CHANNEL, "originTo": number, "status": "000000",
            "createTime": at.strftime("%Y-%m-%dT%H:%M:%SZ"), "total": 2}  # fmt: skip
    assert h.api("POST", "/v1/sent", json={"code": "000000", "result": [item]}).json()["registered"] == 1


def report(h: Harness, sms_msg_id: str, sequence: int, status: str = "DELIVRD", to: str | None = None) -> None:
    fields = {"smsMsgId": sms_msg_id, "status": status, "sequence": sequence, "total": 2, "source": 2,
              "updateTime": "2025-01-01T00:00:00Z"}  # fmt: skip
    if to:
        fields["to"] = to
    assert h.post("status-report", urlencode(fields)).status_code == 200


def reply(h: Harness, sms_msg_id: str, number: str, body: str = "ok") -> None:
    form = urlencode({"smsMsgId": sms_msg_id, "from": number, "to": CHANNEL, "body": body})
    assert h.post("uplink", form).status_code == 200


def age(h: Harness, table: str, where: str, column: str = "received_at") -> None:
    """Date rows back as if they had been received (and stored) 400 days ago."""
    h.settle()
    also = f", stored_at = stored_at - interval '{AGE}'" if table == "status_reports" else ""
    run(fetch(h.url, f"UPDATE {table} SET {column} = {column} - interval '{AGE}'{also} WHERE {where}"))
    if table == "uplinks":  # a reply's link names its receipt
        run(fetch(h.url, "UPDATE reply_links l SET uplink_received_at = u.received_at FROM uplinks u"
                         " WHERE u.id = l.uplink_id"))  # fmt: skip
    if table == "status_reports":
        received_then(h)
    if table == "sent_messages":
        sent_then(h)


def sent_then(h: Harness) -> None:
    """States of sends dated back: their send time, message time and latency, as if sent then."""
    run(fetch(h.url, "UPDATE message_states m SET sent_at = s.create_time, message_at = s.create_time,"
                     " latency = m.delivered_at - s.create_time FROM sent_messages s"
                     " WHERE s.sms_msg_id = m.sms_msg_id AND m.sent_at <> s.create_time"))  # fmt: skip


def received_then(h: Harness) -> None:
    """Where each message's reports are (their first and last receipt), as if they had come when
    they are now dated."""
    run(fetch(h.url, "UPDATE message_states m SET reports_from = r.first, reports_until = r.last,"
                     " message_at = coalesce(m.sent_at, r.first) FROM"
                     " (SELECT sms_msg_id, min(received_at) AS first, max(received_at) AS last FROM status_reports"
                     " GROUP BY 1) r WHERE r.sms_msg_id = m.sms_msg_id"))  # fmt: skip


def prune(h: Harness, tmp_path: Path, *args: str, check: bool = True):  # type: ignore[no-untyped-def]
    h.settle()
    return cli("prune", *args, env=service_env(tmp_path, h.url), check=check)


def counts(output: str) -> dict[str, int]:
    lines = output.splitlines()[1:]
    return {table: int(n) for table, n in (line.split("\t") for line in lines)}


def dump(h: Harness) -> dict[str, list[tuple[object, ...]]]:
    """Every table, row for row (message_states without the time of its last refresh)."""
    tables = {
        "sent_messages": "SELECT * FROM sent_messages ORDER BY sms_msg_id",
        "message_states": "SELECT sms_msg_id, state, status, parts_total, parts_delivered, reports, sent, sent_at,"
        " delivered_at, latency FROM message_states ORDER BY sms_msg_id",
        "status_reports": "SELECT * FROM status_reports ORDER BY id",
        "uplinks": 'SELECT id, sms_msg_id, "from", "to", body, received_at, from_e164 FROM uplinks ORDER BY id',
        "reply_links": "SELECT uplink_id, sms_msg_id, candidates FROM reply_links ORDER BY uplink_id",
        "quarantine": "SELECT * FROM quarantine ORDER BY id",
        "applications": "SELECT * FROM applications ORDER BY id",
        "api_keys": "SELECT * FROM api_keys ORDER BY id",
        "blacklist": "SELECT * FROM blacklist ORDER BY number, source, channel",
        "blacklist_signals": "SELECT * FROM blacklist_signals ORDER BY id",
        "blacklist_history": "SELECT * FROM blacklist_history ORDER BY id",
    }
    return {table: h.rows(sql) for table, sql in tables.items()}


def messages(h: Harness) -> None:
    """Messages on either side of the cutoff, replies and refused requests."""
    send(h, "gone", RECENT, "+8613100000001")  # old send, old reports, old reply: goes whole
    report(h, "gone", 1)
    report(h, "gone", 2)
    reply(h, "r-gone", "+8613100000001")
    send(h, "unanswered", RECENT, "+8613100000002")  # old send, no report: goes
    send(h, "straddles", RECENT, "+8613100000003")  # old send, one old and one recent report: stays whole
    report(h, "straddles", 1)
    report(h, "straddles", 2, "UNDELIV")
    send(h, "replied", RECENT, "+8613100000004")  # old send, old report, recent reply: stays
    report(h, "replied", 1)
    reply(h, "r-replied", "+8613100000004")
    send(h, "fresh", RECENT, "+8613100000005")
    report(h, "fresh", 1)
    report(h, "orphan-old", 1)  # reports of sends never registered
    report(h, "orphan-old", 2)
    report(h, "orphan-new", 1)
    report(h, "orphan-mixed", 1)
    report(h, "orphan-mixed", 2)
    assert h.post("status-report", "status=DELIVRD").status_code == 400  # two refused requests
    assert h.post("uplink", "body=no-sender").status_code == 400
    age(h, "status_reports", "sms_msg_id IN ('gone', 'replied', 'orphan-old')")
    age(h, "status_reports", "sms_msg_id IN ('straddles', 'orphan-mixed') AND sequence = 1")
    age(h, "uplinks", "sms_msg_id = 'r-gone'")
    age(h, "quarantine", "endpoint = 'status-report'")
    age(h, "events", "sms_msg_id IN ('gone', 'orphan-old')", column="at")  # the feed goes by its own time
    age(h, "quarantine_counts", "endpoint = 'status-report'", column="hour")
    age(h, "sent_messages", f"sms_msg_id IN {OLD_SENDS}", column="create_time")


EXPECTED = {"sent_messages": 2, "message_states": 3, "status_reports": 4, "sends_after_optout": 0, "events": 7,
            "uplinks": 1, "reply_links": 1, "quarantine": 1, "quarantine_counts": 1}  # fmt: skip


def test_old_rows_go_recent_ones_stay_and_messages_go_whole(harness: Harness, tmp_path: Path) -> None:
    messages(harness)
    before = dump(harness)
    assert harness.rows("SELECT uplink_id IS NOT NULL, sms_msg_id FROM reply_links ORDER BY 2") == [
        (True, "gone"), (True, "replied")
    ]  # fmt: skip

    done = prune(harness, tmp_path, "--older-than", "180d")
    assert done.stdout.startswith("deleted rows older than ")
    assert counts(done.stdout) == EXPECTED

    kept = {"straddles", "replied", "fresh"}
    assert harness.rows("SELECT sms_msg_id FROM sent_messages ORDER BY 1") == [(m,) for m in sorted(kept)]
    states = kept | {"orphan-new", "orphan-mixed"}
    assert harness.rows("SELECT sms_msg_id FROM message_states ORDER BY 1") == [(m,) for m in sorted(states)]
    assert harness.rows("SELECT sms_msg_id, count(*) FROM status_reports GROUP BY 1 ORDER BY 1") == [
        ("fresh", 1), ("orphan-mixed", 2), ("orphan-new", 1), ("replied", 1), ("straddles", 2)
    ]  # fmt: skip
    assert harness.rows("SELECT sms_msg_id FROM uplinks") == [("r-replied",)]
    assert harness.rows("SELECT sms_msg_id FROM reply_links") == [("replied",)]
    assert harness.rows("SELECT endpoint FROM quarantine") == [("uplink",)]

    after = dump(harness)
    for table in ("applications", "api_keys", "blacklist", "blacklist_signals", "blacklist_history"):
        assert after[table] == before[table], table
    # what stays is untouched, and every state is still what its remaining events give
    assert after["message_states"] == [row for row in before["message_states"] if row[0] in states]
    assert after["status_reports"] == [row for row in before["status_reports"] if row[2] in states]

    async def refresh() -> None:
        conn = await asyncpg.connect(harness.url)
        try:
            async with conn.transaction():
                await correlation_store.refresh_states(conn, states)
        finally:
            await conn.close()

    run(refresh())
    assert dump(harness)["message_states"] == after["message_states"]
    assert harness.api("GET", "/v1/messages/gone").status_code == 404
    assert [r["sms_msg_id"] for r in harness.api("GET", "/v1/messages/replied").json()["replies"]] == ["r-replied"]
    # dashboards lose the periods that went: only the kept sends are counted
    assert harness.rows("SELECT sum(sent)::int FROM dashboard_delivery_daily") == [(3,)]


def test_dry_run_deletes_nothing_and_a_second_run_nothing_more(harness: Harness, tmp_path: Path) -> None:
    messages(harness)
    before = dump(harness)
    dry = prune(harness, tmp_path, "--older-than", "180d", "--dry-run", "--batch-size", "1")
    assert dry.stdout.splitlines()[0].endswith("(dry run: nothing deleted)")
    assert counts(dry.stdout) == EXPECTED
    assert dump(harness) == before

    first = prune(harness, tmp_path, "--older-than", "26w", "--batch-size", "1")  # one candidate per transaction
    assert counts(first.stdout) == EXPECTED
    pruned = dump(harness)
    second = prune(harness, tmp_path, "--older-than", "26w")
    assert set(counts(second.stdout).values()) == {0}
    assert dump(harness) == pruned


def test_a_dry_run_leaves_a_schema_that_is_behind_as_it_is(empty_db_url: str, tmp_path: Path) -> None:
    """A dry run from a newer build changes nothing, not even the schema: it says what is missing."""
    dry = cli("prune", "--older-than", "180d", "--dry-run", env=service_env(tmp_path, empty_db_url), check=False)
    assert dry.returncode == 1 and "run `receiver migrate` first" in dry.stderr
    assert run(fetch(empty_db_url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"))[0][0] == 0


def test_a_shorter_duration_reaches_recent_events(harness: Harness, tmp_path: Path) -> None:
    """Hours and weeks count from now, by the database's clock."""
    report(harness, "two-hours-ago", 1)
    report(harness, "just-now", 1)
    harness.settle()
    # Two hours ago, or the start of the UTC day of the cutoff an hour ago when that is later
    # (from 01:00 to 02:00 UTC): a day that ends before the cutoff is dropped whole, and this is
    # about the rows' rule, which applies in the day that straddles the cutoff.
    run(fetch(harness.url, "UPDATE status_reports SET received_at = greatest(now() - interval '2 hours', "
                           "date_trunc('day', now() - interval '1 hour', 'UTC')) "
                           "WHERE sms_msg_id = 'two-hours-ago'"))  # fmt: skip
    received_then(harness)
    # Received two hours ago but stored just now (it waited in the journal): its event, dated by
    # the storing transaction, stays for an hour, so the report stays with it.
    assert counts(prune(harness, tmp_path, "--older-than", "1h").stdout)["status_reports"] == 0
    run(fetch(harness.url, "UPDATE status_reports SET stored_at = now() - interval '2 hours' "
                           "WHERE sms_msg_id = 'two-hours-ago'"))  # fmt: skip
    assert counts(prune(harness, tmp_path, "--older-than", "1w").stdout)["status_reports"] == 0
    assert counts(prune(harness, tmp_path, "--older-than", "1h").stdout)["status_reports"] == 1
    assert harness.rows("SELECT sms_msg_id FROM status_reports") == [("just-now",)]


N1, N2, N3 = "+8615112345678", "+8613112345678", "+8613712343774"


@pytest.mark.parametrize("scope", ["all", "channel"])
def test_the_blacklist_never_changes_and_a_rebuild_after_a_prune_gives_the_same_list(
    db_url: str, tmp_path: Path, scope: str
) -> None:
    with serving(db_url, tmp_path, blacklist_scope=scope) as h:
        reply(h, "u1", N1, "T")  # unsubscribes by reply
        reply(h, "u2", N2, "hello")  # an ordinary reply
        send(h, "m1", RECENT, N2)
        report(h, "m1", 1, "SC:0016")  # a platform code, its number from the send
        report(h, "m2", 1, "BLACK", to=N3)  # a platform code with its own number, no send
        assert h.api("PUT", "/v1/blacklist/+8617712345678", json={"reason": "by hand"}).status_code == 201
        age(h, "uplinks", "true")
        age(h, "status_reports", "true")
        age(h, "events", "true", column="at")
        age(h, "sent_messages", "true", column="create_time")
        before = dump(h)
        assert {row[0] for row in before["blacklist"]} == {N1, N2, N3, "+8617712345678"}

        done = prune(h, tmp_path, "--older-than", "180d")
        pruned = counts(done.stdout)
        assert pruned.pop("events") > 0 and h.rows("SELECT count(*) FROM events") == [(0,)]
        assert pruned == {
            "sent_messages": 1, "message_states": 2, "status_reports": 2, "sends_after_optout": 0, "uplinks": 2,
            "reply_links": 2, "quarantine": 0, "quarantine_counts": 0,
        }  # fmt: skip
        after = dump(h)
        for table in ("sent_messages", "status_reports", "uplinks", "message_states"):
            assert after[table] == [], table
        for table in ("blacklist", "blacklist_signals", "blacklist_history"):
            assert after[table] == before[table], table

        env = service_env(tmp_path, db_url, RECEIVER_BLACKLIST_SCOPE=scope)
        rebuilt = cli("blacklist", "rebuild", env=env)
        assert rebuilt.stdout.startswith("rebuilt: 4 entries; 0 added, 0 removed")
        again = dump(h)
        for table in ("blacklist", "blacklist_signals", "blacklist_history"):
            assert again[table] == before[table], table
        assert h.api("GET", f"/v1/blacklist/{N1}").status_code == 200


def test_a_report_stored_during_a_prune_keeps_its_message_whole(harness: Harness, tmp_path: Path) -> None:
    """The writer's per-message lock: the prune checks the message again once it has it."""
    send(harness, "late", RECENT)
    report(harness, "late", 1)
    age(harness, "status_reports", "true")
    age(harness, "sent_messages", "true", column="create_time")
    env = service_env(tmp_path, harness.url)

    async def race() -> str:
        conn = await asyncpg.connect(harness.url)
        try:
            # what the writer does with a new report: received the day after the first (dated back
            # with it), stored now, which keeps its message
            async with conn.transaction():
                new = await conn.fetch(
                    """INSERT INTO status_reports (application_id, sms_msg_id, status, sequence, total, raw_body,
                           via, received_at, dedupe_key)
                       SELECT id, 'late', 'DELIVRD', 2, 2, '', 'form', now() - interval '399 days', '\\x01'
                       FROM applications
                       RETURNING sms_msg_id, received_at"""
                )
                await correlation_store.refresh_states(conn, ["late"], new)
                pruning = asyncio.create_task(asyncio.to_thread(cli, "prune", "--older-than", "180d", env=env))
                waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                other = await asyncpg.connect(harness.url)
                try:
                    while not await other.fetchval(waiting):
                        await asyncio.sleep(0.05)
                finally:
                    await other.close()
            return (await pruning).stdout
        finally:
            await conn.close()

    assert counts(run(race()))["sent_messages"] == 0
    assert harness.rows("SELECT sms_msg_id FROM sent_messages") == [("late",)]
    assert harness.rows("SELECT sequence FROM status_reports ORDER BY 1") == [(1,), (2,)]
    assert harness.rows("SELECT state, parts_delivered, reports FROM message_states") == [("delivered", 2, 2)]


def test_one_prune_at_a_time(harness: Harness, tmp_path: Path) -> None:
    async def while_locked() -> object:
        conn = await asyncpg.connect(harness.url)
        try:
            await conn.execute("SELECT pg_advisory_lock($1::bigint)", retention._LOCK_PRUNE)
            env = service_env(tmp_path, harness.url)
            return await asyncio.to_thread(cli, "prune", "--older-than", "180d", env=env, check=False)
        finally:
            await conn.close()

    busy = run(while_locked())
    assert busy.returncode == 1  # type: ignore[attr-defined]
    assert "another prune is running" in busy.stderr  # type: ignore[attr-defined]
    assert prune(harness, tmp_path, "--older-than", "180d").returncode == 0  # and once it is free


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--older-than", "180"], "is no duration"),
        (["--older-than", "d"], "is no duration"),
        (["--older-than", "1.5d"], "is no duration"),
        (["--older-than=-5d"], "is no duration"),
        (["--older-than", "6m"], "is no duration"),
        (["--older-than", "1y"], "is no duration"),
        (["--older-than", "0d"], "above zero"),
        (["--older-than", "99999999w"], "longer than 1000 years"),
        (["--older-than", "180d", "--batch-size", "0"], "above zero"),
        ([], "--older-than"),
    ],
)
def test_bad_durations_exit_2_with_a_clear_message(
    harness: Harness, tmp_path: Path, args: list[str], message: str
) -> None:
    report(harness, "m", 1)
    age(harness, "status_reports", "true")
    refused = prune(harness, tmp_path, *args, check=False)
    assert refused.returncode == 2
    assert message in refused.stderr and refused.stdout == ""
    assert harness.rows("SELECT count(*) FROM status_reports") == [(1,)]


def test_parse_duration() -> None:
    assert retention.parse_duration("180d") == timedelta(days=180)
    assert retention.parse_duration("12h") == timedelta(hours=12)
    assert retention.parse_duration("26w") == timedelta(weeks=26)
