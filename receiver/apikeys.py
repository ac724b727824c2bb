"""API keys for the downstream services that call ``/v1``: random, shown once, stored as SHA-256.

A key may be scoped to one application: the sends it registers belong to that application."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

import asyncpg

PREFIX = "rcv_"


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class UnknownApplication(LookupError):
    """No application has this name."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    application_id: int | None = None  # the application its sends belong to; None: unscoped


async def create(conn: asyncpg.Connection, name: str, application: str | None = None) -> str:
    """A new key named ``name``, scoped to the application named ``application`` when given."""
    key = new_key()
    inserted = await conn.fetchval(
        "INSERT INTO api_keys (name, key_hash, application_id)"
        " SELECT $1, $2, a.id FROM (SELECT NULL::integer AS id WHERE $3::text IS NULL"
        "                           UNION ALL SELECT id FROM applications WHERE name = $3) AS a"
        " RETURNING true",
        name,
        key_hash(key),
        application,
    )
    if not inserted:
        raise UnknownApplication(application)
    return key


class KeyCache:
    """Which key hashes are valid, refreshed from the database at most every ``ttl`` seconds."""

    def __init__(self, ttl: float = 5.0) -> None:
        self._valid: dict[bytes, ApiKey] = {}
        self._loaded_at = float("-inf")
        self._ttl = ttl

    async def find(self, key: str, pool: asyncpg.Pool) -> ApiKey | None:
        digest = key_hash(key)
        found = self._valid.get(digest)
        age = time.monotonic() - self._loaded_at
        if (found is None and age > 1.0) or age > self._ttl:  # a miss may be a new key; a hit may be revoked
            self._loaded_at = time.monotonic()
            async with pool.acquire(timeout=5) as conn:
                rows = await conn.fetch("SELECT name, key_hash, application_id FROM api_keys WHERE revoked_at IS NULL")
            self._valid = {bytes(r["key_hash"]): ApiKey(r["name"], r["application_id"]) for r in rows}
            found = self._valid.get(digest)
        return found
