"""The growth benchmark (bench/storage.py) says where the database's files are, and how that file
system's discards and compression bear on what it measures, and it knows how much room a fill takes."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from support import run

from bench import storage
from receiver.correlation import queries
from receiver.protocol.status_report import parse_status_report_form
from receiver.protocol.uplink import parse_uplink_form

MOUNTS = """\
/dev/vda / ext4 rw,relatime,discard,errors=remount-ro 0 0
/dev/vdb /srv/pg xfs rw,noatime 0 0
/dev/loop0 /mnt/z btrfs rw,noatime,compress-force=zstd:1,discard=async,space_cache=v2 0 0
/dev/loop1 /mnt/z/plain btrfs rw,noatime,compress=no,space_cache=v2 0 0
"""


@pytest.mark.parametrize(
    ("path", "described"),
    [
        ("/var/lib/pg", "ext4 at / (online discard)"),
        ("/srv/pg/data", "xfs at /srv/pg (no online discard)"),
        (
            "/mnt/z/pg",
            "btrfs at /mnt/z (online discard, queued, compressed: zstd:1; a GB of the database takes less on the disk)",
        ),
        ("/mnt/z/plain/pg", "btrfs at /mnt/z/plain (no online discard)"),  # the longest mount point wins
    ],
)
def test_the_file_system_of_the_database(path: str, described: str) -> None:
    assert storage.file_system(path, MOUNTS) == described


def test_a_fill_needs_room_for_the_reports_it_adds() -> None:
    assert storage.space_needed(0, 1_000_000) == 2_050_000_000
    assert storage.space_needed(1_000_000, 10_000_000) == 9 * 2_050_000_000
    assert storage.space_needed(10_000_000, 1_000_000) == 0  # nothing to add


def test_the_bytes_read_from_the_disks(tmp_path: Path) -> None:
    vmstat = tmp_path / "vmstat"
    vmstat.write_text("nr_free_pages 1000\npgpgin 2048\npgpgout 4096\n")
    assert storage.disk_reads(vmstat) == 2 * 1024 * 1024  # pgpgin counts KiB
    assert storage.disk_reads(tmp_path / "none") == 0


UUID_PART = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}_[0-9]+")


def test_the_history_has_the_platforms_ids_and_bodies(db_url: str) -> None:
    """The fill's messages carry ids of the platform's shape (a UUID and a part number), not in
    the order they were sent, and the raw bodies stored are what the platform posts: each
    report's and reply's body parses, by the service's own parser, to the row it was stored as."""

    async def go() -> tuple[list[asyncpg.Record], list[asyncpg.Record], list[asyncpg.Record]]:
        conn = await asyncpg.connect(db_url)
        try:
            await storage.fill(conn, 100_000, 2)  # a day large enough for the planner to join its replies by hash
            sends = await conn.fetch('SELECT sms_msg_id, "to", raw FROM sent_messages ORDER BY create_time')
            reports = await conn.fetch("SELECT sms_msg_id, status, raw_body FROM status_reports")
            replies = await conn.fetch('SELECT sms_msg_id, "from", raw_body FROM uplinks')
            # A service writes a day's links as the replies come: in the order of time (what the
            # planner's statistics of each day's links reflect).
            days = await conn.fetch(
                "SELECT array_agg(uplink_received_at ORDER BY ctid) AS links FROM reply_links GROUP BY tableoid"
            )
            assert days and all(row["links"] == sorted(row["links"]) for row in days)
            return sends, reports, replies
        finally:
            await conn.close()

    sends, reports, replies = run(go())
    ids = [row["sms_msg_id"] for row in sends]
    assert len(ids) >= 700 and all(UUID_PART.fullmatch(sms_msg_id) for sms_msg_id in ids)
    assert ids != sorted(ids)  # sent in an order that is not the ids' order
    assert all(json.loads(row["raw"])["smsMsgId"] == row["sms_msg_id"] for row in sends)
    assert reports and replies
    for row in reports:
        report = parse_status_report_form(row["raw_body"].encode())
        assert (report.sms_msg_id, report.status) == (row["sms_msg_id"], row["status"])
    for row in replies:
        uplink = parse_uplink_form(row["raw_body"].encode())
        assert (uplink.sms_msg_id, uplink.from_) == (row["sms_msg_id"], row["from"])


def test_the_recent_look_ups_ask_for_messages_of_the_last_three_days(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beside a day of the whole history, each round asks for a message sent in the last three
    days (the platform's push window), and the dashboards read yesterday."""
    asked: list[str] = []
    look_up = queries.message

    async def message(conn: asyncpg.Connection, sms_msg_id: str) -> object:
        asked.append(sms_msg_id)
        return await look_up(conn, sms_msg_id)

    monkeypatch.setattr(queries, "message", message)

    async def go() -> tuple[dict[str, list[float]], dict[str, date]]:
        conn = await asyncpg.connect(db_url)
        try:
            await storage.fill(conn, 1_000, 10)
            latencies = await storage.query_latencies(conn, 10, 30)
            days = {row["sms_msg_id"]: row["day"] for row in await conn.fetch(
                "SELECT sms_msg_id, (create_time AT TIME ZONE 'UTC')::date AS day FROM sent_messages"
                " WHERE sms_msg_id = ANY($1::text[])", asked,
            )}  # fmt: skip
            return latencies, days
        finally:
            await conn.close()

    latencies, days = run(go())
    assert len(latencies["GET /v1/messages/{id} (the last 3 days)"]) == 30
    assert len(latencies["dashboard_delivery_hourly (yesterday)"]) == 30
    today = datetime.now(UTC).date()
    recent = {today - timedelta(days=back) for back in (1, 2, 3)}
    stored = [sms_msg_id for sms_msg_id in asked if not sms_msg_id.startswith("unknown-")]
    assert all(sms_msg_id in days for sms_msg_id in stored)  # every message asked for is one of the fill's
    # A round asks for a message of any day first, then one of the last three days.
    assert all(days[sms_msg_id] in recent for sms_msg_id in stored[1::2])
    assert {days[sms_msg_id] for sms_msg_id in stored[::2]} - recent  # and the others from the whole history


def test_the_page_cache_is_left_as_a_service_that_wrote_its_days_in_order_has_it(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a fill (which writes the days older than those an earlier size left, so the newest
    ones first), every file of every partition is read once, oldest day first, the current
    month's indexes after the days before it, the other tables last; each read ends the file."""
    read: list[list[str]] = []
    read_in_order = storage._read_in_order

    def record(paths: list[str]) -> int:
        read.append(paths)
        return 0

    monkeypatch.setattr(storage, "_read_in_order", record)

    async def go() -> tuple[dict[str, str], int]:
        conn = await asyncpg.connect(db_url)
        try:
            await storage.fill(conn, 1_000, 10)
            data = await conn.fetchval("SHOW data_directory")
            await storage.as_written(conn, data)
            names = {f"{data}/{row['path']}": row["relname"] for row in await conn.fetch(
                "SELECT pg_relation_filepath(oid) AS path, relname FROM pg_class WHERE pg_relation_filepath(oid) IS NOT NULL"
            )}  # fmt: skip
            return names, await conn.fetchval("SELECT count(*) FROM pg_class WHERE relispartition AND relkind = 'r'")
        finally:
            await conn.close()

    names, partitions_kept = run(go())
    [paths] = read
    order = [names[path] for path in paths]
    assert len(set(order)) == len(order)  # each once
    today = datetime.now(UTC).date()
    days = [today - timedelta(days=back) for back in range(10, 0, -1)]
    reports = [order.index(f"status_reports_{day:%Y%m%d}") for day in days]
    assert reports == sorted(reports)  # the oldest day first
    assert order.index(f"message_index_{today:%Y%m}") > order.index(f"status_reports_{today - timedelta(days=1):%Y%m%d}")
    assert order.index("status_reports_default") < reports[0]  # no time: first
    assert order.index("applications") > max(i for i, name in enumerate(order) if name.startswith("events_2"))
    assert sum(1 for name in order if name.startswith("status_reports_2")) >= 10
    assert len([n for n in order if not n.endswith(("_pkey", "_idx", "_key")) and "toast" not in n]) >= partitions_kept
    # The real read: every byte of the files, once; a file dropped meanwhile is left out.
    files = [path for path in paths if Path(path).exists()][:20]
    assert read_in_order([*files, f"{files[0]}-dropped"]) == sum(Path(segment).stat().st_size for f in files for segment in storage._segments(f))
