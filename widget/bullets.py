"""The six bullets: MOR's colours, a shape per status, our labels and explanations, as SVG.

Colour alone does not tell the statuses apart (colour-blind admins; a white
bullet and a hollow ring at 12 px), so each has its own shape as well. The
shapes are data: ``svg`` draws them here and ``embed.js`` draws the same
table in the browser.
"""

from __future__ import annotations

from typing import Optional

from markupsafe import Markup

from mor_plugin.status import KINDS, LAGGED, NONE, OK, UNKNOWN, UNMONITORED, UNREACHABLE

#: fill and edge colour per kind; NO STATUS is a ring without fill
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


#: the kinds whose tooltip starts with Asterisk's own text (``LAGGED (2616 ms)``), which
#: says more than the label; embed.js follows the same rule
HEADED_BY_REG_STATUS = frozenset({OK, LAGGED})


def tooltip(kind: str, reg_status: Optional[str] = None) -> str:
    """``UNREACHABLE: Stopped answering ...`` (with Asterisk's raw text when it says more)."""
    head = reg_status if reg_status and kind in HEADED_BY_REG_STATUS else LABELS[kind]
    return f"{head}: {EXPLANATIONS[kind]}"


#: each kind's drawing in a 16-unit box: (element, attributes), painted in order
SHAPES: dict[str, tuple[tuple[str, dict[str, str]], ...]] = {
    # a disc
    OK: (("circle", {"cx": "8", "cy": "8", "r": "6.5"}),),
    # a warning triangle
    LAGGED: (("path", {"d": "M8 1.2 L15.2 14.3 L0.8 14.3 Z", "stroke-linejoin": "round"}),),
    # a square: stopped answering
    UNREACHABLE: (("rect", {"x": "2", "y": "2", "width": "12", "height": "12"}),),
    # a diamond
    UNKNOWN: (("path", {"d": "M8 0.9 L15.1 8 L8 15.1 L0.9 8 Z"}),),
    # a white disc crossed by a bar: registered, not measured
    UNMONITORED: (
        ("circle", {"cx": "8", "cy": "8", "r": "6.5"}),
        ("rect", {"x": "3.5", "y": "7", "width": "9", "height": "2", "fill": "#6b6b6b"}),
    ),
    # a dashed ring: nothing there
    NONE: (("circle", {"cx": "8", "cy": "8", "r": "5.5", "stroke-dasharray": "2.4 1.9"}),),
}

assert set(SHAPES) == set(KINDS)


def _parts(kind: str) -> list[tuple[str, dict[str, str]]]:
    """The kind's elements with their colours: the first takes the fill and edge."""
    fill, edge = COLOURS[kind]
    width = "1.6" if kind == NONE else "1"
    drawn = []
    for index, (tag, attributes) in enumerate(SHAPES[kind]):
        colours = {"fill": fill, "stroke": edge, "stroke-width": width} if index == 0 else {}
        drawn.append((tag, colours | attributes))
    return drawn


#: each kind's elements, coloured: what svg() writes and embed.js builds
PARTS = {kind: _parts(kind) for kind in KINDS}

_ATTRIBUTE = Markup(' {}="{}"')
#: each kind's drawing as SVG markup, written once (Markup.format escapes every value)
_BODIES = {
    kind: Markup("").join(
        Markup("<{}{}/>").format(
            tag, Markup("").join(_ATTRIBUTE.format(k, v) for k, v in attributes.items())
        )
        for tag, attributes in parts
    )
    for kind, parts in PARTS.items()
}
_SVG = Markup(
    '<svg{} width="{}" height="{}" viewBox="0 0 16 16" role="img" class="bullet bullet-{}" '
    'aria-label="{}"><title>{}</title>{}</svg>'
)


def svg(kind: str, title: str, size: int = 16, standalone: bool = False) -> Markup:
    """One bullet; ``title`` is its tooltip and accessible name; ``standalone`` adds the XML
    namespace an ``image/svg+xml`` file needs. Markup.format escapes every value."""
    return _SVG.format(
        Markup(' xmlns="http://www.w3.org/2000/svg"') if standalone else "",
        size,
        size,
        kind,
        title,
        title,
        _BODIES[kind],
    )
