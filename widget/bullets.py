"""The six bullets: MOR's colours, our labels and one-sentence explanations, drawn as SVG."""

from __future__ import annotations

from typing import Optional

from markupsafe import Markup

from mor_plugin.status import KINDS, LAGGED, NONE, OK, UNKNOWN, UNMONITORED, UNREACHABLE

#: fill and edge colour per kind; ``None`` fill draws the hollow ring of NO STATUS
COLOURS: dict[str, tuple[str, str]] = {
    OK: ("#22a33a", "#16762a"),
    LAGGED: ("#f5c400", "#b08c00"),
    UNREACHABLE: ("#db2317", "#9c170f"),
    UNKNOWN: ("#000000", "#000000"),
    UNMONITORED: ("#ffffff", "#8c8c8c"),
    NONE: ("none", "#9a9a9a"),
}

LABELS: dict[str, str] = {
    OK: "OK",
    LAGGED: "LAGGED",
    UNREACHABLE: "UNREACHABLE",
    UNKNOWN: "UNKNOWN",
    UNMONITORED: "Unmonitored",
    NONE: "NO STATUS",
}

EXPLANATIONS: dict[str, str] = {
    OK: "Registered, and answers the server's keep-alive checks in time.",
    LAGGED: "Registered and answering, but slower than the limit set for this device.",
    UNREACHABLE: "Stopped answering the server's keep-alive checks; the server keeps trying.",
    UNKNOWN: "Unreachable for more than an hour, or the server cannot tell its state.",
    UNMONITORED: "Keep-alive checks (qualify) are off for this device, so health is not measured.",
    NONE: "The server has not seen this device: it never registered or placed a call.",
}

assert set(COLOURS) == set(LABELS) == set(EXPLANATIONS) == set(KINDS)


def tooltip(kind: str, reg_status: Optional[str] = None) -> str:
    """``UNREACHABLE: Stopped answering ...`` (with Asterisk's raw text when it says more)."""
    head = reg_status if reg_status and kind in (OK, LAGGED) else LABELS[kind]
    return f"{head}: {EXPLANATIONS[kind]}"


def svg(kind: str, title: str, size: int = 16, standalone: bool = False) -> Markup:
    """One bullet; ``standalone`` adds the XML namespace an ``image/svg+xml`` file needs."""
    fill, edge = COLOURS[kind]
    ring = kind == NONE
    # Markup.format escapes every argument; the template itself is constant
    template = Markup(
        '<svg{} width="{}" height="{}" viewBox="0 0 16 16" role="img" class="bullet bullet-{}" '
        'aria-label="{}"><title>{}</title><circle cx="8" cy="8" r="{}" fill="{}" stroke="{}" '
        'stroke-width="{}"/></svg>'
    )
    return template.format(
        Markup(' xmlns="http://www.w3.org/2000/svg"') if standalone else "",
        size,
        size,
        kind,
        LABELS[kind],
        title,
        5.5 if ring else 6.5,
        fill,
        edge,
        2 if ring else 1,
    )
