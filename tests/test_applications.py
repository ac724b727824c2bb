"""A worker's registry of applications (receiver/applications.py): the token of a callback
found in memory, the database read when it is not there."""

from __future__ import annotations

import asyncio
import time

import asyncpg
from support import run

from receiver import applications


def test_the_first_callbacks_of_a_new_application_wait_for_the_read_on_its_way(db_url: str) -> None:
    """The platform opens a connection per callback: an application's first callbacks reach a
    worker a few milliseconds apart. The first one's miss reads the applications; those that
    come while that read is on its way wait for it, not for the next read a second later."""

    async def scenario() -> tuple[list[applications.Application | None], float]:
        pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
        holder = await asyncpg.connect(db_url)
        try:
            registry = applications.Registry(min_interval=1.0)
            await registry.load(holder)  # the worker's start
            token = (await applications.create(holder, "burst", []))[1]
            await asyncio.sleep(1.05)  # past the read limit: the first miss reads at once
            transaction = holder.transaction()
            await transaction.start()
            await holder.execute("LOCK TABLE applications IN ACCESS EXCLUSIVE MODE")  # the read takes 0.3 s
            started = time.monotonic()
            first = asyncio.ensure_future(registry.lookup(token, pool))
            await asyncio.sleep(0.1)  # its read is on its way
            others = [asyncio.ensure_future(registry.lookup(token, pool)) for _ in range(19)]
            await asyncio.sleep(0.2)
            await transaction.rollback()
            found = await asyncio.gather(first, *others)
            return found, time.monotonic() - started
        finally:
            await holder.close()
            await pool.close()

    found, took = run(scenario())
    assert [app.name if app else None for app in found] == ["burst"] * 20
    assert took < 0.8  # one read, not a second's wait for the next
