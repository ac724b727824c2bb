"""PostgreSQL: the embedded default, migrations, and the URL in use."""

from __future__ import annotations

from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# A connection of its own or one lent by a pool: what a function that only runs queries takes.
Connection: TypeAlias = asyncpg.Connection | PoolConnectionProxy


# A partitioned table's statement is planned with the days it reads only when its values are known
# at planning: a plan for any values (PostgreSQL's generic plan, taken after a statement's fifth
# run) holds every day kept, locks every one at each run and opens every one's indexes where the
# days are chosen per row. A statement that bounds every partitioned table it reads by its values
# is cheapest planned for them each time; one that does not (a time-less look-up) by the usual rule.


async def plan_each_time(conn: Connection) -> None:
    """Until :func:`plan_as_usual` or the end of this transaction, every statement is planned
    for its values (``plan_cache_mode``): call it inside a transaction."""
    await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")


async def plan_as_usual(conn: Connection) -> None:
    """Statements are planned by the session's rule again for the rest of this transaction."""
    await conn.execute("SET LOCAL plan_cache_mode TO DEFAULT")
