"""Huawei SMS applications: each has a secret token that is the only key to its callback URLs.

The token is 192 random bits, shown once at creation; only its SHA-256 is stored. Every worker
keeps the token hashes in memory, so the callback path looks an application up without I/O.

An application may also have push keys (up to two AK/SK pairs, for rotation): its pushes must
then carry a valid ``SDK-HMAC-SHA256`` signature (``receiver.protocol.signature``). Workers keep
those in memory too, so verification needs no I/O either.

An application may also have a source allow-list (CIDRs): its pushes must then come from one of
those networks (``receiver.netaddr``; 403 otherwise). Workers keep it in memory as well.

An application may also have reply numbers: the 106... numbers its recipients see and reply to.
A reply to a number that starts with one of them belongs to that application, and answers one of
its sends (``receiver.correlation.links``). The callback path never reads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import asyncpg

from . import db
from .correlation import links
from .netaddr import MAX_SOURCES, IPNetwork, parse_network

CALLBACK_PATHS = {
    "status_report_url": "status-report",
    "batch_status_report_url": "status-reports",
    "uplink_url": "uplink",
}


MAX_PUSH_KEYS = 2


@dataclass(frozen=True, slots=True)
class Application:
    id: int
    name: str
    # (access key, secret key) pairs; empty: pushes are not signed. Never in a repr or a log line.
    push_key_pairs: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    # networks its pushes may come from; empty: any source
    allowed_sources: tuple[IPNetwork, ...] = ()

    @property
    def push_keys(self) -> dict[str, str]:
        """Access key -> secret key."""
        return dict(self.push_key_pairs)


def parse_push_key(value: str) -> tuple[str, str]:
    """``AK:SK`` as given on the command line (the secret may itself contain ``:``)."""
    access_key, sep, secret_key = value.partition(":")
    access_key = access_key.strip()
    if not sep or not access_key or not secret_key:
        raise ValueError("a push key is AK:SK, both non-empty")
    if any(c == "," or c.isspace() for c in access_key):
        raise ValueError("an access key contains no comma and no blank")
    return access_key, secret_key


def new_token() -> str:
    """192 random bits, URL-safe; never starting with ``-``, which a command line would take
    for an option (``receiver simulate --token -x...``)."""
    while (token := secrets.token_urlsafe(24)).startswith("-"):
        pass
    return token


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def callback_urls(base_url: str, token: str) -> dict[str, str]:
    return {key: f"{base_url}/callbacks/{token}/{path}" for key, path in CALLBACK_PATHS.items()}


async def create(
    conn: asyncpg.Connection, name: str, channels: list[str], allowed_sources: Sequence[IPNetwork] = ()
) -> tuple[Application, str]:
    """Register an application; return it with its token (the only time the token is known)."""
    token = new_token()
    row = await conn.fetchrow(
        "INSERT INTO applications (name, token_hash, channels, allowed_sources) VALUES ($1, $2, $3, $4)"
        " RETURNING id, name",
        name,
        token_hash(token),
        channels,
        _checked(allowed_sources),
    )
    assert row is not None
    return Application(row["id"], row["name"], allowed_sources=tuple(allowed_sources)), token


def _checked(networks: Sequence[IPNetwork]) -> list[IPNetwork]:
    if len(networks) > MAX_SOURCES:
        raise ValueError(f"at most {MAX_SOURCES} allowed sources per application")
    return list(networks)


async def set_allowed_sources(conn: asyncpg.Connection, name: str, networks: Sequence[IPNetwork]) -> bool:
    """Replace the networks the application's pushes may come from (none: any source). Returns
    False when there is no such application. Workers pick the change up within
    :attr:`Registry.max_age` seconds."""
    done = await conn.fetchval(
        "UPDATE applications SET allowed_sources = $2 WHERE name = $1 RETURNING true", name, _checked(networks)
    )
    return bool(done)


_REPLY_NUMBER = re.compile(r"[0-9]{4,21}")


def parse_reply_number(value: str) -> str:
    """A number recipients reply to, as the platform sends it in an uplink's ``to``: 4 to 21
    digits (``1069...``); blanks and dashes as written in a console are dropped."""
    number = re.sub(r"[\s-]", "", value)
    if not _REPLY_NUMBER.fullmatch(number):
        raise ValueError(f"{value!r} is not a reply number (4 to 21 digits, such as 10691002019)")
    return number


class ReplyNumberTaken(ValueError):
    """A reply number belongs to another application."""


async def change_reply_numbers(
    conn: asyncpg.Connection, name: str, add: Sequence[str], remove: Sequence[str], window: timedelta
) -> list[str] | None:
    """Give the application ``add`` and take ``remove`` from it, then link again the replies to
    numbers they start (the report window as in :mod:`receiver.correlation.links`). Returns its
    reply numbers, or None when there is no such application. ReplyNumberTaken when one of ``add``
    is another application's."""
    async with conn.transaction():
        app_id = await conn.fetchval("SELECT id FROM applications WHERE name = $1", name)
        if app_id is None:
            return None
        if add:
            await conn.execute(
                "INSERT INTO reply_numbers (number, application_id) SELECT unnest($1::text[]), $2"
                " ON CONFLICT (number) DO NOTHING",
                sorted(set(add)),
                app_id,
            )
            taken = await conn.fetch(
                "SELECT r.number, a.name FROM reply_numbers r JOIN applications a ON a.id = r.application_id"
                " WHERE r.number = ANY($1::text[]) AND r.application_id <> $2 ORDER BY r.number",
                list(add),
                app_id,
            )
            if taken:
                owners = ", ".join(f"{r['number']} is {r['name']!r}'s" for r in taken)
                raise ReplyNumberTaken(f"a reply number belongs to one application: {owners}")
        if remove:
            await conn.execute(
                "DELETE FROM reply_numbers WHERE application_id = $1 AND number = ANY($2::text[])", app_id, list(remove)
            )
        await links.relink_reply_numbers(conn, [*add, *remove], window)
        rows = await conn.fetch("SELECT number FROM reply_numbers WHERE application_id = $1 ORDER BY number", app_id)
    return [r["number"] for r in rows]


async def set_push_keys(conn: asyncpg.Connection, name: str, pairs: Sequence[tuple[str, str]]) -> bool:
    """Replace the application's push keys by ``pairs`` (none: pushes are no longer verified).
    Returns False when there is no such application. Workers pick the change up within
    :attr:`Registry.max_age` seconds, at once for a new access key."""
    if len(pairs) > MAX_PUSH_KEYS:
        raise ValueError(f"at most {MAX_PUSH_KEYS} push keys per application")
    if len({ak for ak, _ in pairs}) != len(pairs):
        raise ValueError("the access keys must differ")
    async with conn.transaction():
        app_id = await conn.fetchval("SELECT id FROM applications WHERE name = $1 FOR UPDATE", name)
        if app_id is None:
            return False
        await conn.execute("DELETE FROM push_keys WHERE application_id = $1", app_id)
        await conn.executemany(
            "INSERT INTO push_keys (application_id, slot, access_key, secret_key) VALUES ($1, $2, $3, $4)",
            [(app_id, slot, ak, sk) for slot, (ak, sk) in enumerate(pairs, start=1)],
        )
    return True


class Registry:
    """Token hash -> application, refreshed from the database on a miss (at most every ``min_interval`` s),
    and in the background when a callback finds it older than ``max_age`` s (so that a removed
    push key stops working).

    A copy is kept in ``snapshot``, so that a worker that starts while PostgreSQL is down still
    knows the applications and keeps acknowledging from the journal. It holds token hashes, the
    source allow-lists and the push keys' secrets (without them an application with push keys could only refuse every
    push, or accept unverified ones, while the database is away): the file is written ``0600``,
    beside the journal, which is as sensitive.
    """

    def __init__(self, snapshot: Path | None = None, min_interval: float = 1.0, max_age: float = 10.0) -> None:
        self._apps: dict[bytes, Application] = {}
        self._snapshot = snapshot
        self._min_interval = min_interval
        self.max_age = max_age
        self._loaded_at = float("-inf")
        self._refreshing: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._apps)

    async def load(self, conn: db.Connection) -> None:
        rows = await conn.fetch("SELECT id, name, token_hash, allowed_sources FROM applications")
        keys: dict[int, list[tuple[str, str]]] = {}
        for k in await conn.fetch("SELECT application_id, access_key, secret_key FROM push_keys ORDER BY slot"):
            keys.setdefault(k["application_id"], []).append((k["access_key"], k["secret_key"]))
        apps = {
            bytes(r["token_hash"]): Application(
                r["id"], r["name"], tuple(keys.get(r["id"], ())), tuple(r["allowed_sources"])
            )
            for r in rows
        }
        self._loaded_at = time.monotonic()
        if apps != self._apps:
            self._apps = apps
            await asyncio.to_thread(self._save)

    def load_snapshot(self) -> None:
        if self._snapshot is None:
            return
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            data = json.loads(self._snapshot.read_text())
            self._apps = {
                bytes.fromhex(h): Application(
                    a["id"],
                    a["name"],
                    tuple((str(ak), str(sk)) for ak, sk in a.get("push_keys", ())),
                    tuple(parse_network(n) for n in a.get("allowed_sources", ())),
                )
                for h, a in data.items()
            }

    def _save(self) -> None:
        if self._snapshot is None:
            return
        data = {
            h.hex(): {
                "id": a.id,
                "name": a.name,
                "push_keys": [list(pair) for pair in a.push_key_pairs],
                "allowed_sources": [str(n) for n in a.allowed_sources],
            }
            for h, a in self._apps.items()
        }
        staging = self._snapshot.with_name(f".{self._snapshot.name}.{os.getpid()}")
        with contextlib.suppress(OSError):
            self._snapshot.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with open(fd, "w") as f:
                os.fchmod(fd, 0o600)  # an older staging file may have been wider
                f.write(json.dumps(data))
            staging.replace(self._snapshot)

    def known(self, token: str, pool: asyncpg.Pool | None) -> Application | None:
        """The application of ``token`` if this worker knows it (no I/O, no await: the callback
        path's usual case); an old copy is refreshed in the background."""
        app = self._apps.get(token_hash(token))
        if app is not None and pool is not None and time.monotonic() - self._loaded_at >= self.max_age:
            self._start_refresh(pool)
        return app

    async def lookup(self, token: str, pool: asyncpg.Pool | None, *, refresh: bool = False) -> Application | None:
        """The application of ``token``. On a miss, or with ``refresh`` (say, a push signed with an
        access key not known yet), read the database first: at most once every ``min_interval``
        s, so a miss soon after the last read waits for the next one (an application made a
        moment ago must not lose its first push; a flood of unknown tokens costs one read a
        second), and a miss while a read is on its way waits for that one."""
        key = token_hash(token)
        app = self._apps.get(key)
        if pool is None:
            return app
        if app is not None and not refresh:
            if time.monotonic() - self._loaded_at >= self.max_age:
                self._start_refresh(pool)  # in the background: this callback goes on with what we know
            return app
        if app is None and self._refreshing is not None and not self._refreshing.done():
            # A read is on its way (another callback's miss a moment ago, say the first ones of
            # an application just made, arriving together): its result, not the next read's.
            await asyncio.shield(self._refreshing)
            app = self._apps.get(key)
            if app is not None:
                return app
        wait = self._loaded_at + self._min_interval - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        await asyncio.shield(self._start_refresh(pool))
        return self._apps.get(key)

    def _start_refresh(self, pool: asyncpg.Pool) -> asyncio.Task[None]:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._refresh(pool))
        return self._refreshing

    async def _refresh(self, pool: asyncpg.Pool) -> None:
        self._loaded_at = time.monotonic()
        try:
            async with pool.acquire(timeout=2) as conn:
                await self.load(conn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            pass  # the database is away: keep what we know
