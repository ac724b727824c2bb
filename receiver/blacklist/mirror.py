"""The blacklist's numbers in this worker's memory, for ``POST /v1/blacklist/check``.

A check of 500 numbers answered by PostgreSQL spends about a millisecond there and crosses two
processes; answered here it is a dictionary look-up per number. The copy is kept current by
PostgreSQL itself: every statement that changes ``blacklist`` sends a NOTIFY at commit naming
the numbers it changed (``*``: too many to name, or a TRUNCATE), and the mirror reads those
numbers again. Reading the table again, rather than trusting the message, makes the order of
commits and notifications harmless: one connection does every read, one after the other, so a
later read never sees an older table than an earlier one.

When the copy may answer (``live``):

- it was loaded over a connection that was already listening (nothing committed in between is
  missed), and the table has its NOTIFY trigger (``sql/013``; an older schema never notifies);
- that connection is still there: a lost one is found at once when it closes and by a
  ``SELECT 1`` every ``check_seconds`` when it dies silently, and answers stop (the check goes
  to PostgreSQL) until a new connection has loaded the whole table again.

Freshness: a change is in the copy a few milliseconds after its commit, on every worker. Who
needs to read a write at once (the API after ``PUT``/``DELETE``, the tests) calls ``sync()``: it
sends a NOTIFY of its own and returns once the mirror has read everything notified before it.

The mirror starts with the first check a worker serves, so a worker that only ingests holds no
connection and no copy. Memory: about 100 bytes per blacklisted number, per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Iterable, Sequence

import asyncpg
import structlog

log = structlog.get_logger("receiver.blacklist")

CHANNEL = "receiver_blacklist"
APPLICATION_NAME = "receiver blacklist mirror"  # in pg_stat_activity
EVERYTHING = "*"
_SYNC = "sync:"
_EVERY_CHANNEL: frozenset[str | None] = frozenset({None})
_CHUNK = 10_000


class Mirror:
    def __init__(
        self,
        dsn: str,
        pool: asyncpg.Pool,
        *,
        check_seconds: float = 2.0,
        retry_seconds: float = 1.0,
        chunk_rows: int = _CHUNK,
    ) -> None:
        self.dsn = dsn
        self.pool = pool
        self.check_seconds = check_seconds
        self.retry_seconds = retry_seconds
        self.chunk_rows = chunk_rows
        self.closed = False
        self._entries: dict[str, frozenset[str | None]] = {}
        self._loaded = False
        self._alive_at = 0.0  # monotonic time the connection last proved alive
        self._task: asyncio.Task[None] | None = None
        self._notified: list[str] = []
        self._bell = asyncio.Event()
        self._waiting: dict[str, asyncio.Future[None]] = {}

    # --- answering ----------------------------------------------------------------------------

    @property
    def live(self) -> bool:
        return self._loaded and time.monotonic() - self._alive_at < 2 * self.check_seconds + 5

    @property
    def size(self) -> int:
        return len(self._entries)

    def blacklisted(self, numbers: Iterable[str], channel: str | None = None) -> set[str] | None:
        """Which of ``numbers`` (E.164) may not be sent to (from ``channel``, when given); ``None``
        when the copy cannot answer now (ask PostgreSQL). Starts the mirror on first use."""
        self.start()
        if not self.live:
            return None
        get = self._entries.get
        if channel is None:
            return {n for n in numbers if n in self._entries}
        found = set()
        for number in numbers:
            channels = get(number)
            if channels is not None and (None in channels or channel in channels):
                found.add(number)
        return found

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None and not self.closed:
            self._task = asyncio.create_task(self._run())

    async def sync(self, conn: asyncpg.Connection | None = None, timeout: float = 5.0) -> bool:
        """Once this returns True, the copy holds every change committed before the call. False
        when the mirror is not running or not live (then checks go to PostgreSQL anyway).
        ``conn``: a connection to send the NOTIFY on (not in a transaction); default: the pool's."""
        if self._task is None or self.closed or not self.live:
            return False
        token = secrets.token_hex(8)
        done = self._waiting[token] = asyncio.get_running_loop().create_future()
        try:
            if conn is not None:
                await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, _SYNC + token)
            else:
                async with self.pool.acquire(timeout=timeout) as pooled:
                    await pooled.execute("SELECT pg_notify($1, $2)", CHANNEL, _SYNC + token)
            await asyncio.wait_for(done, timeout)
            return self.live
        except TimeoutError:
            return False
        finally:
            self._waiting.pop(token, None)

    async def close(self) -> None:
        self.closed = True
        self._loaded = False
        self._bell.set()  # a cancellation that asyncio.wait_for loses (Python 3.11) still ends the loop
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for waiting in self._waiting.values():
            if not waiting.done():
                waiting.set_result(None)

    async def _run(self) -> None:
        failing = False
        while not self.closed:
            try:
                await self._follow()
                reason = "the connection closed"
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - whatever it was: PostgreSQL answers until we are back
                reason = f"{type(error).__name__}: {error}"[:200]
            was_loaded, self._loaded = self._loaded, False
            if self.closed:
                return
            if was_loaded or not failing:
                log.warning("blacklist.mirror_lost", error=reason, retry_seconds=self.retry_seconds)
            failing = not was_loaded
            await asyncio.sleep(self.retry_seconds)

    async def _follow(self) -> None:
        """Listen, load everything, then read again what each notification names; returns or
        raises when the connection is gone."""
        conn = await asyncpg.connect(
            self.dsn, timeout=5, server_settings={"application_name": APPLICATION_NAME}
        )
        try:
            gone = asyncio.Event()
            conn.add_termination_listener(lambda _: (gone.set(), self._bell.set()))
            self._notified = []
            await conn.add_listener(CHANNEL, self._on_notify)
            if not await conn.fetchval(
                "SELECT EXISTS (SELECT FROM pg_trigger WHERE tgname = 'blacklist_notify_insert')"
            ):
                raise RuntimeError("the blacklist table has no NOTIFY trigger yet (sql/013 not applied)")
            self._entries = await self._load(conn)
            self._alive_at = time.monotonic()
            self._loaded = True
            log.info("blacklist.mirror_loaded", numbers=len(self._entries))
            while not gone.is_set() and not self.closed:
                if not self._notified:
                    try:
                        await asyncio.wait_for(self._bell.wait(), self.check_seconds)
                    except TimeoutError:
                        await asyncio.wait_for(conn.fetchval("SELECT 1"), timeout=5)
                        self._alive_at = time.monotonic()
                        continue
                    finally:
                        self._bell.clear()
                await self._catch_up(conn)
        finally:
            self._loaded = False
            conn.terminate()
            for waiting in self._waiting.values():  # their answer: not live
                if not waiting.done():
                    waiting.set_result(None)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self._notified.append(payload)
        self._bell.set()

    async def _catch_up(self, conn: asyncpg.Connection) -> None:
        """Read again what the notifications so far name, then release the ``sync()`` callers
        whose own notification was among them."""
        notified, self._notified = self._notified, []
        tokens = [p[len(_SYNC) :] for p in notified if p.startswith(_SYNC)]
        payloads = [p for p in notified if not p.startswith(_SYNC)]
        if EVERYTHING in payloads:
            self._entries = await self._load(conn)
        elif payloads:
            numbers = sorted({n for p in payloads for n in p.split(",") if n})
            rows = await conn.fetch(
                "SELECT number, channel FROM blacklist WHERE number = ANY($1::text[])", numbers
            )
            fresh = _fold(rows)
            for number in numbers:
                channels = fresh.get(number)
                if channels is None:
                    self._entries.pop(number, None)
                else:
                    self._entries[number] = channels
        self._alive_at = time.monotonic()
        for token in tokens:
            waiting = self._waiting.get(token)
            if waiting is not None and not waiting.done():
                waiting.set_result(None)

    async def _load(self, conn: asyncpg.Connection) -> dict[str, frozenset[str | None]]:
        """The whole table, read in chunks so that a large one does not hold up the event loop."""
        entries: dict[str, set[str | None]] = {}
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            cursor = await conn.cursor("SELECT number, channel FROM blacklist")
            while rows := await cursor.fetch(self.chunk_rows):
                for number, channel in rows:
                    entries.setdefault(number, set()).add(channel)
                await asyncio.sleep(0)
        return {number: _frozen(channels) for number, channels in entries.items()}


def _fold(rows: Sequence[asyncpg.Record]) -> dict[str, frozenset[str | None]]:
    entries: dict[str, set[str | None]] = {}
    for number, channel in rows:
        entries.setdefault(number, set()).add(channel)
    return {number: _frozen(channels) for number, channels in entries.items()}


def _frozen(channels: set[str | None]) -> frozenset[str | None]:
    """Most numbers are blacklisted for every channel: they share one set."""
    return _EVERY_CHANNEL if channels == {None} else frozenset(channels)
