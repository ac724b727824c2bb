"""A broken installation stops ``receiver serve`` at start with one line and a non-zero exit;
a database that is merely away does not (tests/test_service.py, ...while_postgres_is_down)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support import cli, fetch, free_port, run, service_env

from receiver.db import migrate

SQL = Path(__file__).resolve().parent.parent / "sql"


def serve_once(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``receiver serve``, expected to stop by itself."""
    argv = [sys.executable, "-m", "receiver", "serve", "--port", str(free_port()), "--workers", "1"]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def copy_of_sql(folder: Path) -> Path:
    shutil.copytree(SQL, folder, ignore=shutil.ignore_patterns("__init__.py", "__pycache__"))
    return folder


def nothing(folder: Path) -> None:
    shutil.rmtree(folder)


def no_sql_file(folder: Path) -> None:
    for path in folder.glob("*.sql"):
        path.unlink()


def dangling_link(folder: Path) -> None:
    target = folder / "005_dashboards.sql"
    target.unlink()
    target.symlink_to(folder / "gone.sql")


def not_utf8(folder: Path) -> None:
    (folder / "005_dashboards.sql").write_bytes(b"SELECT '\xff\xfe';\n")


def a_folder(folder: Path) -> None:
    (folder / "005_dashboards.sql").unlink()
    (folder / "005_dashboards.sql").mkdir()


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (nothing, "no SQL migrations in"),
        (no_sql_file, "no SQL migrations in"),
        (dangling_link, "cannot read migration"),
        (not_utf8, "cannot read migration"),
        (a_folder, "cannot read migration"),
    ],
)
def test_serve_refuses_missing_or_unreadable_migrations(
    damage: Callable[[Path], None], says: str, db_url: str, tmp_path: Path
) -> None:
    folder = copy_of_sql(tmp_path / "sql")
    damage(folder)
    env = service_env(tmp_path / "data", db_url, RECEIVER_MIGRATIONS_DIR=str(folder))
    result = serve_once(env)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("receiver: ") and says in result.stderr
    assert "RECEIVER_MIGRATIONS_DIR" in result.stderr  # what to fix
    if damage is not nothing and damage is not no_sql_file:
        assert "005_dashboards.sql" in result.stderr


def test_migrations_missing_stop_serve_even_when_the_database_is_away(tmp_path: Path) -> None:
    """Checked before PostgreSQL is tried: never mistaken for an outage (the journal would then
    acknowledge callbacks for applications it cannot know)."""
    away = f"postgresql://receiver@127.0.0.1:{free_port()}/receiver"
    env = service_env(tmp_path / "data", away, RECEIVER_MIGRATIONS_DIR=str(tmp_path / "nowhere"))
    result = serve_once(env)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.count("\n") == 1 and "no SQL migrations in" in result.stderr


def test_an_applied_migration_whose_file_changed_stops_serve_and_migrate(
    empty_db_url: str, tmp_path: Path
) -> None:
    folder = copy_of_sql(tmp_path / "sql")
    env = service_env(tmp_path / "data", empty_db_url, RECEIVER_MIGRATIONS_DIR=str(folder))
    assert cli("migrate", env=env).stdout.startswith("applied ")
    with (folder / "005_dashboards.sql").open("a") as f:
        f.write("-- edited after release\n")
    result = serve_once(env)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.count("\n") == 1
    assert "005_dashboards.sql" in result.stderr and "changed" in result.stderr
    again = cli("migrate", env=env, check=False)
    assert (again.returncode, again.stderr) == (2, result.stderr)


def test_new_migrations_apply_over_checksums_recorded_before(empty_db_url: str, tmp_path: Path) -> None:
    """A database migrated by an earlier release (fewer files, same checksums) takes the new ones;
    versions it has that this release does not ship (a newer release ran) are no error."""
    folder = copy_of_sql(tmp_path / "sql")
    newest = max(folder.glob("*.sql"))
    held_back = newest.read_bytes()
    newest.unlink()
    env = service_env(tmp_path / "data", empty_db_url, RECEIVER_MIGRATIONS_DIR=str(folder))
    cli("migrate", env=env)
    newest.write_bytes(held_back)
    assert cli("migrate", env=env).stdout.strip() == f"applied 1 migration(s): {newest.stem}"
    run(
        fetch(
            empty_db_url,
            "INSERT INTO schema_migrations (version, checksum) VALUES ('999_later', 'x') RETURNING 1",
        )
    )
    assert cli("migrate", env=env).stdout.strip() == "applied 0 migration(s)"
    rows = run(
        fetch(empty_db_url, "SELECT version, checksum FROM schema_migrations WHERE version <> '999_later'")
    )
    assert {r["version"]: r["checksum"] for r in rows} == {
        m.version: m.checksum for m in migrate.available(folder)
    }


def test_the_package_reads_its_own_migrations_without_the_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECEIVER_MIGRATIONS_DIR", raising=False)
    shipped = migrate.available()
    assert [m.file_name for m in shipped] == sorted(p.name for p in SQL.glob("[0-9]*.sql"))
    assert all(m.sql == (SQL / m.file_name).read_text() for m in shipped)
