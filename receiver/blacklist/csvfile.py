"""The blacklist as CSV, for ``receiver blacklist export`` and ``import``. Pure: text in, text out.

Export writes a header and one row per entry: ``number, channel, source, reason, sms_msg_id,
added_by, added_at`` (``channel`` empty: every channel). Import reads such a file, or any CSV
whose header names a ``number`` column (``channel`` and ``reason`` are used when present), or a
header-less file whose columns are number[, channel[, reason]]. Every imported row becomes a
manual entry.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass

from .numbers import to_e164
from .rules import Entry

COLUMNS = ("number", "channel", "source", "reason", "sms_msg_id", "added_by", "added_at")


def export(entries: Iterable[Entry]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for e in entries:
        at = e.added_at.isoformat().replace("+00:00", "Z")
        writer.writerow((e.number, e.channel or "", e.source, e.reason, e.sms_msg_id or "", e.added_by or "", at))
    return out.getvalue()


@dataclass(frozen=True)
class Parsed:
    rows: list[tuple[str, str | None, str]]  # number (E.164), channel, reason
    errors: list[str]  # "line 7: '+86151****6789' is no phone number"


def parse(text: str, *, default_reason: str, region: str = "CN") -> Parsed:
    text = text.removeprefix("\ufeff")
    records = list(csv.reader(io.StringIO(text)))
    rows: list[tuple[str, str | None, str]] = []
    errors: list[str] = []
    if not records:
        return Parsed(rows, errors)
    header = [cell.strip().lower() for cell in records[0]]
    at: dict[str, int]
    if "number" in header:
        at = {name: header.index(name) for name in ("number", "channel", "reason") if name in header}
        body, first_line = records[1:], 2
    else:
        at = {"number": 0, "channel": 1, "reason": 2}
        body, first_line = records, 1
    for line, record in enumerate(body, start=first_line):
        if not any(cell.strip() for cell in record):
            continue

        def cell(name: str, record: list[str] = record) -> str:
            index = at.get(name)
            return record[index].strip() if index is not None and index < len(record) else ""

        raw = cell("number")
        number = to_e164(raw, region)
        if number is None:
            errors.append(f"line {line}: {raw!r} is no phone number")
            continue
        channel = cell("channel") or None
        if channel is not None and len(channel) > 21:
            errors.append(f"line {line}: channel {channel!r} is longer than 21 characters")
            continue
        rows.append((number, channel, cell("reason") or default_reason))
    return Parsed(rows, errors)
