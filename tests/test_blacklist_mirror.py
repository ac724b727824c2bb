"""The blacklist's copy in each worker's memory (receiver/blacklist/mirror.py), on a real
PostgreSQL: it answers as the table does, follows every change committed anywhere, reloads after
bulk changes, and stops answering (PostgreSQL answers) whenever it could be behind."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
from support import Harness, OwnPostgres, run, serving, until, value

from receiver.blacklist import store
from receiver.blacklist.mirror import APPLICATION_NAME, Mirror
from receiver.config import Settings
from receiver.db import migrate

CHANNELS = ["10690001", "10690002", "10690003"]
N1 = "+8615112345678"
N2 = "+8613112345678"


async def with_mirror(
    url: str, test: Callable[[Mirror, asyncpg.Connection], Awaitable[None]], **options: float
) -> None:
    pool = await asyncpg.create_pool(url, min_size=0, max_size=2)
    mirror = Mirror(url, pool, **options)  # type: ignore[arg-type]
    conn = await asyncpg.connect(url)
    try:
        mirror.start()
        assert await until(lambda: mirror.live), "the mirror did not load"
        await test(mirror, conn)
    finally:
        await mirror.close()
        await conn.close()
        await pool.close()


async def insert(
    conn: asyncpg.Connection, rows: list[tuple[str, str | None]], source: str = "manual"
) -> None:
    await conn.executemany(
        "INSERT INTO blacklist (number, channel, source, reason, added_by, added_at) VALUES ($1, $2, $3, 'test', 'test', now())",
        [(number, channel, source) for number, channel in rows],
    )


async def both(
    mirror: Mirror, conn: asyncpg.Connection, numbers: list[str], channel: str | None
) -> tuple[set[str], set[str]]:
    return mirror.blacklisted(numbers, channel) or set(), await store.blacklisted(conn, numbers, channel)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_mirror_answers_as_the_table_does(db_url: str, seed: int) -> None:
    """Numbers with entries for every channel, for some channels, for both; before and after load."""
    rng = random.Random(seed)
    numbers = [f"+86139{i:08d}" for i in range(200)]

    def entries() -> list[tuple[str, str | None]]:
        rows = set()
        for number in rng.sample(numbers, 80):
            for channel in rng.sample([None, *CHANNELS], rng.randint(1, 3)):
                rows.add((number, channel))
        return sorted(rows, key=str)

    async def go() -> None:
        conn = await asyncpg.connect(db_url)
        try:
            await insert(conn, entries())  # loaded at start
        finally:
            await conn.close()

        async def test(mirror: Mirror, conn: asyncpg.Connection) -> None:
            await insert(
                conn,
                [
                    r
                    for r in entries()
                    if r not in set(map(tuple, await conn.fetch("SELECT number, channel FROM blacklist")))
                ],
                "keyword",
            )
            assert await mirror.sync()  # followed
            for channel in [None, *CHANNELS, "10699999"]:
                from_memory, from_table = await both(mirror, conn, numbers, channel)
                assert from_memory == from_table, channel
                assert from_table  # the case is not empty

        await with_mirror(db_url, test)

    run(go())


def test_changes_committed_elsewhere_arrive_without_asking(db_url: str) -> None:
    """The trigger's NOTIFY alone brings them (sync() only waits for them)."""
    config = store.Config.of(Settings(database_url=db_url))

    async def test(mirror: Mirror, conn: asyncpg.Connection) -> None:
        assert mirror.blacklisted([N1, N2]) == set()
        async with conn.transaction():
            await store.add(conn, config, N1, reason="asked by phone", actor="support")
        assert await until(lambda: mirror.blacklisted([N1, N2]) == {N1}, timeout=5)
        async with conn.transaction():
            await store.add(
                conn, config, N2, reason="only this channel", actor="support", channel=CHANNELS[0]
            )
        assert await mirror.sync()
        assert mirror.blacklisted([N1, N2], CHANNELS[0]) == {N1, N2}
        assert mirror.blacklisted([N1, N2], CHANNELS[1]) == {N1}
        async with conn.transaction():
            await store.remove(conn, config, N1, reason="asked again", actor="support")
        assert await until(lambda: mirror.blacklisted([N1, N2]) == {N2}, timeout=5)
        assert mirror.blacklisted([N1, N2], CHANNELS[1]) == set()

    run(with_mirror(db_url, test))


def test_an_import_too_large_to_name_reloads_everything(db_url: str) -> None:
    config = store.Config.of(Settings(database_url=db_url))
    numbers = [f"+86137{i:08d}" for i in range(3000)]  # 45 kB of numbers: one '*' notification

    async def test(mirror: Mirror, conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            assert (
                await store.import_entries(conn, config, [(n, None, "list") for n in numbers], actor="cli")
                == 3000
            )
        assert await mirror.sync()
        assert mirror.size == 3000
        assert mirror.blacklisted(numbers) == set(numbers)
        await conn.execute("TRUNCATE blacklist")
        assert await mirror.sync()
        assert mirror.size == 0

    run(with_mirror(db_url, test, chunk_rows=500))


def test_a_lost_connection_stops_the_answers_until_reloaded(db_url: str) -> None:
    """While its connection is away, notifications are lost: the mirror must not answer from a copy
    that may be behind; back, it loads the whole table again, with what changed meanwhile."""

    async def test(mirror: Mirror, conn: asyncpg.Connection) -> None:
        assert mirror.blacklisted([N1]) == set()
        terminated = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
            APPLICATION_NAME,
        )
        assert terminated == 1
        assert await until(lambda: mirror.blacklisted([N1]) is None, timeout=2)
        await insert(conn, [(N1, None)])  # its NOTIFY goes to nobody
        assert await until(lambda: mirror.live, timeout=10)
        assert mirror.blacklisted([N1]) == {N1}

    run(with_mirror(db_url, test, retry_seconds=0.2))


def test_a_silently_dead_connection_stops_the_answers_within_the_bound(own_pg: OwnPostgres) -> None:
    """A connection that neither closes nor answers (a network gone quiet; here its backend is
    stopped with SIGSTOP, on a PostgreSQL of the test's own, local whatever the suite uses): a
    change committed meanwhile is never reported sendable for longer than max_silence_seconds,
    and the ping that never answers makes the mirror connect again."""

    async def test(mirror: Mirror, conn: asyncpg.Connection) -> None:
        [pid] = [r["pid"] for r in await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1", APPLICATION_NAME
        )]  # fmt: skip
        os.kill(pid, signal.SIGSTOP)
        try:
            await insert(conn, [(N1, None)])  # the stopped backend will never tell
            committed = time.monotonic()
            stale_until = await last_stale(mirror, N1, seconds=1.5)
            assert stale_until - committed < 0.5 + 0.2, stale_until - committed
        finally:
            os.kill(pid, signal.SIGCONT)
        assert await until(lambda: mirror.live, timeout=15)
        assert mirror.blacklisted([N1]) == {N1}

    async def go() -> None:
        conn = await asyncpg.connect(own_pg.url)
        try:
            await migrate.apply(conn)
        finally:
            await conn.close()
        await with_mirror(own_pg.url, test, ping_seconds=0.1, max_silence_seconds=0.5, retry_seconds=0.2)

    run(go())


async def last_stale(mirror: Mirror, number: str, seconds: float) -> float:
    """Ask the copy about ``number`` for ``seconds``; the last moment it said it may be sent to."""
    stale = 0.0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if mirror.blacklisted([number]) == set():
            stale = time.monotonic()
        await asyncio.sleep(0.005)
    return stale


def test_while_everything_is_read_again_postgresql_answers(db_url: str) -> None:
    """A change too large to name ('*': an import) makes the mirror read the whole table again;
    a number blacklisted meanwhile must not wait for that reload to be seen."""
    config = store.Config.of(Settings(database_url=db_url))

    async def test(mirror: Mirror, conn: asyncpg.Connection) -> None:
        await conn.execute(  # a table slow to read in chunks of 50
            """INSERT INTO blacklist (number, source, reason, added_at)
               SELECT '+86135' || lpad(i::text, 8, '0'), 'manual', 'test', now() FROM generate_series(1, 20000) AS i"""
        )
        assert await mirror.sync()
        async with conn.transaction():
            await store.import_entries(
                conn, config, [(f"+86137{i:08d}", None, "list") for i in range(600)], actor="cli"
            )
        await insert(conn, [(N1, None)])
        committed = time.monotonic()
        stale_until = await last_stale(mirror, N1, seconds=1.0)
        assert stale_until == 0.0 or stale_until - committed < 0.05, stale_until - committed
        assert await mirror.sync()
        assert mirror.size == 20_601

    run(with_mirror(db_url, test, chunk_rows=50))


def test_triggers_that_stop_firing_stop_the_answers(db_url: str) -> None:
    """The copy checks the triggers with every ping: one disabled by hand (a change would then
    never be heard of) stops the answers; enabled ALWAYS again, the table is loaded again."""

    async def test(mirror: Mirror, conn: asyncpg.Connection) -> None:
        await conn.execute("ALTER TABLE blacklist DISABLE TRIGGER blacklist_notify_insert")
        assert await until(lambda: mirror.blacklisted([N1]) is None, timeout=1)
        await insert(conn, [(N1, None)])
        await asyncio.sleep(0.5)
        assert mirror.blacklisted([N1]) is None
        await conn.execute(
            "ALTER TABLE blacklist ENABLE TRIGGER blacklist_notify_insert"
        )  # ordinary: not enough
        await asyncio.sleep(0.5)
        assert mirror.blacklisted([N1]) is None
        await conn.execute("ALTER TABLE blacklist ENABLE ALWAYS TRIGGER blacklist_notify_insert")
        assert await until(lambda: mirror.live, timeout=5)
        assert mirror.blacklisted([N1]) == {N1}

    run(with_mirror(db_url, test, ping_seconds=0.1, max_silence_seconds=0.5, retry_seconds=0.1))


def test_changes_made_as_a_replica_are_heard_of(db_url: str) -> None:
    """Logical replication's apply and some restores write with session_replication_role =
    replica, under which ordinary triggers do not fire."""

    async def test(mirror: Mirror, conn: asyncpg.Connection) -> None:
        await conn.execute("SET session_replication_role = replica")
        await insert(conn, [(N1, None)])
        assert await mirror.sync()
        assert mirror.blacklisted([N1, N2]) == {N1}

    run(with_mirror(db_url, test))


def test_a_copy_that_diverged_is_found_and_loaded_again(db_url: str) -> None:
    """The safety net behind the notifications: the regular count of numbers against the table."""

    async def test(mirror: Mirror, conn: asyncpg.Connection) -> None:
        await insert(conn, [(N1, None), (N2, CHANNELS[0])])
        assert await mirror.sync()
        del mirror._entries[N1]  # as a bug would
        assert await until(lambda: mirror.blacklisted([N1, N2]) == {N1, N2}, timeout=3)

    run(with_mirror(db_url, test, ping_seconds=0.05, audit_seconds=0.3))


def test_without_the_notify_trigger_the_mirror_never_answers(db_url: str) -> None:
    """A schema from before sql/013 sends no NOTIFY: a copy of it would never change."""

    async def go() -> None:
        conn = await asyncpg.connect(db_url)
        pool = await asyncpg.create_pool(db_url, min_size=0, max_size=1)
        mirror = Mirror(db_url, pool, retry_seconds=0.1)
        try:
            await conn.execute("DROP TRIGGER blacklist_notify_insert ON blacklist")
            assert mirror.blacklisted([N1]) is None
            await asyncio.sleep(1)
            assert mirror.blacklisted([N1]) is None
            assert not await mirror.sync()
        finally:
            await mirror.close()
            await pool.close()
            await conn.close()

    run(go())


# --- through the API -----------------------------------------------------------------------------


def checks_by(h: Harness) -> dict[str, float]:
    text = h.client.get("/metrics").text
    return {
        by: value(text, "receiver_blacklist_checks_total", answered_by=by) for by in ("memory", "database")
    }


def test_the_check_answers_from_memory_and_sees_changes_by_hand_at_once(harness: Harness) -> None:
    headers = {"Authorization": f"Bearer {harness.api_key}"}
    mirror = harness.client.app.state.blacklist_mirror  # type: ignore[attr-defined]

    def check(*numbers: str) -> list[str]:
        response = harness.client.post(
            "/v1/blacklist/check", json={"numbers": list(numbers)}, headers=headers
        )
        assert response.status_code == 200
        blacklisted: list[str] = response.json()["blacklisted"]
        return blacklisted

    assert check(N1, N2) == []  # the first check starts the mirror; PostgreSQL answers it
    assert wait_live(mirror)
    catch_up = mirror._catch_up

    async def slowly(conn: asyncpg.Connection) -> None:  # each notification read 0.3 s late
        await asyncio.sleep(0.3)
        await catch_up(conn)

    mirror._catch_up = slowly
    before = checks_by(harness)
    # No settle() here: the PUT itself waits until this worker's copy has it.
    assert (
        harness.client.put(f"/v1/blacklist/{N2}", json={"reason": "by phone"}, headers=headers).status_code
        == 201
    )
    assert check(N1, N2) == [N2]
    assert (
        harness.client.request(
            "DELETE", f"/v1/blacklist/{N2}", json={"reason": "wrong number"}, headers=headers
        ).status_code
        == 200
    )
    assert check(N1, N2) == []
    after = checks_by(harness)
    assert after["memory"] - before["memory"] == 2
    assert after["database"] == before["database"]


def test_a_change_by_hand_is_answered_even_when_the_copy_cannot_catch_up(harness: Harness) -> None:
    """The PUT is committed: whatever happens to the copy after, its answer says so."""
    headers = {"Authorization": f"Bearer {harness.api_key}"}
    mirror = harness.client.app.state.blacklist_mirror  # type: ignore[attr-defined]
    harness.client.post("/v1/blacklist/check", json={"numbers": [N1]}, headers=headers)
    assert wait_live(mirror)

    class Broken:
        def acquire(self) -> None:
            raise ConnectionResetError("gone")

    mirror.pool = Broken()
    response = harness.client.put(f"/v1/blacklist/{N1}", json={"reason": "by phone"}, headers=headers)
    assert response.status_code == 201
    assert harness.client.request(
        "DELETE", f"/v1/blacklist/{N1}", json={"reason": "wrong"}, headers=headers
    ).status_code == 200  # fmt: skip


def wait_live(mirror: Mirror, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not mirror.live and time.monotonic() < deadline:
        time.sleep(0.01)
    return mirror.live


def test_the_mirror_can_be_turned_off(db_url: str, tmp_path: Path) -> None:
    with serving(db_url, tmp_path, blacklist_mirror=False) as h:
        assert h.client.app.state.blacklist_mirror is None  # type: ignore[attr-defined]
        assert h.api("PUT", f"/v1/blacklist/{N1}", json={"reason": "x"}).status_code == 201
        before = checks_by(h)
        for _ in range(3):
            assert h.api("POST", "/v1/blacklist/check", json={"numbers": [N1, N2]}).json() == {
                "blacklisted": [N1]
            }
        after = checks_by(h)
        assert (after["memory"] - before["memory"], after["database"] - before["database"]) == (0, 3)
