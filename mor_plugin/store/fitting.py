"""Text from Asterisk as MOR's columns can hold it: cut to length, within the BMP."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Optional

from .. import schema

#: Characters that MySQL's three-byte ``utf8`` (MOR's tables) cannot store.
_BEYOND_BMP = re.compile("[\U00010000-\U0010ffff]")


def fit(column: Any, value: Optional[str]) -> Optional[str]:
    """``value`` as the column can hold it: cut to its declared length, and in MOR's own
    tables (``utf8``, three bytes a character at most) with U+FFFD for any character
    beyond the BMP. A long or exotic text from Asterisk is stored as far as it fits and
    never fails the write (MySQL's strict mode refuses it whole)."""
    if value is None:
        return value
    if column.table.metadata is schema.mor_metadata and not _fits_utf8mb3(value):
        value = _BEYOND_BMP.sub("\ufffd", value)
    length = getattr(column.type, "length", None)
    return value if length is None else value[:length]


def _fits_utf8mb3(text: str) -> bool:
    return text.isascii() or _BEYOND_BMP.search(text) is None


def names_mor_can_hold(names: Iterable[str]) -> list[str]:
    """The distinct ``names`` that a row of MOR's ``devices`` could carry, sorted.

    A peer name longer than ``devices.name`` or with a character beyond the BMP
    (``devices`` is ``utf8``) matches no device; in a query it would only make MariaDB
    refuse the statement ("Illegal mix of collations").
    """
    length = length_of(schema.devices.c.name)
    return sorted({n for n in names if len(n) <= length and _fits_utf8mb3(n)})


def length_of(column: Any) -> int:
    """The declared length of a ``String`` column."""
    length: int = getattr(column.type, "length")  # noqa: B009 - typed as TypeEngine
    return length
