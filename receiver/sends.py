"""Registering sends (``POST /v1/sent``): everything that follows from a newly registered send."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from . import metrics
from .blacklist import store as blacklist
from .blacklist.rules import Entry
from .config import Settings
from .correlation import store as correlation
from .correlation.sent import SentMessage
from .protocol import ProtocolError


class ApplicationNotAllowed(ProtocolError):
    """The API key is scoped to another application than the one the sends name."""


async def application_of(conn: asyncpg.Connection, key_application: int | None, named: str | None) -> int | None:
    """The application registered sends belong to: the one named (``application`` of the body),
    else the API key's. ProtocolError for an unknown name; ApplicationNotAllowed for a name other
    than the key's own application."""
    if named is None:
        return key_application
    found = await conn.fetchval("SELECT id FROM applications WHERE name = $1", named)
    if found is None:
        raise ProtocolError("unknown_application", {"field": "application", "reason": "no application has this name"})
    if key_application is not None and found != key_application:
        raise ApplicationNotAllowed(
            "application_not_allowed", {"field": "application", "reason": "this API key registers another application's sends"}
        )
    return int(found)


@dataclass(frozen=True)
class Registered:
    new: list[str]  # the ids registered now
    blacklisted_at_send: dict[str, Entry]  # of every send given, new or not: those sent to a blacklisted number


async def register(
    conn: asyncpg.Connection,
    messages: Sequence[SentMessage],
    registered_by: str,
    settings: Settings,
    application_id: int | None = None,
) -> Registered:
    """Store the sends not registered yet, in one transaction, as sends of ``application_id``
    (None: of no application), with what they settle: delivery states and reply links of reports
    and replies that came first, blacklist codes whose number only the send knows, and whether
    each send went to a number blacklisted for it. A send registered already keeps the
    application it was registered with.

    A reply the send would link may vanish between reading it and linking it (``receiver prune``
    deletes old replies meanwhile): the link then breaks its foreign key, and the registration,
    idempotent, is simply done again; so is one that met another transaction locking the same
    numbers in the other order (a report's own ``to`` that is not its send's)."""
    for attempt in range(ATTEMPTS):
        try:
            with metrics.on_commit():  # counted once, when the registration has committed
                async with conn.transaction():
                    new = await correlation.register_sent(
                        conn, messages, registered_by, application_id=application_id, window=settings.report_window
                    )
                    await blacklist.after_sent(conn, new, correlation.reported_span(messages), settings)
                    found = await blacklist.check_sends(
                        conn, blacklist.Config.of(settings), sorted({m.sms_msg_id for m in messages}),
                        correlation.sends_span(messages),
                    )  # fmt: skip
            return Registered(new, found)
        except (asyncpg.ForeignKeyViolationError, asyncpg.DeadlockDetectedError):
            if attempt == ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


ATTEMPTS = 3
