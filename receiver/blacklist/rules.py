"""What a number's blacklist entries are, given everything said about it. Pure, no I/O.

Every fact that bears on the blacklist is a :class:`Signal`: a reply that is an unsubscribe or
re-subscribe keyword, a status report with one of the platform's blacklist codes, a person
adding or removing a number. A number's entries are a fold of its signals in the order they
happened (their ``at``, not the order they reached us), so the same signals always give the
same entries: events that arrive late, twice or out of order, a report that comes before its
send is registered, and a rebuild from the stored events all end in the same list.

Entries are keyed by (number, channel, source). ``channel`` ``None`` means every channel.
- ``keyword`` and ``platform`` entries take the channel of their signal when the scope is
  ``channel`` (the channel replied to; the channel the message was sent from), else ``None``.
  When that channel is unknown the entry covers every channel.
- ``manual`` entries have the channel the person gave (``None``: every channel).
- A re-subscribe keyword removes ``keyword`` entries only (of its channel, when the scope is
  ``channel``): the platform's own blacklist and people's decisions outlive it.
- A manual removal removes every entry of the number (of one channel, when given).
- An entry that is added again keeps its first cause.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

Scope = Literal["all", "channel"]
Action = Literal["add", "remove"]
Source = Literal["keyword", "platform", "manual"]
Key = tuple[str, str | None, str]  # number, channel, source


@dataclass(frozen=True)
class Signal:
    number: str
    action: Action
    source: Source
    channel: str | None
    reason: str
    at: datetime
    sms_msg_id: str | None = None
    actor: str | None = None
    uplink_id: int | None = None
    report_id: int | None = None
    id: int | None = None

    @property
    def order(self) -> tuple[datetime, int, int]:
        """Time first; ties broken by ids that a rebuild does not change."""
        if self.uplink_id is not None:
            return (self.at, 0, self.uplink_id)
        if self.report_id is not None:
            return (self.at, 1, self.report_id)
        return (self.at, 2, self.id or 0)

    @property
    def who(self) -> str:
        """The actor for the history: the person, or who the event came from."""
        if self.actor:
            return self.actor
        return "recipient" if self.source == "keyword" else "platform"


@dataclass(frozen=True)
class Entry:
    number: str
    channel: str | None
    source: Source
    reason: str
    sms_msg_id: str | None
    added_by: str | None
    added_at: datetime

    @property
    def key(self) -> Key:
        return (self.number, self.channel, self.source)


@dataclass(frozen=True)
class Folded:
    entries: dict[Key, Entry]
    adders: dict[Key, Signal]  # the signal behind each entry
    removers: dict[Key, Signal]  # for keys that were removed, the signal that last removed them


def fold(signals: Iterable[Signal], scope: Scope) -> Folded:
    entries: dict[Key, Entry] = {}
    adders: dict[Key, Signal] = {}
    removers: dict[Key, Signal] = {}
    for signal in sorted(signals, key=lambda s: (s.number, s.order)):
        if signal.action == "add":
            channel = signal.channel if signal.source == "manual" or scope == "channel" else None
            key: Key = (signal.number, channel, signal.source)
            if key not in entries:
                entries[key] = Entry(
                    signal.number, channel, signal.source, signal.reason, signal.sms_msg_id, signal.actor, signal.at
                )
                adders[key] = signal
            continue
        for key in [k for k in entries if _removes(signal, k, scope)]:
            del entries[key]
            del adders[key]
            removers[key] = signal
    return Folded(entries, adders, removers)


def entry_at(signals: Iterable[Signal], scope: Scope, at: datetime, channel: str | None) -> Entry | None:
    """The entry that stopped sends from ``channel`` at ``at``: the fold of the signals that
    happened at or before ``at`` (an opt-out at the very moment of a send covers it, and so does
    a re-subscribe lift it). A send from an unknown channel (``None``) is stopped by any entry,
    as the blacklist check answers it. When several entries cover it: the oldest, as
    :func:`receiver.blacklist.store.entries` lists them."""
    folded = fold((s for s in signals if s.at <= at), scope)
    covering = [e for e in folded.entries.values() if channel is None or e.channel in (None, channel)]
    return min(covering, key=lambda e: (e.added_at, e.source, e.channel or ""), default=None)


def _removes(signal: Signal, key: Key, scope: Scope) -> bool:
    number, channel, source = key
    if number != signal.number:
        return False
    if signal.source == "keyword":  # a re-subscribe reply
        return source == "keyword" and (scope == "all" or channel == signal.channel)
    return signal.channel is None or channel == signal.channel


@dataclass(frozen=True)
class Change:
    action: Action
    entry: Entry
    actor: str
    reason: str
    sms_msg_id: str | None


@dataclass(frozen=True)
class Diff:
    removed: list[Entry]  # delete these rows
    added: list[Entry]  # insert these rows (new keys, and keys whose cause changed)
    history: list[Change]


def diff(current: Iterable[Entry], folded: Folded, *, actor: str | None = None) -> Diff:
    """From the stored entries to the folded ones. ``actor`` (e.g. ``rebuild``) overrides who is
    recorded as having made each change; removals nothing explains are put down to it as well."""
    now = {e.key: e for e in sorted(current, key=_order)}
    new = {e.key: e for e in sorted(folded.entries.values(), key=_order)}
    removed, added, history = [], [], []
    for key, entry in now.items():
        if key not in new:
            removed.append(entry)
            why = folded.removers.get(key)
            if why is not None:
                history.append(Change("remove", entry, actor or why.who, why.reason, why.sms_msg_id))
            else:
                reason = "no longer follows from the stored events and settings"
                history.append(Change("remove", entry, actor or "rebuild", reason, None))
        elif new[key] != entry:  # same key, another first cause (an earlier event arrived late)
            removed.append(entry)
            added.append(new[key])
    for key, entry in new.items():
        if key not in now:
            added.append(entry)
            history.append(Change("add", entry, actor or folded.adders[key].who, entry.reason, entry.sms_msg_id))
    return Diff(removed, added, history)


def _order(entry: Entry) -> tuple[str, str, str]:
    return (entry.number, entry.channel or "", entry.source)
