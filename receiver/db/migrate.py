"""Plain numbered SQL migrations from ``sql/``: applied in order, each once, one process at a time."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import asyncpg

# Any constant works; it only has to be the same for every receiver process.
_LOCK_ID = 0x5245_4356  # "RECV"


class MigrationsMissing(FileNotFoundError):
    """The sql/ folder is not where we look: starting would leave the database without tables."""


@dataclass(frozen=True)
class Migration:
    version: str
    path: Path

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def migrations_dir() -> Path:
    configured = os.environ.get("RECEIVER_MIGRATIONS_DIR")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / "sql"


def available(directory: Path | None = None) -> list[Migration]:
    folder = directory or migrations_dir()
    found = [Migration(path.stem, path) for path in sorted(folder.glob("[0-9]*.sql"))]
    if not found:  # a package installed without its sql/ folder must not start on an empty schema
        raise MigrationsMissing(f"no SQL migrations in {folder}: set RECEIVER_MIGRATIONS_DIR to the sql/ folder")
    return found


async def apply(conn: asyncpg.Connection, directory: Path | None = None) -> list[str]:
    """Apply what is missing; return the versions applied now. Safe to run twice, or twice at once."""
    todo = available(directory)
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version text PRIMARY KEY,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        applied = []
        for migration in todo:
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.path.read_text())
                await conn.execute(
                    "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)",
                    migration.version,
                    migration.checksum,
                )
            applied.append(migration.version)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)


async def pending(conn: asyncpg.Connection, directory: Path | None = None) -> list[str]:
    """Versions not applied yet (for readiness)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    done = set()
    if exists:
        done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
    return [m.version for m in available(directory) if m.version not in done]
