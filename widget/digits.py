"""Numbers from URLs: plain ASCII digits and nothing else.

``int()`` also takes ``" 12"``, ``"+12"``, ``"1_2"`` and other scripts' digits
(``"١٢"``), ``str.isdigit`` takes ``"²"`` (which ``int()`` then refuses), and a
regular expression ending in ``$`` also matches before a final newline
(``"12\\n"``). None of them is an id a link from MOR's GUI carries.
"""

from __future__ import annotations

from typing import Optional


def whole_number(raw: str, max_digits: int = 10) -> Optional[int]:
    """``raw`` as an int when it is 1 to ``max_digits`` ASCII digits ``0-9``, else None."""
    if 0 < len(raw) <= max_digits and raw.isascii() and raw.isdigit():
        return int(raw)
    return None
