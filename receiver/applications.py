"""Huawei SMS applications: each has a secret token that is the only key to its callback URLs.

The token is 192 random bits, shown once at creation; only its SHA-256 is stored. Every worker
keeps the token hashes in memory, so the callback path looks an application up without I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

CALLBACK_PATHS = {
    "status_report_url": "status-report",
    "batch_status_report_url": "status-reports",
    "uplink_url": "uplink",
}


@dataclass(frozen=True, slots=True)
class Application:
    id: int
    name: str


def new_token() -> str:
    return secrets.token_urlsafe(24)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def callback_urls(base_url: str, token: str) -> dict[str, str]:
    return {key: f"{base_url}/callbacks/{token}/{path}" for key, path in CALLBACK_PATHS.items()}


async def create(conn: asyncpg.Connection, name: str, channels: list[str]) -> tuple[Application, str]:
    """Register an application; return it with its token (the only time the token is known)."""
    token = new_token()
    row = await conn.fetchrow(
        "INSERT INTO applications (name, token_hash, channels) VALUES ($1, $2, $3) RETURNING id, name",
        name,
        token_hash(token),
        channels,
    )
    assert row is not None
    return Application(row["id"], row["name"]), token


class Registry:
    """Token hash -> application, refreshed from the database on a miss (at most every ``min_interval`` s).

    A copy (hashes only, no secret) is kept in ``snapshot``, so that a worker that starts while
    PostgreSQL is down still knows the applications and keeps acknowledging from the journal.
    """

    def __init__(self, snapshot: Path | None = None, min_interval: float = 1.0) -> None:
        self._apps: dict[bytes, Application] = {}
        self._snapshot = snapshot
        self._min_interval = min_interval
        self._loaded_at = float("-inf")
        self._refreshing: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._apps)

    async def load(self, conn: asyncpg.Connection) -> None:
        rows = await conn.fetch("SELECT id, name, token_hash FROM applications")
        apps = {bytes(r["token_hash"]): Application(r["id"], r["name"]) for r in rows}
        self._loaded_at = time.monotonic()
        if apps != self._apps:
            self._apps = apps
            await asyncio.to_thread(self._save)

    def load_snapshot(self) -> None:
        if self._snapshot is None:
            return
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            data = json.loads(self._snapshot.read_text())
            self._apps = {bytes.fromhex(h): Application(a["id"], a["name"]) for h, a in data.items()}

    def _save(self) -> None:
        if self._snapshot is None:
            return
        data = {h.hex(): {"id": a.id, "name": a.name} for h, a in self._apps.items()}
        staging = self._snapshot.with_name(f".{self._snapshot.name}.{os.getpid()}")
        with contextlib.suppress(OSError):
            self._snapshot.parent.mkdir(parents=True, exist_ok=True)
            staging.write_text(json.dumps(data))
            staging.replace(self._snapshot)

    async def lookup(self, token: str, pool: asyncpg.Pool | None) -> Application | None:
        key = token_hash(token)
        app = self._apps.get(key)
        if app is not None or pool is None:
            return app
        if time.monotonic() - self._loaded_at >= self._min_interval:
            if self._refreshing is None or self._refreshing.done():
                self._refreshing = asyncio.ensure_future(self._refresh(pool))
            await asyncio.shield(self._refreshing)
        return self._apps.get(key)

    async def _refresh(self, pool: asyncpg.Pool) -> None:
        self._loaded_at = time.monotonic()
        try:
            async with pool.acquire(timeout=2) as conn:
                await self.load(conn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            pass  # the database is away: keep what we know
