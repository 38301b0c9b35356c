"""The overview's chart: deliveries finished per minute, stacked by outcome, as SVG geometry.

The numbers are computed here and drawn by the template as ``<rect>`` elements, so the chart
needs no script and no image request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..models import FINISHED_STATUSES, DeliveryActivity, DeliveryStatus

_MINUTE = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class Bar:
    """One outcome's part of one minute's column."""

    x: float
    y: float
    width: float
    height: float
    outcome: str
    label: str


@dataclass(frozen=True, slots=True)
class Tick:
    """A time label under the plot."""

    x: float
    label: str


@dataclass(frozen=True, slots=True)
class MinuteChart:
    width: int
    height: int
    bars: tuple[Bar, ...]
    ticks: tuple[Tick, ...]
    #: The tallest minute (what the top of the plot stands for); 0 when nothing finished.
    peak: int
    minutes: int


def minute_chart(activity: DeliveryActivity, *, width: int = 720, height: int = 160) -> MinuteChart:
    """Stacked columns, one per minute from ``activity.since`` to ``activity.now``."""
    start = _floor_minute(activity.since)
    minutes = max(1, math.ceil((activity.now - start) / _MINUTE))
    columns: dict[int, dict[DeliveryStatus, int]] = {}
    for count in activity.per_minute:
        index = (count.minute - start) // _MINUTE
        if 0 <= index < minutes:
            column = columns.setdefault(index, {})
            column[count.status] = column.get(count.status, 0) + count.count
    peak = max((sum(c.values()) for c in columns.values()), default=0)
    slot = width / minutes
    bars: list[Bar] = []
    for index, column in sorted(columns.items()):
        top = float(height)
        stamp = start + index * _MINUTE
        for outcome in FINISHED_STATUSES:  # stacked bottom up: success, failed, exhausted
            n = column.get(outcome, 0)
            if not n:
                continue
            size = height * n / peak
            top -= size
            bars.append(
                Bar(
                    x=round(index * slot, 2),
                    y=round(top, 2),
                    width=round(max(slot * 0.85, 0.5), 2),
                    height=round(size, 2),
                    outcome=outcome.value,
                    label=f"{stamp:%H:%M} UTC: {n} {outcome.value}",
                )
            )
    return MinuteChart(
        width=width,
        height=height,
        bars=tuple(bars),
        ticks=_ticks(start, minutes, slot),
        peak=peak,
        minutes=minutes,
    )


def _ticks(start: datetime, minutes: int, slot: float) -> tuple[Tick, ...]:
    """Labels on round times: every 15 minutes up to two hours, else every hour or more."""
    step = 15 if minutes <= 120 else 60 * max(1, minutes // 480)
    first = (-(start.hour * 60 + start.minute)) % step
    return tuple(
        Tick(x=round(i * slot, 2), label=f"{start + i * _MINUTE:%H:%M}")
        for i in range(first, minutes, step)
    )


def _floor_minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)
