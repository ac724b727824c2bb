"""Draw a Grafana dashboard JSON as a picture, from its own panel queries: a stand-in, not Grafana.

    python -m dashboards.render --database-url URL --out docs/dashboard.png
                                [--from 2025-01-01T00:00:00Z|now-24h] [--to ...|now]
                                [--dashboard dashboards/grafana-receiver.json]

Grafana cannot be installed from the registries this project uses, so the dashboard's picture
in docs/operations.md is drawn by this module. It is faithful where it matters: every panel's ``rawSql`` runs as written,
after expanding the Grafana macros of the PostgreSQL data source (``$__timeFilter(col)`` and
friends, :func:`expand`) for the chosen time range, in a read-only transaction; a query that fails,
or a macro or variable this module does not know, stops the rendering with an error naming the
panel. The results are turned into data frames the way Grafana's SQL data sources do (``time``
column, ``metric`` column for one series per value) and drawn at each panel's ``gridPos`` on a
24-column grid in a dark theme: stat panels as big numbers (unit, decimals, thresholds, fixed
colours and by-name overrides), time series as bars or lines (stacking, fill opacity, unit,
palette-classic colours), tables as tables. What it does not draw: tooltips, links, sparklines,
panel options it does not read. The query part (:func:`expand`, :func:`query`, :func:`series`)
needs only asyncpg; the drawing needs matplotlib (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg

DASHBOARD = Path(__file__).with_name("grafana-receiver.json")


class RenderError(Exception):
    """A panel that cannot be drawn as Grafana would: a failing query, an unknown macro ..."""


# --- time range and macros ---------------------------------------------------------------------


def parse_time(text: str, now: datetime) -> datetime:
    """``now``, ``now-24h`` (s, m, h, d, w), or an ISO 8601 time (UTC when it names no zone)."""
    relative = re.fullmatch(r"now(?:-(\d+)([smhdw]))?", text.strip())
    if relative:
        if not relative.group(1):
            return now
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[relative.group(2)]
        return now - timedelta(**{unit: int(relative.group(1))})
    moment = datetime.fromisoformat(text.strip())
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_MACRO = re.compile(r"\$__(\w+)\(([^()]*)\)")
_VARIABLE = re.compile(r"\$(?:\{[^}]*\}|\[\[[^\]]*\]\]|__\w+|[A-Za-z_]\w*)")


def expand(sql: str, time_from: datetime, time_to: datetime) -> str:
    """``sql`` with the PostgreSQL data source's macros replaced as Grafana does for this range.

    Raises :class:`RenderError` for any other macro or a dashboard variable: the picture must
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
        raise RenderError(f"the Grafana macro {match.group(0)} is not one this renderer expands")

    expanded = _MACRO.sub(one, sql)
    leftover = _VARIABLE.search(expanded)
    if leftover:
        raise RenderError(f"{leftover.group(0)}: a Grafana variable or macro this renderer does not expand")
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
    """The panels to draw, rows' collapsed panels included, in reading order."""
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
                    raise RenderError(f"{where}: no rawSql (only code-mode SQL targets can be run)")
                sql = expand(target["rawSql"], time_from, time_to)
                try:
                    async with conn.transaction(readonly=True):
                        records = await conn.fetch(sql)
                except asyncpg.PostgresError as error:
                    raise RenderError(f"{where} failed: {type(error).__name__}: {error}\n{sql}") from error
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
        raise RenderError(
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


def format_value(value: float | None, unit: str | None, decimals: int | None = None) -> str:
    """A value as Grafana shows it in this unit (the few units the dashboard uses)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "No data"
    if unit == "percentunit":
        return f"{value * 100:.{2 if decimals is None else decimals}f}%"
    if unit == "percent":
        return f"{value:.{2 if decimals is None else decimals}f}%"
    if unit == "s":
        return _duration(value, decimals)
    return _short(value, decimals)


def _short(value: float, decimals: int | None = None) -> str:
    for scale, suffix in ((1e12, " Tri"), (1e9, " Bil"), (1e6, " Mil"), (1e3, " K")):
        if abs(value) >= scale:
            return f"{_trim(value / scale, decimals)}{suffix}"
    return _trim(value, decimals)


def _trim(value: float, decimals: int | None) -> str:
    if decimals is not None:
        return f"{value:.{decimals}f}"
    if value == int(value):
        return str(int(value))
    digits = max(0, 2 - math.floor(math.log10(abs(value)))) if value else 0
    return f"{value:.{digits}f}".rstrip("0").rstrip(".")


def _duration(seconds: float, decimals: int | None = None) -> str:
    for size, name in ((86400, "day"), (3600, "hour"), (60, "min")):
        if abs(seconds) >= size:
            return f"{_trim(seconds / size, decimals)} {name}"
    if 0 < abs(seconds) < 1:
        return f"{_trim(seconds * 1000, decimals)} ms"
    return f"{_trim(seconds, decimals)} s"


# --- drawing -----------------------------------------------------------------------------------

CANVAS = "#111217"
PANEL = "#181b1f"
BORDER = "#2c2f36"
TEXT = "#ccccdc"
MUTED = "#8e8e9e"
GRID = "#26282e"
NAMED = {
    "green": "#73BF69", "red": "#F2495C", "orange": "#FF9830", "yellow": "#FADE2A", "blue": "#5794F2",
    "purple": "#B877D9", "text": TEXT, "transparent": "#00000000",
    "dark-green": "#37872D", "dark-red": "#C4162A", "dark-orange": "#FA6400", "dark-yellow": "#E0B400",
    "dark-blue": "#1F60C4", "dark-purple": "#8F3BB8",
    "light-green": "#96D98D", "light-red": "#FF7383", "light-orange": "#FFB357", "light-yellow": "#FFF899",
    "light-blue": "#8AB8FF", "light-purple": "#CA95E5",
}  # fmt: skip
CLASSIC = ("#7EB26D", "#EAB839", "#6ED0E0", "#EF843C", "#E24D42", "#1F78C1", "#BA43A6", "#705DA0",
           "#508642", "#CCA300", "#447EBC", "#C15C17", "#890F02", "#0A437C", "#6D1F62", "#584477")  # fmt: skip
DEFAULT_THRESHOLDS: list[dict[str, Any]] = [
    {"color": "green", "value": None},
    {"color": "red", "value": 80},
]  # Grafana's

CELL, GAP = 30, 8  # Grafana's grid: 30 px rows, 8 px between panels
DPI = 100


def color(name: str) -> str:
    return NAMED.get(name, name)


def field_config(panel: dict[str, Any], field: str) -> dict[str, Any]:
    """The panel's field defaults with the by-name overrides of ``field`` applied."""
    config = dict(panel.get("fieldConfig", {}).get("defaults", {}))
    for override in panel.get("fieldConfig", {}).get("overrides", []):
        matcher = override.get("matcher", {})
        if matcher.get("id") == "byName" and matcher.get("options") == field:
            for prop in override.get("properties", []):
                config[prop["id"]] = prop.get("value")
    return config


def field_color(config: dict[str, Any], value: float | None, index: int, default_mode: str) -> str:
    """The colour Grafana gives a field: fixed, by thresholds on ``value``, or the classic palette."""
    mode = (config.get("color") or {}).get("mode", default_mode)
    if mode == "fixed":
        return color(config["color"].get("fixedColor", "text"))
    if mode == "thresholds":
        steps: list[dict[str, Any]] = (config.get("thresholds") or {}).get("steps") or DEFAULT_THRESHOLDS
        chosen = steps[0]["color"]
        for step in steps[1:]:
            if value is not None and step.get("value") is not None and value >= step["value"]:
                chosen = step["color"]
        return color(chosen)
    return CLASSIC[index % len(CLASSIC)]


class Canvas:
    """Pixel coordinates (from the top left) on a matplotlib figure."""

    def __init__(self, plt: Any, width: int, height: int) -> None:
        self.plt = plt
        self.width, self.height = width, height
        self.fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor=CANVAS)

    def fx(self, x: float) -> float:
        return x / self.width

    def fy(self, y: float) -> float:
        return 1 - y / self.height

    def rect(self, x: float, y: float, w: float, h: float, face: str, edge: str | None = None) -> None:
        from matplotlib.patches import Rectangle

        self.fig.patches.append(
            Rectangle((self.fx(x), self.fy(y + h)), w / self.width, h / self.height, transform=self.fig.transFigure,
                      facecolor=face, edgecolor=edge or face, linewidth=1, zorder=-1)
        )  # fmt: skip

    def text(self, x: float, y: float, text: str, px: float, col: str = TEXT, **kw: Any) -> Any:
        """``px``: font size in pixels, as CSS says it."""
        return self.fig.text(self.fx(x), self.fy(y), text, fontsize=px * 72 / DPI, color=col, **kw)

    def line(self, x0: float, y0: float, x1: float, y1: float, col: str, width: float = 1) -> None:
        from matplotlib.lines import Line2D

        self.fig.lines.append(
            Line2D([self.fx(x0), self.fx(x1)], [self.fy(y0), self.fy(y1)], transform=self.fig.transFigure,
                   color=col, linewidth=width)
        )  # fmt: skip

    def axes(self, x: float, y: float, w: float, h: float) -> Any:
        return self.fig.add_axes((self.fx(x), self.fy(y + h), w / self.width, h / self.height))


def draw(
    dashboard: dict[str, Any],
    data: Sequence[PanelData],
    out: Path,
    time_from: datetime,
    time_to: datetime,
    width: int = 1600,
) -> Path:
    """Draw the panels' data at their grid positions into a PNG at ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    margin, header = 16, 52
    column = (width - 2 * margin - 23 * GAP) / 24
    rows = max(p.panel["gridPos"]["y"] + p.panel["gridPos"]["h"] for p in data)
    height = int(header + rows * (CELL + GAP) - GAP + margin)
    canvas = Canvas(plt, width, height)
    canvas.text(margin, 30, dashboard.get("title", ""), 18, TEXT, fontweight="bold")
    span = f"{time_from.astimezone(UTC):%Y-%m-%d %H:%M} to {time_to.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
    canvas.text(width - margin, 24, span, 13, TEXT, ha="right")
    canvas.text(
        width - margin, 42, "drawn by dashboards/render.py from each panel's own SQL (not a Grafana screenshot)",
        11, MUTED, ha="right",
    )  # fmt: skip
    for item in data:
        grid = item.panel["gridPos"]
        x = margin + grid["x"] * (column + GAP)
        y = header + grid["y"] * (CELL + GAP)
        w = grid["w"] * column + (grid["w"] - 1) * GAP
        h = grid["h"] * CELL + (grid["h"] - 1) * GAP
        canvas.rect(x, y, w, h, PANEL, BORDER)
        canvas.text(x + 10, y + 20, item.panel.get("title", ""), 14, TEXT, fontweight="bold")
        box = (x + 10, y + 32, w - 20, h - 40)
        kind = item.panel.get("type")
        if not any(f.rows for f in item.frames):
            canvas.text(x + w / 2, y + h / 2 + 8, "No data", 16, MUTED, ha="center")
        elif kind == "stat":
            _stat(canvas, item, *box)
        elif kind == "timeseries":
            _timeseries(canvas, item, *box, time_from, time_to)
        elif kind == "table":
            _table(canvas, item, *box)
        else:
            raise RenderError(
                f"panel {item.panel.get('id')}: the panel type {kind!r} is not drawn by this renderer"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.fig.savefig(out, dpi=DPI, facecolor=CANVAS, pil_kwargs={"optimize": True})
    plt.close(canvas.fig)
    return out


def _stat(canvas: Canvas, item: PanelData, x: float, y: float, w: float, h: float) -> None:
    values = stat_values(item.frames)
    named = len(values) > 1  # textMode auto: a name above each value when there are several
    cell = w / len(values)
    shown: list[tuple[str, str, str]] = []
    for name, value in values:
        config = field_config(item.panel, name)
        shown.append((config.get("displayName", name), format_value(value, config.get("unit"), config.get("decimals")),
                      field_color(config, value, len(shown), "thresholds")))  # fmt: skip
    longest = max(len(text) for _, text, _ in shown)
    size = min(h * (0.42 if named else 0.6), cell / (0.66 * max(longest, 3)))  # one size for all, as Grafana
    value_y = y + h / 2 + size * 0.36 + (h * 0.14 if named else 0)
    for i, (name, text, col) in enumerate(shown):
        centre = x + cell * i + cell / 2
        if named:
            canvas.text(centre, value_y - size * 1.05, name, min(15, max(11, size * 0.3)), TEXT, ha="center")
        canvas.text(centre, value_y, text, size, col, ha="center", fontweight="bold")


def _timeseries(
    canvas: Canvas,
    item: PanelData,
    x: float,
    y: float,
    w: float,
    h: float,
    time_from: datetime,
    time_to: datetime,
) -> None:
    import matplotlib.dates as mdates
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    found = [s for frame in item.frames for s in series(frame)]
    defaults = item.panel.get("fieldConfig", {}).get("defaults", {})
    custom = defaults.get("custom", {})
    unit = defaults.get("unit")
    bars = custom.get("drawStyle") == "bars"
    stacked = (custom.get("stacking") or {}).get("mode") in ("normal", "percent")
    alpha = float(custom.get("fillOpacity", 0)) / 100

    legend_rows = _legend_rows([s.name for s in found], w)
    legend_h = 18 * len(legend_rows)
    axes_h = h - legend_h - 26  # below the axes: time labels, then the legend
    ax = canvas.axes(x + 52, y + 4, w - 60, axes_h - 4)
    ax.set_facecolor(PANEL)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.tick_params(colors=MUTED, labelsize=8.5, length=0, pad=5)
    ax.grid(True, color=GRID, linewidth=1)
    ax.set_axisbelow(True)
    start, end = time_from.astimezone(UTC), time_to.astimezone(UTC)
    ax.set_xlim(mdates.date2num(start), mdates.date2num(end))  # type: ignore[no-untyped-call]
    step = _hour_step(end - start, w)
    ax.xaxis.set_major_locator(
        mdates.HourLocator(byhour=range(0, 24, step))  # type: ignore[no-untyped-call]
        if step
        else mdates.AutoDateLocator(maxticks=max(3, int(w / 90)))  # type: ignore[no-untyped-call]
    )
    ax.xaxis.set_major_formatter(FuncFormatter(_time_tick))
    nbins = max(3, int(axes_h / 45))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=nbins, steps=[1, 2, 2.5, 5, 10], min_n_ticks=3))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _axis_value(v, unit)))

    colors = []
    base: dict[float, float] = {}
    width = timedelta(hours=1).total_seconds() / 86400 * 0.6  # Grafana's bar width factor 0.6 of the step
    low, high = math.inf, -math.inf
    for i, s in enumerate(found):
        col = field_color(field_config(item.panel, s.name), None, i, "palette-classic")
        colors.append(col)
        times = [mdates.date2num(t) for t in s.times]  # type: ignore[no-untyped-call]
        values = [math.nan if v is None else v for v in s.values]
        if bars:
            bottoms = [base.get(t, 0.0) if stacked else 0.0 for t in times]
            heights = [0.0 if math.isnan(v) else v for v in values]
            ax.bar(
                times, heights, width=width, bottom=bottoms, color=col, alpha=max(alpha, 0.05), linewidth=0
            )
            ax.bar(times, heights, width=width, bottom=bottoms, fill=False, edgecolor=col, linewidth=1)
            for t, b, v in zip(times, bottoms, heights, strict=True):
                base[t] = b + v
                high = max(high, b + v)
            low = 0.0
        else:
            ax.plot(times, values, color=col, linewidth=1.3)
            if w / max(len(times), 1) > 20:
                ax.plot(times, values, "o", color=col, markersize=2.6)
            finite = [v for v in values if not math.isnan(v)]
            if finite:
                low, high = min(low, *finite), max(high, *finite)
    if bars or low >= 0 and low < (high - low) * 0.5:
        low = 0.0
    if math.isfinite(low) and math.isfinite(high):
        pad = (high - low) * 0.08 or abs(high) * 0.1 or 1.0
        ax.set_ylim(low if low == 0.0 else low - pad, high + pad)
        if unit == "s":
            bottom, top = ax.get_ylim()
            ax.set_yticks(duration_ticks(bottom, top, nbins))
    if not bars and alpha > 0:
        bottom = ax.get_ylim()[0]
        for s, col in zip(found, colors, strict=True):
            times = [mdates.date2num(t) for t in s.times]  # type: ignore[no-untyped-call]
            values = [math.nan if v is None else v for v in s.values]
            ax.fill_between(times, values, bottom, color=col, alpha=alpha, linewidth=0)
    _legend(canvas, found, colors, legend_rows, x + 4, y + h - legend_h + 13)


DURATION_STEPS = (
    1,
    2,
    5,
    10,
    15,
    30,
    60,
    120,
    300,
    600,
    900,
    1200,
    1800,
    3600,
    7200,
    10800,
    21600,
    43200,
    86400,
)


def duration_ticks(low: float, high: float, nbins: int) -> list[float]:
    """Ticks on seconds at steps a clock reads well (5 s, 1 min, 5 min, 1 hour ...)."""
    step = next((s for s in DURATION_STEPS if (high - low) / s <= nbins), DURATION_STEPS[-1])
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 1)]


def _hour_step(span: timedelta, width: float) -> int:
    """Hours between time labels at least 70 px apart; 0: more than hours (days, months)."""
    hours = span.total_seconds() / 3600
    return next((step for step in (1, 2, 3, 4, 6, 12) if width / (hours / step) >= 70), 0)


def _time_tick(value: float, _: object) -> str:
    import matplotlib.dates as mdates

    moment = mdates.num2date(value)  # type: ignore[no-untyped-call]
    return f"{moment:%m/%d}" if moment.hour == 0 and moment.minute == 0 else f"{moment:%H:%M}"


def _axis_value(value: float, unit: str | None) -> str:
    if unit == "percentunit":
        return f"{value * 100:.{0 if abs(value * 100 - round(value * 100)) < 1e-9 else 1}f}%"
    if unit == "s":
        return _duration(value)
    return _short(value)


def _legend_rows(names: Sequence[str], width: float) -> list[list[int]]:
    rows: list[list[int]] = [[]]
    used = 0.0
    for i, name in enumerate(names):
        need = 26 + 7.2 * len(name) + 14
        if rows[-1] and used + need > width:
            rows.append([])
            used = 0.0
        rows[-1].append(i)
        used += need
    return rows if names else []


def _legend(canvas: Canvas, found: Sequence[Series], colors: Sequence[str], rows: list[list[int]],
            x: float, y: float) -> None:  # fmt: skip
    for r, row in enumerate(rows):
        cursor = x
        for i in row:
            line_y = y + r * 18 - 4
            canvas.line(cursor, line_y, cursor + 14, line_y, colors[i], width=3)
            canvas.text(cursor + 20, y + r * 18, found[i].name, 12, TEXT)
            cursor += 26 + 7.2 * len(found[i].name) + 14


def _table(canvas: Canvas, item: PanelData, x: float, y: float, w: float, h: float) -> None:
    frame = item.frames[0]
    row_h = 30
    cols = len(frame.columns)
    col_w = w / cols
    numeric = [all(_number(r[i]) is not None for r in frame.rows if r[i] is not None) for i in range(cols)]

    def cell(i: int, top: float, text: str, col: str, weight: str = "normal") -> None:
        if numeric[i]:
            canvas.text(
                x + col_w * (i + 1) - 10, top + row_h / 2 + 5, text, 13, col, ha="right", fontweight=weight
            )
        else:
            canvas.text(x + col_w * i + 10, top + row_h / 2 + 5, text, 13, col, fontweight=weight)

    for i, name in enumerate(frame.columns):
        cell(i, y, name, TEXT, "bold")
    canvas.line(x, y + row_h, x + w, y + row_h, BORDER)
    fits = int((h - row_h) // row_h)
    for r, row in enumerate(frame.rows[:fits]):
        top = y + row_h * (r + 1)
        for i, value in enumerate(row):
            config = field_config(item.panel, frame.columns[i])
            text = "" if value is None else (format_value(_number(value), config.get("unit"), config.get("decimals"))
                                             if numeric[i] else str(value))  # fmt: skip
            cell(i, top, text, TEXT)
        canvas.line(x, top + row_h, x + w, top + row_h, GRID)
    if len(frame.rows) > fits:
        canvas.text(
            x + w - 4, y + h + 4, f"{len(frame.rows) - fits} more rows (scroll)", 11, MUTED, ha="right"
        )


# --- command line ------------------------------------------------------------------------------


def render(
    url: str,
    out: Path,
    time_from: datetime,
    time_to: datetime,
    dashboard_path: Path = DASHBOARD,
) -> Path:
    """Query and draw: the whole job of ``python -m dashboards.render``."""
    dashboard = load(dashboard_path)
    data = asyncio.run(query(url, dashboard, time_from, time_to))
    return draw(dashboard, data, out, time_from, time_to)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dashboards.render",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--database-url", required=True, help="PostgreSQL URL (a receiver_readonly login is enough)"
    )
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--from", dest="time_from", default="now-24h", help="start: ISO 8601 or now-N[smhdw]")
    parser.add_argument("--to", dest="time_to", default="now", help="end: ISO 8601 or now")
    parser.add_argument("--dashboard", type=Path, default=DASHBOARD, help="the dashboard JSON")
    args = parser.parse_args(argv)
    now = datetime.now(UTC).replace(microsecond=0)
    try:
        time_from, time_to = parse_time(args.time_from, now), parse_time(args.time_to, now)
        path = render(args.database_url, args.out, time_from, time_to, args.dashboard)
    except RenderError as error:
        print(f"dashboards.render: {error}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
