"""Time partitions (docs/storage.md): the event tables are partitioned by day, created ahead,
a row of a day without a partition lands in the default one and moves once its day is made."""

from __future__ import annotations

from support import fetch, run


def test_migrated_database_has_day_partitions(db_url: str) -> None:
    rows = run(fetch(db_url, "SELECT partition::text AS p, is_default FROM receiver_partitions('status_reports')"))
    names = {r["p"] for r in rows}
    assert "status_reports_default" in names and "status_reports_older" in names
    assert len(names) >= 10
