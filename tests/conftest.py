"""A real PostgreSQL for the whole run, and a fresh migrated database for each test that asks.

The server is the project's own embedded default (``receiver.db.embedded``), so the suite needs
nothing but Python; set ``RECEIVER_TEST_DATABASE_URL`` to use a server of yours instead.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from support import Harness, OwnPostgres, admin, run, serving, with_database, world_readable_tmpdir

from receiver.db import embedded, migrate

TEMPLATE = "receiver_test_template"


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    configured = os.environ.get("RECEIVER_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    base = world_readable_tmpdir("receiver-test-pg-")
    server = embedded.start(base)
    try:
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def template_url(pg_server_url: str) -> str:
    async def build() -> None:
        conn = await asyncpg.connect(pg_server_url)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
            await conn.execute(f"CREATE DATABASE {TEMPLATE}")
        finally:
            await conn.close()
        conn = await asyncpg.connect(with_database(pg_server_url, TEMPLATE))
        try:
            await migrate.apply(conn)
        finally:
            await conn.close()

    run(build())
    return with_database(pg_server_url, TEMPLATE)


@pytest.fixture
def db_url(pg_server_url: str, template_url: str) -> Iterator[str]:
    """A migrated database of this test's own."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    run(admin(pg_server_url, f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}"))
    yield with_database(pg_server_url, name)
    run(admin(pg_server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def empty_db_url(pg_server_url: str) -> Iterator[str]:
    """A database of this test's own with no schema at all."""
    name = f"e_{uuid.uuid4().hex[:12]}"
    run(admin(pg_server_url, f"CREATE DATABASE {name}"))
    yield with_database(pg_server_url, name)
    run(admin(pg_server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def harness(db_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Harness]:
    """The application in-process on a database of its own, with one application and one API key.
    Parametrized indirectly with ``True`` (:data:`BOTH_PATHS`), its callbacks go over a socket to
    the callback protocol and the lane instead of Starlette's test client."""
    with serving(db_url, tmp_path, lane=getattr(request, "param", False)) as h:
        yield h


# ``pytestmark = BOTH_PATHS`` in a module: each of its tests runs through the ASGI path and the lane.
BOTH_PATHS = pytest.mark.parametrize("harness", [False, True], ids=["asgi", "lane"], indirect=True)


@pytest.fixture
def own_pg() -> Iterator[OwnPostgres]:
    """A PostgreSQL of this test's own, which it may stop and start."""
    base = world_readable_tmpdir("receiver-own-pg-")
    pg = OwnPostgres(base)
    try:
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def artifacts() -> Iterator[dict[str, Path]]:
    """The sdist and the wheel, built from the checkout's tracked files (tests/installation.py)."""
    import installation

    out = world_readable_tmpdir("receiver-dist-")
    try:
        yield installation.build(out)
    finally:
        shutil.rmtree(out, ignore_errors=True)


@pytest.fixture(scope="session")
def wheelhouse() -> Path:
    import installation

    return installation.wheelhouse()


@pytest.fixture(scope="session")
def installed_wheel(artifacts: dict[str, Path], wheelhouse: Path) -> Iterator[Path]:
    """A fresh virtual environment outside the checkout with the built wheel installed."""
    import installation

    venv_dir = installation.install(artifacts["wheel"], wheelhouse)
    try:
        yield venv_dir
    finally:
        shutil.rmtree(venv_dir.parent, ignore_errors=True)
