"""The Grafana dashboard's panel queries, run as Grafana runs them: the test that every panel of
``dashboards/grafana-receiver.json`` works on the views and shows what it should.

Every panel's ``rawSql`` runs as written, after expanding the Grafana macros of the PostgreSQL
data source (``$__timeFilter(col)`` and friends, :func:`expand`) for a time range, in a read-only
transaction; a query that fails, or a macro or variable not known here, raises
:class:`PanelError` naming the panel. The results become data frames the way Grafana's SQL data
sources make them (a ``time`` column; a ``metric`` column for one series per value).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg

DASHBOARD = Path(__file__).resolve().parent.parent / "dashboards" / "grafana-receiver.json"


class PanelError(Exception):
    """A panel whose query Grafana could not run: it fails, or uses an unknown macro or a variable."""


# --- time range and macros ---------------------------------------------------------------------


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_MACRO = re.compile(r"\$__(\w+)\(([^()]*)\)")
_VARIABLE = re.compile(r"\$(?:\{[^}]*\}|\[\[[^\]]*\]\]|__\w+|[A-Za-z_]\w*)")


def expand(sql: str, time_from: datetime, time_to: datetime) -> str:
    """``sql`` with the PostgreSQL data source's macros replaced as Grafana does for this range.

    Raises :class:`PanelError` for any other macro or a dashboard variable: a panel must
    show what the query gives, so nothing is guessed.
    """
    start, end = rfc3339(time_from), rfc3339(time_to)
    epoch_from, epoch_to = int(time_from.timestamp()), int(time_to.timestamp())

    def one(match: re.Match[str]) -> str:
        name, args = match.group(1), [a.strip() for a in match.group(2).split(",") if a.strip()]
        if name == "timeFilter" and len(args) == 1:
            return f"{args[0]} BETWEEN '{start}' AND '{end}'"
        if name == "timeFrom" and not args:
            return f"'{start}'"
        if name == "timeTo" and not args:
            return f"'{end}'"
        if name == "time" and len(args) == 1:
            return f'{args[0]} AS "time"'
        if name == "timeEpoch" and len(args) == 1:
            return f'extract(epoch from {args[0]}) AS "time"'
        if name == "unixEpochFilter" and len(args) == 1:
            return f"{args[0]} >= {epoch_from} AND {args[0]} <= {epoch_to}"
        if name == "unixEpochFrom" and not args:
            return str(epoch_from)
        if name == "unixEpochTo" and not args:
            return str(epoch_to)
        raise PanelError(f"the Grafana macro {match.group(0)} is not one expanded here")

    expanded = _MACRO.sub(one, sql)
    leftover = _VARIABLE.search(expanded)
    if leftover:
        raise PanelError(f"{leftover.group(0)}: a Grafana variable or macro not expanded here")
    return expanded


# --- running the panels' queries -------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """What one query target gave: its rows as returned, and how Grafana is asked to read them."""

    ref_id: str
    format: str  # "table" or "time_series"
    sql: str  # as run
    columns: list[str]
    rows: list[tuple[Any, ...]]


@dataclass(frozen=True)
class PanelData:
    panel: dict[str, Any]
    frames: list[Frame]


def load(path: Path = DASHBOARD) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(Path(path).read_text())
    return document


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """The panels, rows' collapsed panels included, in reading order."""
    found: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            found += panel.get("panels", [])
        else:
            found.append(panel)
    return sorted(found, key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))


async def query(
    url: str, dashboard: dict[str, Any], time_from: datetime, time_to: datetime
) -> list[PanelData]:
    """Run every target of every panel as written (macros expanded), read-only; fail loudly."""
    conn = await asyncpg.connect(url)
    try:
        out = []
        for panel in panels(dashboard):
            frames = []
            for target in panel.get("targets", []):
                where = f"panel {panel.get('id')} {panel.get('title')!r}, query {target.get('refId', '?')}"
                if not target.get("rawSql"):
                    raise PanelError(f"{where}: no rawSql (only code-mode SQL targets can be run)")
                sql = expand(target["rawSql"], time_from, time_to)
                try:
                    async with conn.transaction(readonly=True):
                        records = await conn.fetch(sql)
                except asyncpg.PostgresError as error:
                    raise PanelError(f"{where} failed: {type(error).__name__}: {error}\n{sql}") from error
                columns = (
                    list(records[0].keys())
                    if records
                    else [a.name for a in (await conn.prepare(sql)).get_attributes()]
                )
                rows = [tuple(_plain(v) for v in r.values()) for r in records]
                frames.append(
                    Frame(target.get("refId", "A"), target.get("format", "time_series"), sql, columns, rows)
                )
            out.append(PanelData(panel, frames))
        return out
    finally:
        await conn.close()


def _plain(value: Any) -> Any:
    return float(value) if isinstance(value, Decimal) else value


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float | Decimal):
        return float(value)
    return None


@dataclass(frozen=True)
class Series:
    name: str
    times: list[datetime]
    values: list[float | None]


def series(frame: Frame) -> list[Series]:
    """A time_series frame as Grafana's SQL data sources read it: a ``time`` column, one series per
    other numeric column, or with a ``metric`` column one series per metric value (long format)."""
    if "time" not in frame.columns:
        raise PanelError(
            f"query {frame.ref_id}: a time_series result needs a column named time: {frame.columns}"
        )
    t = frame.columns.index("time")
    if "metric" in frame.columns:
        m = frame.columns.index("metric")
        value_columns = [i for i in range(len(frame.columns)) if i not in (t, m)]
        points: dict[str, dict[datetime, float | None]] = {}
        for row in frame.rows:
            for i in value_columns:
                name = str(row[m]) if len(value_columns) == 1 else f"{row[m]} {frame.columns[i]}"
                points.setdefault(name, {})[row[t]] = _number(row[i])
        times = sorted({row[t] for row in frame.rows})
        return [Series(name, times, [points[name].get(x) for x in times]) for name in sorted(points)]
    times = [row[t] for row in frame.rows]
    found = []
    for i, column in enumerate(frame.columns):
        if i == t or any(v is not None and _number(v) is None for v in (row[i] for row in frame.rows)):
            continue  # a text column: a label, not a series
        found.append(Series(column, times, [_number(row[i]) for row in frame.rows]))
    return found


def stat_values(frames: Sequence[Frame]) -> list[tuple[str, float | None]]:
    """Each numeric field reduced to its last non-null value (the stat panel's default)."""
    values = []
    for frame in frames:
        for i, column in enumerate(frame.columns):
            if column == "time":
                continue
            numbers = [_number(row[i]) for row in frame.rows]
            if (
                frame.rows
                and all(n is None for n in numbers)
                and any(row[i] is not None for row in frame.rows)
            ):
                continue  # text
            last = next((n for n in reversed(numbers) if n is not None), None)
            values.append((column, last))
    return values


# --- units -------------------------------------------------------------------------------------
