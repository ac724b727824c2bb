"""The delivery-state rule of :mod:`receiver.correlation.state` in Python: pure, order-free. The
tests hold ``message_states`` (its SQL) to it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from receiver.correlation.state import REPORT_WINDOW

ACCEPTED = "000000"
DELIVERED = "DELIVRD"


@dataclass(frozen=True, slots=True)
class Report:
    status: str
    sequence: int | None = None
    total: int | None = None
    update_time: datetime | None = None

    @property
    def part(self) -> int:
        return self.sequence or 1

    @property
    def delivered(self) -> bool:
        return self.status.upper() == DELIVERED


@dataclass(frozen=True, slots=True)
class Sent:
    status: str = ACCEPTED
    total: int = 1
    create_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class State:
    state: str  # pending, delivered, failed or unreported
    status: str | None  # the latest raw status (the send's own code while no report came)
    parts_total: int
    parts_delivered: int
    delivered_at: datetime | None
    latency: timedelta | None


def derive(
    sent: Sent | None, reports: Iterable[Report], *, now: datetime | None = None, window: timedelta = REPORT_WINDOW
) -> State:
    """The state given the reports and the send; with ``now``, also whether the window has passed."""
    reports = list(reports)
    parts_total = max(
        [sent.total if sent else 1]
        + [r.total for r in reports if r.total]
        + [r.part for r in reports]
    )  # fmt: skip
    by_part: dict[int, list[Report]] = {}
    for report in reports:
        by_part.setdefault(report.part, []).append(report)
    delivered = {part for part, rs in by_part.items() if any(r.delivered for r in rs)}
    failed = set(by_part) - delivered

    if (sent is not None and sent.status != ACCEPTED) or failed:
        state = "failed"
    elif len(delivered) >= parts_total:
        state = "delivered"
    elif past_window(sent.create_time if sent else None, now, window):
        state = "unreported"
    else:
        state = "pending"

    delivered_at = None
    if state == "delivered":
        times = [_first_delivery(by_part[part]) for part in delivered]
        delivered_at = max(times) if all(t is not None for t in times) else None  # type: ignore[type-var]
    latency = None
    if delivered_at is not None and sent is not None and sent.create_time is not None:
        latency = delivered_at - sent.create_time
    return State(state, latest_status(sent, reports), parts_total, len(delivered), delivered_at, latency)


def past_window(create_time: datetime | None, now: datetime | None, window: timedelta = REPORT_WINDOW) -> bool:
    """Whether the report window of a send made at ``create_time`` is over at ``now``: at
    ``create_time + window`` exactly, it is."""
    return create_time is not None and now is not None and now >= create_time + window


def latest_status(sent: Sent | None, reports: list[Report]) -> str | None:
    """The status of the report with the latest ``updateTime`` (undated ones rank below dated ones;
    ties go to the greatest status string), or the send's code while there is no report."""
    if not reports:
        return sent.status if sent else None
    dated = [r for r in reports if r.update_time is not None]
    if dated:
        newest = max(r.update_time for r in dated)  # type: ignore[type-var]
        return max(r.status for r in dated if r.update_time == newest)
    return max(r.status for r in reports)


def _first_delivery(reports: list[Report]) -> datetime | None:
    """The earliest dated DELIVRD report of a part (None when they are all undated)."""
    dated = [r.update_time for r in reports if r.delivered and r.update_time is not None]
    return min(dated) if dated else None
