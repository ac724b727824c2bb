"""API keys for the downstream services that call ``/v1``: random, shown once, stored as SHA-256."""

from __future__ import annotations

import hashlib
import secrets
import time

import asyncpg

PREFIX = "rcv_"


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


async def create(conn: asyncpg.Connection, name: str) -> str:
    key = new_key()
    await conn.execute("INSERT INTO api_keys (name, key_hash) VALUES ($1, $2)", name, key_hash(key))
    return key


class KeyCache:
    """Which key hashes are valid, refreshed from the database at most every ``ttl`` seconds."""

    def __init__(self, ttl: float = 5.0) -> None:
        self._valid: dict[bytes, str] = {}
        self._loaded_at = float("-inf")
        self._ttl = ttl

    async def name_of(self, key: str, pool: asyncpg.Pool) -> str | None:
        digest = key_hash(key)
        name = self._valid.get(digest)
        age = time.monotonic() - self._loaded_at
        if (name is None and age > 1.0) or age > self._ttl:  # a miss may be a new key; a hit may be revoked
            self._loaded_at = time.monotonic()
            async with pool.acquire(timeout=5) as conn:
                rows = await conn.fetch("SELECT name, key_hash FROM api_keys WHERE revoked_at IS NULL")
            self._valid = {bytes(r["key_hash"]): r["name"] for r in rows}
            name = self._valid.get(digest)
        return name
