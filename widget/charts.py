"""The device page's small charts, drawn server-side as inline SVG (no scripts).

A *strip* of the bullet's colours over a window (one coloured block per
status, MOR's colours), and a latency *sparkline* (one polyline per run of
samples, broken where samples are missing). Both are stretched to the width
of the iframe: coordinates are in a fixed ``WIDTH``-unit viewBox, and lines
keep their width through ``vector-effect``. Every text goes through
``Markup.format``, which escapes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from statistics import median
from typing import Optional

from markupsafe import Markup

from mor_plugin.status import KINDS, NONE

from .bullets import COLOURS, LABELS
from .db import History
from .timefmt import duration

WIDTH = 1000
STRIP_HEIGHT = 14
SPARK_HEIGHT = 28
#: the minimum drawn width of a block, so that a blip of a few seconds stays visible
MIN_BLOCK = 2.0
#: "no data": before the first thing the collector recorded
GAP = "gap"
#: a hollow ring cannot colour a block: NO STATUS is pale grey in the strip
STRIP_FILL = {kind: COLOURS[kind][0] for kind in KINDS} | {NONE: "#e4e4e4", GAP: "url(#nodata)"}
STRIP_LABEL = {**LABELS, GAP: "no data"}
LINE_COLOUR = "#2c5d8f"
#: a line breaks where two samples are further apart than this many typical intervals
GAP_FACTOR = 3
MIN_GAP_SECONDS = 600


@dataclass(frozen=True)
class Block:
    """One status over ``[start, end)``."""

    start: datetime
    end: datetime
    kind: str


def _kind(raw: str) -> str:
    return raw if raw in KINDS else NONE


def blocks(history: History, current_kind: str, current_since: Optional[datetime]) -> list[Block]:
    """The window cut into blocks of one status each, oldest first.

    The window starts with the colour of the last change before it, else the
    "from" of the first change in it; with no change at all, the current
    colour, from when the collector says it began (before that: no data). It
    ends with the current colour from ``current_since`` when the last recorded
    change led elsewhere.
    """
    start, end = history.start, history.end
    known_from = start
    if history.before is not None:
        kind = _kind(history.before.to_status)
    elif history.transitions:
        kind = _kind(history.transitions[0].from_status)
    else:
        kind = current_kind
        if current_since is not None and current_since > start:
            known_from = min(current_since, end)
    out: list[Block] = []
    if known_from > start:
        out.append(Block(start, known_from, GAP))
    cursor = known_from
    for change in history.transitions:
        at = min(max(change.at, start), end)
        if at > cursor:
            out.append(Block(cursor, at, kind))
            cursor = at
        kind = _kind(change.to_status)
    if kind != current_kind and current_since is not None and cursor < current_since < end:
        # the colour changed without a recorded transition (another writer): from its since
        out.append(Block(cursor, current_since, kind))
        cursor, kind = current_since, current_kind
    if end > cursor:
        out.append(Block(cursor, end, kind))
    return out


def _x(moment: datetime, start: datetime, end: datetime) -> float:
    span = (end - start).total_seconds() or 1.0
    return round(min(max((moment - start).total_seconds() / span, 0.0), 1.0) * WIDTH, 2)


def _clock(moment: datetime) -> str:
    return moment.strftime("%m-%d %H:%M")


def strip(history: History, current_kind: str, current_since: Optional[datetime]) -> Markup:
    """The status strip as an ``<svg>``; each block has a tooltip with its times."""
    start, end = history.start, history.end
    drawn = []
    for block in blocks(history, current_kind, current_since):
        x0, x1 = _x(block.start, start, end), _x(block.end, start, end)
        title = (
            f"{STRIP_LABEL[block.kind]}: {_clock(block.start)} to {_clock(block.end)} UTC "
            f"({duration((block.end - block.start).total_seconds())})"
        )
        drawn.append((x1 - x0, x0, block.kind, title))
    # long blocks first, so that a short blip drawn on top of its neighbours stays visible
    drawn.sort(key=lambda item: -item[0])
    rects = Markup("").join(
        Markup(
            '<rect class="block block-{}" x="{}" y="0" width="{}" height="{}" fill="{}">'
            "<title>{}</title></rect>"
        ).format(kind, x0, round(max(width, MIN_BLOCK), 2), STRIP_HEIGHT, STRIP_FILL[kind], title)
        for width, x0, kind, title in drawn
    )
    hours = round((end - start).total_seconds() / 3600)
    return Markup(
        '<svg class="strip" viewBox="0 0 {w} {h}" preserveAspectRatio="none" width="100%" '
        'height="{h}" role="img" aria-label="Status over the last {hours} h">'
        '<defs><pattern id="nodata" width="6" height="6" patternUnits="userSpaceOnUse">'
        '<path d="M0 6 L6 0" stroke="#c8c8c8" stroke-width="1"/></pattern></defs>'
        "{rects}"
        '<rect x="0" y="0" width="{w}" height="{h}" fill="none" stroke="#9a9a9a" '
        'stroke-width="1" vector-effect="non-scaling-stroke"/></svg>'
    ).format(w=WIDTH, h=STRIP_HEIGHT, hours=hours, rects=rects)


def runs(samples: Sequence[tuple[datetime, int]]) -> list[list[tuple[datetime, int]]]:
    """Samples split where one is missing (a gap of several typical intervals)."""
    if not samples:
        return []
    steps = [(b[0] - a[0]).total_seconds() for a, b in zip(samples, samples[1:])]
    gap = max(MIN_GAP_SECONDS, GAP_FACTOR * median(steps)) if steps else MIN_GAP_SECONDS
    out = [[samples[0]]]
    for step, sample in zip(steps, samples[1:]):
        if step > gap:
            out.append([])
        out[-1].append(sample)
    return out


def sparkline(history: History) -> Optional[Markup]:
    """The latency line as an ``<svg>``, or None without samples."""
    samples = history.latency
    if not samples:
        return None
    start, end = history.start, history.end
    # from half the lowest to the highest: jitter shows, yet a 20 ms line is not a cliff
    top = max(ms for _, ms in samples)
    bottom = min(ms for _, ms in samples) // 2
    span = (top - bottom) or 1
    usable = SPARK_HEIGHT - 2

    def point(at: datetime, ms: int) -> str:
        return f"{_x(at, start, end)},{round(SPARK_HEIGHT - 1 - (ms - bottom) / span * usable, 2)}"

    lines = []
    for run in runs(samples):
        points = [point(at, ms) for at, ms in run]
        if len(points) == 1:  # a lone sample: a short dash
            x, y = points[0].split(",")
            points.append(f"{min(float(x) + MIN_BLOCK, WIDTH)},{y}")
        lines.append(
            Markup(
                '<polyline points="{}" fill="none" stroke="{}" stroke-width="1.5" '
                'vector-effect="non-scaling-stroke" stroke-linejoin="round"/>'
            ).format(" ".join(points), LINE_COLOUR)
        )
    values = [ms for _, ms in samples]
    title = (
        f"Latency: {min(values)} to {max(values)} ms, last {values[-1]} ms "
        f"at {_clock(samples[-1][0])} UTC ({len(values)} samples)"
    )
    return Markup(
        '<svg class="sparkline" viewBox="0 0 {w} {h}" preserveAspectRatio="none" width="100%" '
        'height="{h}" role="img" aria-label="{title}"><title>{title}</title>'
        '<line x1="0" y1="{base}" x2="{w}" y2="{base}" stroke="#d5dde5" stroke-width="1" '
        'vector-effect="non-scaling-stroke"/>{lines}</svg>'
    ).format(
        w=WIDTH, h=SPARK_HEIGHT, base=SPARK_HEIGHT - 0.5, title=title, lines=Markup("").join(lines)
    )
