"""Delivery state: the rules, and that neither arrival order nor duplicates can change the result.

The rules in Python (``delivery_rule``, pure) and in SQL (``message_states``, kept by the
writer) are tested on the same random report sets: the SQL must always agree.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from delivery_rule import Report, Sent, State, derive
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver.correlation import store as correlation
from receiver.protocol import StatusReport
from receiver.records import ReportRecord
from receiver.writer import store

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


RULES = [
    ("no report", Sent(), [], "pending", 0),
    ("delivered", Sent(), [Report("DELIVRD", 1, 1, at(5))], "delivered", 1),
    ("case-insensitive", Sent(), [Report("delivrd", 1, 1, at(5))], "delivered", 1),
    ("failed", Sent(), [Report("UNDELIV", 1, 1, at(5))], "failed", 0),
    ("any DELIVRD wins for a part", Sent(), [Report("UNDELIV", 1, 1, at(9)), Report("DELIVRD", 1, 1, at(5))],
     "delivered", 1),
    ("refused by the send API", Sent(status="E200041"), [], "failed", 0),
    ("two of three parts", Sent(total=3), [Report("DELIVRD", 1, 3, at(1)), Report("DELIVRD", 2, 3, at(2))],
     "pending", 2),
    ("three of three parts", Sent(total=3), [Report("DELIVRD", s, 3, at(s)) for s in (1, 2, 3)], "delivered", 3),
    ("one part failed", Sent(total=3), [Report("DELIVRD", 1, 3, at(1)), Report("EXPIRED", 2, 3, None)], "failed", 1),
    ("reports say more parts than the send", Sent(total=1),
     [Report("DELIVRD", 1, 2, at(1))], "pending", 1),
    ("report without a registered send", None, [Report("DELIVRD")], "delivered", 1),
]  # fmt: skip


@pytest.mark.parametrize(("sent", "reports", "state", "delivered"), [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_rules(sent: Sent | None, reports: list[Report], state: str, delivered: int) -> None:
    result = derive(sent, reports)
    assert (result.state, result.parts_delivered) == (state, delivered)


def test_latency_is_last_part_delivery_minus_send_time() -> None:
    sent = Sent(total=2, create_time=at(0))
    result = derive(sent, [Report("DELIVRD", 1, 2, at(4)), Report("DELIVRD", 2, 2, at(7)), Report("DELIVRD", 2, 2, at(9))])
    assert (result.delivered_at, result.latency) == (at(7), timedelta(seconds=7))


def test_latest_status_prefers_the_latest_update_time() -> None:
    result = derive(Sent(), [Report("UNDELIV", 1, 1, at(1)), Report("DELIVRD", 1, 1, at(3)), Report("EXPIRED")])
    assert result.status == "DELIVRD"
    assert derive(Sent(status="E200028"), []).status == "E200028"


statuses = st.sampled_from(["DELIVRD", "delivrd", "UNDELIV", "EXPIRED", "E200027", "MK:0036", "ACCEPTD"])
reports_strategy = st.lists(
    st.builds(
        Report,
        status=statuses,
        sequence=st.one_of(st.none(), st.integers(1, 3)),
        total=st.one_of(st.none(), st.integers(1, 3)),
        update_time=st.one_of(st.none(), st.integers(0, 5).map(at)),
    ),
    max_size=8,
)
sent_strategy = st.one_of(
    st.none(),
    st.builds(Sent, status=st.sampled_from(["000000", "000000", "E200041"]), total=st.integers(1, 3),
              create_time=st.just(at(0))),
)  # fmt: skip


@settings(max_examples=300)
@given(sent=sent_strategy, reports=reports_strategy, data=st.data())
def test_order_and_duplicates_do_not_matter(sent: Sent | None, reports: list[Report], data: st.DataObject) -> None:
    expected = derive(sent, reports)
    shuffled = data.draw(st.permutations(reports))
    duplicated = shuffled + data.draw(st.lists(st.sampled_from(reports), max_size=4)) if reports else shuffled
    assert derive(sent, shuffled) == expected
    assert derive(sent, duplicated) == expected


# --- the SQL twin, on a real PostgreSQL ---------------------------------------------------------


async def _sql_state(url: str, sent: Sent | None, batches: list[list[Report]]) -> State | None:
    sms_msg_id = f"m-{uuid.uuid4().hex}"
    conn = await asyncpg.connect(url)
    try:
        app_id = await conn.fetchval(
            "INSERT INTO applications (name, token_hash) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET name = $1 "
            "RETURNING id",
            "prop",
            b"prop-token-hash",
        )
        for batch in batches:
            records = [
                ReportRecord(app_id, "form", T0, "raw", StatusReport(sms_msg_id, r.status, r.total, r.sequence,
                                                                     update_time=r.update_time))
                for r in batch
            ]  # fmt: skip
            await store(conn, records, after_insert=(correlation.after_insert_hook(timedelta(hours=72)),))
        if sent is not None:
            from receiver.correlation.sent import SentMessage

            message = SentMessage(sms_msg_id, "+8613100000000", "csms1", sent.status, sent.create_time, "CN",
                                  sent.total, None, None, None, None, {})  # fmt: skip
            async with conn.transaction():
                await correlation.register_sent(conn, [message], "tests", window=timedelta(hours=72))
        row = await conn.fetchrow("SELECT * FROM message_states WHERE sms_msg_id = $1", sms_msg_id)
    finally:
        await conn.close()
    if row is None:
        return None
    return State(row["state"], row["status"], row["parts_total"], row["parts_delivered"], row["delivered_at"],
                 row["latency"])  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sent=sent_strategy, reports=reports_strategy, data=st.data())
def test_sql_state_equals_the_rules_in_any_arrival_order(
    db_url: str, sent: Sent | None, reports: list[Report], data: st.DataObject
) -> None:
    order = data.draw(st.permutations(reports))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(order)), max_size=3)))
    batches = [order[a:b] for a, b in zip([0, *cuts], [*cuts, len(order)], strict=True)]
    stored = asyncio.run(_sql_state(db_url, sent, batches))
    if sent is None and not reports:
        assert stored is None
        return
    # Identical reports are one report once stored: the rules see the distinct set.
    assert stored == derive(sent, list(dict.fromkeys(reports)))
