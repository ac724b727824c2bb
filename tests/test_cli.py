"""The command line: migrations, applications, the database URL."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from support import admin, cli, fetch, run, service_env

from receiver import partitions


def test_migrate_twice_changes_nothing(empty_db_url: str, tmp_path: Path) -> None:
    env = service_env(tmp_path, empty_db_url)
    first = cli("migrate", env=env).stdout
    assert first.startswith("applied ") and not first.startswith("applied 0")
    assert cli("migrate", env=env).stdout.strip() == "applied 0 migration(s)"
    versions = [r["version"] for r in run(fetch(empty_db_url, "SELECT version FROM schema_migrations"))]
    assert versions == sorted(p.stem for p in Path("sql").glob("[0-9]*.sql"))


def test_two_migrations_at_once_apply_each_version_once(empty_db_url: str, tmp_path: Path) -> None:
    env = service_env(tmp_path, empty_db_url)
    procs = [
        subprocess.Popen([sys.executable, "-m", "receiver", "migrate"], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert sum(not out.startswith("applied 0") for out in outputs) == 1
    rows = run(fetch(empty_db_url, "SELECT version, count(*) AS n FROM schema_migrations GROUP BY version"))
    assert rows and all(r["n"] == 1 for r in rows)


def test_a_commands_output_holds_no_log_line_when_it_makes_the_days_partitions(db_url: str, tmp_path: Path) -> None:
    """A command that migrates also makes the days ahead that are missing (after midnight, on a
    database made the day before): that log line goes to standard error, not into ``--json``."""
    import json

    run(admin(db_url, "DROP TABLE " + partitions.name("events", datetime.now(UTC).date() + timedelta(days=3))))
    done = cli("app", "create", "shop", "--json", env=service_env(tmp_path, db_url))
    assert json.loads(done.stdout)["name"] == "shop"
    assert "partitions.created" in done.stderr


def test_app_create_prints_token_and_three_urls(db_url: str, tmp_path: Path) -> None:
    env = service_env(tmp_path, db_url, RECEIVER_PUBLIC_URL="https://sms.example.com/")
    import json

    created = json.loads(cli("app", "create", "shop", "--channel", "csms100000001", "--json", env=env).stdout)
    assert set(created) == {"name", "token", "status_report_url", "batch_status_report_url", "uplink_url"}
    token = created["token"]
    assert len(token) >= 32
    assert created["status_report_url"] == f"https://sms.example.com/callbacks/{token}/status-report"
    assert created["batch_status_report_url"] == f"https://sms.example.com/callbacks/{token}/status-reports"
    assert created["uplink_url"] == f"https://sms.example.com/callbacks/{token}/uplink"
    rows = run(fetch(db_url, "SELECT name, channels, token_hash FROM applications"))
    assert [(r["name"], r["channels"]) for r in rows] == [("shop", ["csms100000001"])]
    assert token.encode() not in bytes(rows[0]["token_hash"])  # stored hashed
    other = json.loads(cli("app", "create", "other", "--json", env=env).stdout)
    assert other["token"] != token


def test_app_create_refuses_a_taken_name(db_url: str, tmp_path: Path) -> None:
    env = service_env(tmp_path, db_url)
    cli("app", "create", "shop", env=env)
    again = cli("app", "create", "shop", env=env, check=False)
    assert again.returncode == 1
    assert "exists already" in again.stderr


def test_db_url_prints_the_configured_url(db_url: str, tmp_path: Path) -> None:
    env = service_env(tmp_path, db_url)
    assert cli("db", "url", env=env).stdout.strip() == db_url


def test_migrate_refuses_to_run_without_migrations(empty_db_url: str, tmp_path: Path) -> None:
    env = service_env(tmp_path, empty_db_url, RECEIVER_MIGRATIONS_DIR=str(tmp_path / "nowhere"))
    result = cli("migrate", env=env, check=False)
    assert result.returncode != 0
    assert "no SQL migrations" in result.stderr


def test_a_token_never_starts_like_an_option() -> None:
    from receiver.applications import new_token

    assert not any(new_token().startswith("-") for _ in range(2000))  # 1 in 64 would without the rule


def test_version_prints_the_installed_version(tmp_path: Path) -> None:
    from importlib.metadata import version

    result = cli("--version", env=service_env(tmp_path, None))
    assert result.stdout == f"receiver {version('receiver')}\n"


def test_a_setting_out_of_shape_is_named_in_one_line_without_a_traceback(tmp_path: Path) -> None:
    env = service_env(tmp_path, None, RECEIVER_EMBEDDED_SHARED_BUFFERS="lots", RECEIVER_PORT="eighty")
    result = cli("db", "url", env=env, check=False)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert "Traceback" not in result.stderr
    assert sorted(line.split(":")[1].strip() for line in lines) == [
        "RECEIVER_EMBEDDED_SHARED_BUFFERS=lots",
        "RECEIVER_PORT=eighty",
    ]
    assert not (tmp_path / "pgdata").exists()  # refused before anything started
