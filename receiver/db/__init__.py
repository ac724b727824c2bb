"""PostgreSQL: the embedded default, migrations, and the URL in use."""

from __future__ import annotations

from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# A connection of its own or one lent by a pool: what a function that only runs queries takes.
Connection: TypeAlias = asyncpg.Connection | PoolConnectionProxy
