"""Times as the widget shows them: UTC ISO in JSON, "3 min ago" in HTML."""

from __future__ import annotations

from datetime import datetime
from typing import Optional, overload


@overload
def iso(moment: datetime) -> str: ...
@overload
def iso(moment: None) -> None: ...
@overload
def iso(moment: Optional[datetime]) -> Optional[str]: ...


def iso(moment: Optional[datetime]) -> Optional[str]:
    """``2026-11-29T10:00:00Z`` for a naive UTC datetime; None stays None."""
    if moment is None:
        return None
    return moment.replace(microsecond=0).isoformat() + "Z"


def utc_title(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float) -> str:
    """``45 s``, ``3 min``, ``2 h 5 min``, ``4 days`` — rounded down, short."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days = hours // 24
    return f"{days} day" if days == 1 else f"{days} days"


def ago(moment: datetime, now: datetime) -> str:
    """``just now``, ``3 min ago``; a clock a little ahead of ours also reads "just now"."""
    seconds = (now - moment).total_seconds()
    if seconds < 5:
        return "just now"
    return f"{duration(seconds)} ago"
