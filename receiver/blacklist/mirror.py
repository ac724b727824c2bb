"""The blacklist's numbers in this worker's memory, for ``POST /v1/blacklist/check``.

A check of 500 numbers answered by PostgreSQL spends about a millisecond there and crosses two
processes; answered here it is a dictionary look-up per number. The copy is kept current by
PostgreSQL itself: every statement that changes ``blacklist`` sends a NOTIFY at commit naming
the numbers it changed (``*``: too many to name, or a TRUNCATE), and the mirror reads those
numbers again. Reading the table again, rather than trusting the message, makes the order of
commits and notifications harmless: one connection does every read, one after the other, so a
later read never sees an older table than an earlier one.

The copy answers (``live``) only while it cannot be behind by more than a moment:

- it was loaded over a connection that was already listening (nothing committed in between is
  missed), and the table's four NOTIFY triggers exist and fire for every session (``sql/013``:
  ``ENABLE ALWAYS``, so that restores and replication apply notify too);
- it has heard from PostgreSQL within ``max_silence_seconds`` (a ping every ``ping_seconds``,
  which also checks the triggers again): a connection that closes is noticed at once, one that
  dies silently within that bound; then checks go to PostgreSQL until a new connection has
  loaded the whole table again;
- it is not reloading the whole table (after a ``*``: until then PostgreSQL answers);
- every ``audit_seconds`` it compares its count of numbers with the table's; a difference is
  logged (``blacklist.mirror_diverged``) and the table loaded again.

Freshness: a change is in the copy a few milliseconds after its commit, on every worker. Who
needs to read a write at once (the API after ``PUT``/``DELETE``, the tests) calls ``sync()``: it
sends a NOTIFY of its own and returns once the mirror has read everything notified before it.

The mirror starts with the first check a worker serves, so a worker that only ingests holds no
connection and no copy. Memory: about 100 bytes per blacklisted number, per worker (twice that
while a reload builds the new copy beside the old).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Iterable, Sequence

import asyncpg
import structlog

log = structlog.get_logger("receiver.blacklist")

CHANNEL = "receiver_blacklist"
APPLICATION_NAME = "receiver blacklist mirror"  # in pg_stat_activity
TRIGGERS = [
    "blacklist_notify_insert",
    "blacklist_notify_update",
    "blacklist_notify_delete",
    "blacklist_notify_truncate",
]
EVERYTHING = "*"
_SYNC = "sync:"
_EVERY_CHANNEL: frozenset[str | None] = frozenset({None})


class MirrorUnsafe(Exception):
    """The table would change without telling: no copy of it may answer."""


class Mirror:
    def __init__(
        self,
        dsn: str,
        pool: asyncpg.Pool,
        *,
        ping_seconds: float = 0.25,
        max_silence_seconds: float = 1.0,
        audit_seconds: float = 60.0,
        retry_seconds: float = 1.0,
        chunk_rows: int = 5000,
    ) -> None:
        self.dsn = dsn
        self.pool = pool
        self.ping_seconds = ping_seconds
        self.max_silence_seconds = max_silence_seconds
        self.audit_seconds = audit_seconds
        self.retry_seconds = retry_seconds
        self.chunk_rows = chunk_rows
        self.closed = False
        self._entries: dict[str, frozenset[str | None]] = {}
        self._loaded = False
        self._busy = False  # a query runs on the listening connection
        self._alive_at = 0.0  # monotonic time PostgreSQL last answered on the listening connection
        self._task: asyncio.Task[None] | None = None
        self._notified: list[str] = []
        self._bell = asyncio.Event()
        self._waiting: dict[str, asyncio.Future[None]] = {}

    # --- answering ----------------------------------------------------------------------------

    @property
    def live(self) -> bool:
        """Whether the copy may answer: loaded, every notification received applied, and its
        connection idle, so that a commit's notification reaches it at once (PostgreSQL holds
        notifications back from a connection that is running a query: the mirror's own reads,
        each a millisecond or so, are answered by PostgreSQL), and heard from recently."""
        return (
            self._loaded
            and not self._busy
            and not self._notified
            and time.monotonic() - self._alive_at < self.max_silence_seconds
        )

    @property
    def loaded(self) -> bool:
        """Loaded and following (it may still be applying a change, or pinging)."""
        return self._loaded

    @property
    def size(self) -> int:
        return len(self._entries)

    def blacklisted(self, numbers: Iterable[str], channel: str | None = None) -> set[str] | None:
        """Which of ``numbers`` (E.164) may not be sent to (from ``channel``, when given); ``None``
        when the copy cannot answer now (ask PostgreSQL). Starts the mirror on first use."""
        self.start()
        if not self.live:
            return None
        entries = self._entries
        if channel is None:
            return {n for n in numbers if n in entries}
        found = set()
        for number in numbers:
            channels = entries.get(number)
            if channels is not None and (None in channels or channel in channels):
                found.add(number)
        return found

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None and not self.closed:
            self._task = asyncio.create_task(self._run())

    async def sync(self, timeout: float = 1.0) -> bool:
        """Once this returns True, the copy holds every change committed before the call. False
        when the mirror is not running or not loaded (then checks go to PostgreSQL anyway), or did
        not catch up within ``timeout``; it never raises for the database (a caller's own change
        is committed by then)."""
        if self._task is None or self.closed or not self._loaded:
            return False
        token = secrets.token_hex(8)
        done = self._waiting[token] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                async with self.pool.acquire() as conn:
                    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, _SYNC + token)
                await done
            return self._loaded  # False: the connection was lost (and with it the copy)
        except Exception:  # noqa: BLE001 - the copy is not known to be current: say so
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
        self._release_waiting()

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

            def lost(_: object) -> None:
                gone.set()
                self._bell.set()

            conn.add_termination_listener(lost)
            self._notified = []
            await conn.add_listener(CHANNEL, self._on_notify)
            await _verify(conn)
            await self._reload(conn)
            self._alive_at = time.monotonic()
            self._loaded = True
            log.info("blacklist.mirror_loaded", numbers=len(self._entries))
            audit_at = time.monotonic() + self.audit_seconds
            while not gone.is_set() and not self.closed:
                if not self._notified:
                    try:
                        await asyncio.wait_for(self._bell.wait(), self.ping_seconds)
                    except TimeoutError:
                        async with self._querying():
                            await asyncio.wait_for(_verify(conn), self.max_silence_seconds)
                        self._alive_at = time.monotonic()
                        if time.monotonic() >= audit_at:
                            await self._audit(conn)
                            audit_at = time.monotonic() + self.audit_seconds
                        continue
                    finally:
                        self._bell.clear()
                await self._catch_up(conn)
        finally:
            self._loaded = False
            conn.terminate()
            self._release_waiting()  # their answer: not live

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        self._notified.append(str(payload))  # from now until it is applied, PostgreSQL answers
        self._bell.set()

    def _release_waiting(self) -> None:
        for waiting in self._waiting.values():
            if not waiting.done():
                waiting.set_result(None)

    async def _catch_up(self, conn: asyncpg.Connection) -> None:
        """Read again what the notifications so far name, then release the ``sync()`` callers
        whose own notification was among them."""
        notified, self._notified = self._notified, []
        tokens = [p[len(_SYNC) :] for p in notified if p.startswith(_SYNC)]
        payloads = [p for p in notified if not p.startswith(_SYNC)]
        if EVERYTHING in payloads:
            await self._reload(conn)
        elif payloads:
            numbers = sorted({n for p in payloads for n in p.split(",") if n})
            async with self._querying():
                rows = await conn.fetch(
                    "SELECT number, channel FROM blacklist WHERE number = ANY($1::text[])", numbers
                )
            fresh: dict[str, frozenset[str | None]] = {}
            _add(fresh, rows)
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

    async def _reload(self, conn: asyncpg.Connection) -> None:
        """The whole table again, in chunks so that a large one does not hold up the event loop."""
        entries: dict[str, frozenset[str | None]] = {}
        async with self._querying(), conn.transaction(isolation="repeatable_read", readonly=True):
            cursor = await conn.cursor("SELECT number, channel FROM blacklist")
            while rows := await cursor.fetch(self.chunk_rows):
                _add(entries, rows)
                await asyncio.sleep(0)
        self._entries = entries

    @contextlib.asynccontextmanager
    async def _querying(self) -> AsyncIterator[None]:
        self._busy = True
        try:
            yield
        finally:
            self._busy = False

    async def _audit(self, conn: asyncpg.Connection) -> None:
        """Compare the numbers counted with the table's. The count's answer comes after every
        notification committed before it: with none pending, the copy must hold as many."""
        async with self._querying():
            count = await conn.fetchval("SELECT count(DISTINCT number) FROM blacklist")
        if not self._notified and count != len(self._entries):
            log.warning("blacklist.mirror_diverged", table=count, copy=len(self._entries))
            await self._reload(conn)


async def _verify(conn: asyncpg.Connection) -> None:
    enabled = await conn.fetchval(
        """SELECT count(*) FROM pg_trigger
           WHERE tgrelid = 'blacklist'::regclass AND tgname = ANY($1::text[]) AND tgenabled = 'A'""",
        TRIGGERS,
    )
    if enabled != len(TRIGGERS):
        raise MirrorUnsafe(
            "the blacklist table's NOTIFY triggers are missing or not enabled ALWAYS (sql/013)"
        )


def _add(entries: dict[str, frozenset[str | None]], rows: Sequence[asyncpg.Record]) -> None:
    """Rows of (number, channel) into the copy. Most numbers are blacklisted for every channel:
    they share one set."""
    for number, channel in rows:
        have = entries.get(number)
        if have is None:
            entries[number] = _EVERY_CHANNEL if channel is None else frozenset((channel,))
        elif channel not in have:
            entries[number] = have | {channel}
