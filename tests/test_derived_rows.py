"""The rows that follow from a send, a report or a state: written once, whoever stores them.

The service's statements write the event feed's, ``message_index``'s and ``recipient_index``'s
rows themselves (so that they run on Citus, where triggers of a distributed table cannot);
the triggers write them for every other writer, such as a replica of an earlier release during
a rolling upgrade, or an operator's SQL (sql/024_statements_write_derived_rows.sql).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
from support import run

from receiver import applications
from receiver.correlation import store as correlation
from receiver.correlation.sent import SentMessage
from receiver.protocol.events import StatusReport
from receiver.records import ReportRecord
from receiver.writer import store

NOW = datetime.now(UTC).replace(microsecond=0)
NUMBER = "+8613100000007"
WINDOW = timedelta(hours=72)

# What an earlier release's writer (or an operator) does: store the rows, nothing more.
ANOTHER_WRITER = """
INSERT INTO sent_messages (sms_msg_id, "to", "from", status, create_time, raw)
VALUES ('theirs', '+8613100000007', 'csms1', '000000', $1, '{}');
INSERT INTO message_states (sms_msg_id, message_at, state, status, parts_total, parts_delivered, reports, sent, sent_at)
VALUES ('theirs', $1, 'pending', '000000', 1, 0, 0, true, $1);
UPDATE message_states SET state = 'delivered', status = 'DELIVRD', parts_delivered = 1, reports = 1
WHERE sms_msg_id = 'theirs';
INSERT INTO status_reports (application_id, sms_msg_id, status, raw_body, via, received_at, dedupe_key)
VALUES ($2, 'theirs', 'DELIVRD', 'raw', 'form', $1, '\\x01');
INSERT INTO sends_after_optout (sms_msg_id, "to", "from", sent_at, source, channel, reason, added_by, added_at)
VALUES ('theirs', '+8613100000007', 'csms1', $1, 'manual', NULL, 'asked', 'ops', $1);
"""

ROWS = """
SELECT (SELECT array_agg(kind || ':' || coalesce(state, '-') || '<' || coalesce(previous, '-') ORDER BY id)
        FROM events WHERE sms_msg_id = $1) AS events,
       (SELECT count(*) FROM message_index WHERE sms_msg_id = $1) AS indexed,
       (SELECT count(*) FROM recipient_index WHERE "to" = $2) AS days
"""


async def _rows(conn: asyncpg.Connection, sms_msg_id: str) -> tuple[list[str], int, int]:
    row = await conn.fetchrow(ROWS, sms_msg_id, NUMBER)
    assert row is not None
    return list(row["events"] or []), row["indexed"], row["days"]


def test_another_writers_rows_are_followed_by_the_triggers(db_url: str) -> None:
    async def go() -> tuple[list[str], int, int]:
        conn = await asyncpg.connect(db_url)
        try:
            app, _ = await applications.create(conn, "theirs", ["csms1"])
            await conn.execute(ANOTHER_WRITER.replace("$2", str(app.id)).replace("$1", f"'{NOW.isoformat()}'"))
            return await _rows(conn, "theirs")
        finally:
            await conn.close()

    events, indexed, days = run(go())
    assert events == ["state:pending<-", "state:delivered<pending", "report:-<-", "sent_after_optout:-<-"]
    assert (indexed, days) == (1, 1)


def test_the_services_own_rows_are_written_once(db_url: str) -> None:
    async def go() -> tuple[list[str], int, int]:
        conn = await asyncpg.connect(db_url)
        try:
            app, _ = await applications.create(conn, "ours", ["csms1"])
            sent = SentMessage("ours", NUMBER, "csms1", "000000", NOW, "CN", 1, None, None, None, None, {})
            async with conn.transaction():
                await correlation.register_sent(conn, [sent], "tests", application_id=app.id, window=WINDOW)
            report = StatusReport("ours", "DELIVRD", update_time=NOW + timedelta(seconds=5))
            await store(conn, [ReportRecord(app.id, "form", NOW + timedelta(seconds=6), "raw", report)],
                        (correlation.after_insert_hook(WINDOW),))  # fmt: skip
            return await _rows(conn, "ours")
        finally:
            await conn.close()

    events, indexed, days = run(go())
    assert events == ["state:pending<-", "report:-<-", "state:delivered<pending"]
    assert (indexed, days) == (1, 1)
