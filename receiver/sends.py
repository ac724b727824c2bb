"""Registering sends (``POST /v1/sent``): everything that follows from a newly registered send."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from .blacklist import store as blacklist
from .config import Settings
from .correlation import store as correlation
from .correlation.sent import SentMessage


async def register(
    conn: asyncpg.Connection, messages: Sequence[SentMessage], registered_by: str, settings: Settings
) -> list[str]:
    """Store the sends not registered yet, in one transaction, with what they settle: delivery
    states and reply links of reports and replies that came first, and blacklist codes whose
    number only the send knows. Returns the ids registered now.

    A reply the send would link may vanish between reading it and linking it (``receiver prune``
    deletes old replies meanwhile): the link then breaks its foreign key, and the registration,
    idempotent, is simply done again."""
    for attempt in range(ATTEMPTS):
        try:
            async with conn.transaction():
                new = await correlation.register_sent(conn, messages, registered_by)
                await blacklist.after_sent(conn, new, settings)
            return new
        except asyncpg.ForeignKeyViolationError:
            if attempt == ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


ATTEMPTS = 3
