"""A PostgreSQL older than the migrations need: one clear line, nothing applied, no connection left.

The migrations need PostgreSQL 16 or later (``migrate.MINIMUM_SERVER``). On 15 a migration
would fail halfway through the set with a syntax error; the commands say so up front instead.
The rule itself is a pure function of the version the server reports (tested below); what the
commands and the writer do with a refusal is tested on the suite's own server, with the minimum
raised above it.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
from support import run, service_env

from receiver import writer_process
from receiver.db import migrate

ABOVE = 99  # a minimum no server meets: the suite's server is then "too old"
_RAISED = (f"import sys; from receiver.db import migrate; migrate.MINIMUM_SERVER = {ABOVE}; "
           "from receiver.cli import main; sys.exit(main(sys.argv[1:]))")  # fmt: skip


async def _tables(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        return [r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    finally:
        await conn.close()


async def _major(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return conn.get_server_version().major
    finally:
        await conn.close()


@pytest.mark.parametrize("command", [["migrate"], ["serve", "--port", "0"]])
def test_a_server_below_the_minimum_is_refused_in_one_line_before_anything_is_applied(
    empty_db_url: str, tmp_path: Path, command: list[str]
) -> None:
    done = subprocess.run([sys.executable, "-c", _RAISED, *command], env=service_env(tmp_path, empty_db_url),
                          capture_output=True, text=True, check=False, timeout=120)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith(f"receiver: PostgreSQL {run(_major(empty_db_url))}.")
    assert f"receiver needs PostgreSQL {ABOVE} or later" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert run(_tables(empty_db_url)) == []  # not even schema_migrations


def test_the_check_passes_on_the_server_the_tests_use(pg_server_url: str) -> None:
    async def check() -> int:
        conn = await asyncpg.connect(pg_server_url)
        try:
            migrate.check_server(conn)
            return conn.get_server_version().major
        finally:
            await conn.close()

    assert run(check()) >= migrate.MINIMUM_SERVER


def test_a_writer_that_meets_a_server_below_the_minimum_reports_it_and_leaves_no_connection_open(
    empty_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(migrate, "MINIMUM_SERVER", ABOVE)

    async def scenario() -> tuple[str, int]:
        with pytest.raises(migrate.UnsupportedServer) as refused:
            await writer_process.connector(empty_db_url)()
        conn = await asyncpg.connect(empty_db_url)
        try:
            for _ in range(50):  # a backend whose client went away ends a moment later
                left = int(await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE application_name = 'receiver-writer' AND datname = current_database()"))  # fmt: skip
                if left == 0:
                    break
                await asyncio.sleep(0.1)
            return str(refused.value), left
        finally:
            await conn.close()

    reason, left = run(scenario())
    assert reason.startswith("PostgreSQL ") and f"needs PostgreSQL {ABOVE} or later" in reason and left == 0


@pytest.mark.parametrize(
    ("server_version", "refused"),
    [("15.18 (Debian 15.18-0+deb12u1)", True), ("9.6.24", True), ("16.14", False), ("18.4", False),
     ("17beta1", False)],
)  # fmt: skip
def test_servers_before_16_are_refused_by_their_reported_version(server_version: str, refused: bool) -> None:
    reason = migrate.refusal(server_version)
    assert (reason is not None) == refused
    if reason is not None:
        assert reason.startswith(f"PostgreSQL {server_version.split()[0]} is too old")
