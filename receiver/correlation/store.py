"""SQL side of correlation, run by the writer in the transaction that stores new events."""

from __future__ import annotations

import asyncpg


async def after_insert(
    conn: asyncpg.Connection, new_reports: list[asyncpg.Record], new_uplinks: list[asyncpg.Record]
) -> None:
    """Bring derived state up to date for the events inserted now (none yet)."""
