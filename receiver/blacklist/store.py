"""SQL side of the blacklist, run by the writer in the transaction that stores new events."""

from __future__ import annotations

import asyncpg


async def after_insert(
    conn: asyncpg.Connection, new_reports: list[asyncpg.Record], new_uplinks: list[asyncpg.Record]
) -> None:
    """Blacklist the senders of unsubscribe replies and the targets of blacklist codes (none yet)."""
