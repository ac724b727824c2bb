"""Plain numbered SQL migrations: applied in order, each once, one process at a time.

They ship inside the package as ``receiver.migrations`` (``sql/`` in the repository) and are read
through ``importlib.resources``; ``RECEIVER_MIGRATIONS_DIR`` names another folder instead.

Each applied migration is recorded in ``schema_migrations`` with the SHA-256 of its file. A set of
migrations that is missing or unreadable, or an applied migration whose file no longer has that
checksum, is a broken installation (``BrokenInstallation``): the commands stop with one line
instead of serving on a schema they cannot vouch for.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import re
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path

import asyncpg

# Any constant works; it only has to be the same for every receiver process.
_LOCK_ID = 0x5245_4356  # "RECV"
_FILE_NAME = re.compile(r"[0-9][^/]*\.sql")


class BrokenInstallation(Exception):
    """The migrations cannot be trusted. Deliberately no ``OSError``: a database that is away
    is one, and must never be mistaken for this."""


# The oldest PostgreSQL the migrations run on: their functions write constants as hexadecimal
# integers (sql/016, sql/019), which PostgreSQL reads from 16 on. The test suite runs on the
# embedded PostgreSQL 18; it passes on 16.14 too.
MINIMUM_SERVER = 16
_MAJOR = re.compile(r"[0-9]+")


class UnsupportedServer(BrokenInstallation):
    """PostgreSQL older than :data:`MINIMUM_SERVER`. Nothing is applied (a migration would fail
    halfway through the set); the commands stop with one line, as for a broken installation."""


class MigrationsMissing(BrokenInstallation):
    """No migration where we look: starting would leave the database without tables."""


class MigrationUnreadable(BrokenInstallation):
    """A migration file exists but cannot be read (permissions, a dangling link, not UTF-8)."""


class MigrationChanged(BrokenInstallation):
    """An applied migration's file differs from what was applied."""


@dataclass(frozen=True)
class Migration:
    version: str  # the file name without ".sql", as recorded in schema_migrations
    sql: str
    checksum: str  # SHA-256 of the file's bytes

    @property
    def file_name(self) -> str:
        return f"{self.version}.sql"


def _fix() -> str:
    if os.environ.get("RECEIVER_MIGRATIONS_DIR"):
        return "fix RECEIVER_MIGRATIONS_DIR, or unset it to use the migrations installed with receiver"
    return "this installation of receiver is broken: reinstall it"


def source() -> Traversable:
    """Where the migrations are read from: ``RECEIVER_MIGRATIONS_DIR``, else the package's own."""
    configured = os.environ.get("RECEIVER_MIGRATIONS_DIR")
    if configured:
        return Path(configured)
    try:
        return importlib.resources.files("receiver.migrations")
    except ModuleNotFoundError:
        raise MigrationsMissing(f"this installation has no package receiver.migrations: {_fix()}") from None


def _entries(folder: Traversable) -> list[Traversable]:
    try:
        found = [entry for entry in folder.iterdir() if _FILE_NAME.fullmatch(entry.name)]
    except OSError:  # no such folder, or not one
        found = []
    if not found:
        raise MigrationsMissing(f"no SQL migrations in {folder}: {_fix()}")
    return sorted(found, key=lambda entry: entry.name)


def available(directory: Traversable | None = None) -> list[Migration]:
    """Every migration, read whole (so that a broken file shows before anything starts)."""
    folder = directory if directory is not None else source()
    migrations = []
    for entry in _entries(folder):
        try:
            raw = entry.read_bytes()
            sql = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else type(error).__name__
            raise MigrationUnreadable(f"cannot read migration {entry} ({reason}): {_fix()}") from None
        migrations.append(Migration(entry.name.removesuffix(".sql"), sql, hashlib.sha256(raw).hexdigest()))
    return migrations


def verify(applied: dict[str, str], migrations: list[Migration]) -> None:
    """Raise ``MigrationChanged`` when a file's checksum differs from the one recorded when it
    was applied. Versions recorded but not shipped (a newer release migrated this database
    while an older one still runs) are no error."""
    changed = [m.file_name for m in migrations if applied.get(m.version, m.checksum) != m.checksum]
    if changed:
        raise MigrationChanged(
            f"applied migration{'s' if len(changed) > 1 else ''} {', '.join(changed)} changed since"
            f" {'they were' if len(changed) > 1 else 'it was'} applied (checksum differs from"
            f" schema_migrations): a released migration is never edited; {_fix()}"
        )


def refusal(server_version: str) -> str | None:
    """Why a server that reports ``server_version`` ("15.18 (Debian 15.18-0+deb12u1)") cannot
    hold the schema; None when it can."""
    major = _MAJOR.match(server_version)
    if major is None or int(major.group()) >= MINIMUM_SERVER:
        return None
    return (
        f"PostgreSQL {server_version.split()[0]} is too old: receiver needs PostgreSQL {MINIMUM_SERVER} or"
        " later (point RECEIVER_DATABASE_URL at one, or unset it for the embedded PostgreSQL)"
    )


def check_server(conn: asyncpg.Connection) -> None:
    """Raise ``UnsupportedServer`` when the server is older than :data:`MINIMUM_SERVER`."""
    reason = refusal(conn.get_settings().server_version)
    if reason is not None:
        raise UnsupportedServer(reason)


async def apply(conn: asyncpg.Connection, directory: Traversable | None = None) -> list[str]:
    """Apply what is missing; return the versions applied now. Safe to run twice, or twice at once.
    Checks the server's version (``UnsupportedServer``) and every applied migration's checksum
    first (``MigrationChanged``)."""
    todo = available(directory)
    check_server(conn)
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version text PRIMARY KEY,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
        done = {row["version"]: row["checksum"] for row in rows}
        verify(done, todo)
        applied = []
        for migration in todo:
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)",
                    migration.version,
                    migration.checksum,
                )
            applied.append(migration.version)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)


async def pending(conn: asyncpg.Connection, directory: Traversable | None = None) -> list[str]:
    """Versions not applied yet (for readiness)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    done = set()
    if exists:
        done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
    names = [entry.name for entry in _entries(directory if directory is not None else source())]
    return [version for name in names if (version := name.removesuffix(".sql")) not in done]
