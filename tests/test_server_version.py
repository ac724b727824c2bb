"""A PostgreSQL older than the migrations need: one clear line, nothing applied, no connection left.

The migrations need PostgreSQL 16 or later (``migrate.MINIMUM_SERVER``). On 15 a migration
would fail halfway through the set with a syntax error; the commands say so up front instead.
The test runs Debian's PostgreSQL 15 server (``postgresql-15``) where it is installed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from support import cli, free_port, run, service_env, world_readable_tmpdir

from receiver import writer_process
from receiver.db import migrate

PG15 = Path("/usr/lib/postgresql/15/bin")


def _as_postgres(argv: list[str]) -> list[str]:
    """PostgreSQL refuses root: as root, run it as the ``postgres`` user Debian's package made."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@pytest.fixture(scope="module")
def postgres_15() -> Iterator[str]:
    if not (PG15 / "postgres").exists():
        pytest.skip("Debian's PostgreSQL 15 server is not installed")
    base = world_readable_tmpdir("receiver-pg15-")
    data, port = base / "data", free_port()
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
    subprocess.run(_as_postgres([str(PG15 / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]),
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run(_as_postgres([str(PG15 / "pg_ctl"), "-D", str(data), "-w", "-l", str(base / "log"),
                                 "-o", f"-p {port} -k {base} -c listen_addresses=127.0.0.1", "start"]),
                   check=True, capture_output=True)  # fmt: skip
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_postgres([str(PG15 / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       check=False, capture_output=True)  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)


async def _tables(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        return [r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    finally:
        await conn.close()


@pytest.mark.parametrize("command", [["migrate"], ["serve", "--port", "0"]])
def test_postgresql_15_is_refused_in_one_line_before_anything_is_applied(
    postgres_15: str, tmp_path: Path, command: list[str]
) -> None:
    done = cli(*command, env=service_env(tmp_path, postgres_15), check=False)
    assert done.returncode == 2
    assert done.stderr.startswith("receiver: PostgreSQL 15.")
    assert "receiver needs PostgreSQL 16 or later" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert run(_tables(postgres_15)) == []  # not even schema_migrations


def test_the_check_passes_on_the_server_the_tests_use(pg_server_url: str) -> None:
    async def check() -> int:
        conn = await asyncpg.connect(pg_server_url)
        try:
            migrate.check_server(conn)
            return conn.get_server_version().major
        finally:
            await conn.close()

    assert run(check()) >= migrate.MINIMUM_SERVER


def test_a_writer_that_meets_postgresql_15_reports_it_and_leaves_no_connection_open(postgres_15: str) -> None:
    async def scenario() -> tuple[str, int]:
        with pytest.raises(migrate.UnsupportedServer) as refused:
            await writer_process.connector(postgres_15)()
        conn = await asyncpg.connect(postgres_15)
        try:
            for _ in range(50):  # a backend whose client went away ends a moment later
                left = int(await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'receiver-writer'"))  # fmt: skip
                if left == 0:
                    break
                await asyncio.sleep(0.1)
            return str(refused.value), left
        finally:
            await conn.close()

    reason, left = run(scenario())
    assert reason.startswith("PostgreSQL 15.") and left == 0


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
