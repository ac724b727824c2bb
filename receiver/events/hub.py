"""Wake-ups for the live event streams of one worker process: one LISTEN connection, shared.

Every transaction that adds events sends an (empty) NOTIFY at commit. The hub holds the
worker's only LISTEN connection and, on each notification, wakes every stream of the worker;
each then reads from its own cursor through the pool. Nothing is carried by the notification,
so a lost one costs latency, never an event:

- while the LISTEN connection is away (PostgreSQL restarting, network), streams read every
  ``poll_seconds`` instead, and the hub reconnects; once back it wakes them all;
- a silently dead connection is found by a ``SELECT 1`` every ``check_seconds``;
- the hub starts with its first stream, so a worker nobody streams from holds no connection.

Shutdown: uvicorn waits for open responses before it shuts the application down, and a stream
never ends by itself. So the hub watches uvicorn's exit flag
(:func:`receiver.uvicorn_adapter.server_exit_flag`) and, once set, closes: every stream ends,
and the worker exits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import asyncpg
import structlog

from ..uvicorn_adapter import server_exit_flag
from .feed import CHANNEL

log = structlog.get_logger("receiver.events")


class Subscription:
    """One stream's doorbell."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._bell = asyncio.Event()

    def ring(self) -> None:
        self._bell.set()

    async def wait(self, timeout: float) -> bool:
        """Until a wake-up or ``timeout`` seconds; True if woken. Clears the bell."""
        try:
            await asyncio.wait_for(self._bell.wait(), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._bell.clear()

    def close(self) -> None:
        self.hub._subscribers.discard(self)


class Hub:
    def __init__(
        self,
        dsn: str,
        *,
        poll_seconds: float = 1.0,
        check_seconds: float = 15.0,
        exit_flag: Callable[[], bool] | None = None,
    ) -> None:
        self.dsn = dsn
        self.poll_seconds = poll_seconds
        self.check_seconds = check_seconds
        self.listening = False
        self.closed = False
        self.exit_flag = exit_flag if exit_flag is not None else server_exit_flag()
        self._subscribers: set[Subscription] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._listened = False

    def subscribe(self) -> Subscription:
        if not self._tasks and not self.closed:
            self._tasks.append(asyncio.create_task(self._listen()))
            if self.exit_flag is not None:
                self._tasks.append(asyncio.create_task(self._watch_exit()))
        subscription = Subscription(self)
        self._subscribers.add(subscription)
        return subscription

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def wake(self, *_: Any) -> None:
        for subscription in list(self._subscribers):
            subscription.ring()

    async def close(self) -> None:
        """End every stream of this worker; idempotent."""
        if self.closed:
            return
        self.closed = True
        self._stop.set()
        self.wake()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        for task in self._tasks:
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _listen(self) -> None:
        failing = False
        while not self.closed:
            self._listened = False
            try:
                await self._listen_once(back=failing)
                reason = "the connection closed"
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - whatever it was, streams poll until we are back
                reason = f"{type(error).__name__}: {error}"[:200]
            if self.closed:
                return
            if self._listened:
                failing = False
            if not failing:
                log.warning("events.listen_lost", error=reason, poll_seconds=self.poll_seconds)
                failing = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.poll_seconds)

    async def _listen_once(self, back: bool) -> None:
        """LISTEN until the connection is gone (returns or raises)."""
        conn = await asyncpg.connect(self.dsn, timeout=5)
        try:
            gone = asyncio.Event()
            conn.add_termination_listener(lambda _: gone.set())
            await conn.add_listener(CHANNEL, self.wake)
            self.listening = self._listened = True
            if back:
                log.info("events.listen_back")
            self.wake()  # catch up on what was committed while nobody listened
            while not self.closed and not gone.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(_first(gone, self._stop), self.check_seconds)
                    continue
                await asyncio.wait_for(conn.fetchval("SELECT 1"), timeout=5)
        finally:
            was_listening, self.listening = self.listening, False
            conn.terminate()
            if was_listening and not self.closed:
                self.wake()  # the streams poll until the hub is back

    async def _watch_exit(self) -> None:
        assert self.exit_flag is not None
        while not self.closed:
            if self.exit_flag():
                log.info("events.closing_streams", streams=self.subscribers)
                await self.close()
                return
            await asyncio.sleep(0.2)


async def _first(*events: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()

