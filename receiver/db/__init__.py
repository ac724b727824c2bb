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


# The rows that follow from a send, a report or a state (the event feed's, message_index's,
# recipient_index's) are written by the service's statements that store them; triggers write them
# for every other writer (an older release's, an operator's), and stand aside in a transaction
# that has said it writes them itself (sql/024_statements_write_derived_rows.sql).
_DERIVED_ROWS = "SELECT set_config('receiver.derived_rows', 'statements', true)"


async def statements_write_derived_rows(conn: Connection) -> None:
    """For the rest of this transaction, the statements that store sends, reports and states
    write what follows from them themselves: call it inside the transaction, before them."""
    await conn.execute(_DERIVED_ROWS)
