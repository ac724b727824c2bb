"""Journal records (receiver/records.py, receiver/journal/envelope.py): what the acknowledgement
writes is what the writer reads, and a journal written by an earlier release still replays."""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from support import run

from receiver import records, writer_process
from receiver.config import Settings
from receiver.journal import envelope, frames
from receiver.journal.envelope import Kind
from receiver.protocol import (
    ProtocolError,
    parse_status_report_batch,
    parse_status_report_form,
    parse_uplink_form,
)

FIXTURES = Path(__file__).parent / "fixtures"
FORM = (
    b"sequence=1&total=2&orgCode=000&updateTime=2018-04-13T06%3A31%3A46Z&source=2"
    b"&smsMsgId=m-1&status=DELIVRD&to=%2B8615112345678&extend=%E4%BD%A0&future=x"
)


def test_a_report_comes_back_as_it_went_in() -> None:
    payload = records.accepted(Kind.STATUS_REPORT, 7, 1700000000.25, FORM)
    assert payload.endswith(FORM), "the body is journaled as it came, not re-serialised"
    [record] = records.decode(payload)
    assert isinstance(record, records.ReportRecord)
    assert record.event == parse_status_report_form(FORM) and record.application_id == 7 and record.via == "form"
    assert record.raw == FORM.decode() and record.received_at == datetime.fromtimestamp(1700000000.25, UTC)


def test_an_uplink_in_chinese_comes_back_as_it_went_in() -> None:
    body = b"smsMsgId=u-1&from=%2B8615112345678&to=10691002019&body=%E9%80%80%E8%AE%A2&createTime=2018-04-13T06%3A31%3A46Z"
    [record] = records.decode(records.accepted(Kind.UPLINK, 3, 1.5, body))
    assert isinstance(record, records.UplinkRecord) and record.event == parse_uplink_form(body)
    assert record.event.body == "退订"


def test_a_batch_is_one_record_that_gives_back_its_good_items() -> None:
    """Unknown fields may hold integers beyond 64 bits: kept exactly as sent, beside floats."""
    body = (
        b'{"statusReportList":[{"smsMsgId":"m-2","status":"DELIVRD","a":1.5,"b":[{"c":123456789012345678901234567890}]},'
        b'{"status":"DELIVRD"},{"smsMsgId":"m-3","status":"E200027"}]}'
    )
    decoded = records.decode(records.accepted(Kind.STATUS_REPORTS, 1, 2.0, body))
    assert [(r.event.sms_msg_id, r.via) for r in decoded] == [("m-2", "batch"), ("m-3", "batch")]  # type: ignore[union-attr]
    assert decoded[0].event.extra == {"a": 1.5, "b": [{"c": 123456789012345678901234567890}]}  # type: ignore[union-attr]
    assert [r.raw for r in decoded] == [raw for _, raw in parse_status_report_batch(body).reports]


def test_a_quarantined_body_keeps_its_bytes() -> None:
    raw = b"\xff\xfe not utf-8"
    payload = records.quarantine(None, "uplink", 3.0, "invalid_encoding", {"field": "body"}, "text/x", raw)
    [record] = records.decode(payload)
    assert isinstance(record, records.QuarantineRecord)
    assert record.raw == raw and record.detail == {"field": "body"} and record.application_id is None


@pytest.mark.parametrize(
    "payload",
    [
        bytes([9]) + b"\0" * 20,  # a newer release's version
        envelope.encode(Kind.STATUS_REPORT, 1, 1.0, b"status=DELIVRD"),  # a body no parser takes
        envelope.encode(Kind.STATUS_REPORT, None, 1.0, b"smsMsgId=a&status=DELIVRD"),  # no application
    ],
)
def test_a_record_that_holds_nothing_storable_is_an_error_not_a_guess(payload: bytes) -> None:
    with pytest.raises((ValueError, ProtocolError)):
        records.decode(payload)


def test_a_version_1_journal_still_decodes() -> None:
    """A segment written by the release that journaled parsed fields as JSON (frozen sample)."""
    data = (FIXTURES / "journal-v1" / "000000000001.seg").read_bytes()
    decoded = [r for payload, _ in frames.decode(data) for r in records.decode(payload)]
    kinds = [type(r).__name__ for r in decoded]
    assert kinds == ["ReportRecord", "ReportRecord", "UplinkRecord", "QuarantineRecord"]
    form, batch, uplink, refused = decoded
    assert isinstance(form, records.ReportRecord) and form.event.sms_msg_id == "v1-form" and form.event.extend == "你"
    assert isinstance(batch, records.ReportRecord) and batch.event.extra == {"big": 123456789012345678901234567890}
    assert isinstance(uplink, records.UplinkRecord) and uplink.event.body == "退订"
    assert isinstance(refused, records.QuarantineRecord) and refused.raw == b"smsMsgId=v1-bad"


def test_a_version_1_journal_left_by_a_dead_worker_replays_into_postgresql(db_url: str, tmp_path: Path) -> None:
    """After an upgrade, the old release's journal (a worker folder whose lock is free) is stored."""
    root = tmp_path / "journal"
    folder = root / "w-0123456789abcdef0123456789abcdef"
    folder.mkdir(parents=True)
    (folder / "lock").touch()
    shutil.copy(FIXTURES / "journal-v1" / "000000000001.seg", folder)

    async def scenario() -> list[object]:
        conn = await asyncpg.connect(db_url)
        try:
            await conn.execute(
                "INSERT INTO applications (id, name, token_hash) OVERRIDING SYSTEM VALUE VALUES (1, 'old', $1)", b"h"
            )
        finally:
            await conn.close()
        writer = writer_process.build(Settings(database_url=db_url, journal_dir=root))
        task = asyncio.create_task(writer.run())
        try:
            assert await writer.stop(10)
        finally:
            task.cancel()
            writer.reader.close()
        conn = await asyncpg.connect(db_url)
        try:
            return [
                sorted(r["sms_msg_id"] for r in await conn.fetch("SELECT sms_msg_id FROM status_reports")),
                [(r["sms_msg_id"], r["body"]) for r in await conn.fetch("SELECT sms_msg_id, body FROM uplinks")],
                await conn.fetchval("SELECT count(*) FROM quarantine"),
                await conn.fetchval("SELECT state FROM message_states WHERE sms_msg_id = 'v1-batch'"),
            ]
        finally:
            await conn.close()

    assert run(scenario()) == [["v1-batch", "v1-form"], [("v1-up", "退订")], 1, "failed"]
    assert not folder.exists(), "the stored folder of a gone worker is deleted"
