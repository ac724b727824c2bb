"""SQL side of the blacklist, run by the writer in the transaction that stores new events."""

from __future__ import annotations

import asyncpg

from ..config import Settings


def after_insert_hook(settings: Settings):  # type: ignore[no-untyped-def]
    """The writer's step for new events, configured from ``settings`` (keywords, scope)."""

    async def after_insert(
        conn: asyncpg.Connection, new_reports: list[asyncpg.Record], new_uplinks: list[asyncpg.Record]
    ) -> None:
        """Blacklist the senders of unsubscribe replies and the targets of blacklist codes (none yet)."""

    return after_insert
