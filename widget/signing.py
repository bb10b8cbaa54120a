"""Signed URLs: how the MOR GUI lets a browser fetch one widget page until a deadline.

The signature is the hex HMAC-SHA256, keyed with the shared secret, of the
path and query *as seen by the widget* (without the proxy's ``/mor-status``
prefix) up to, not including, ``&sig=``. ``exp`` (unix time, UTC) must be
inside the signed part and ``sig`` must be the last parameter::

    /devices/12/status?exp=1764410400&sig=<64 hex digits>
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from typing import Optional

from mor_plugin.status import plain_digits

SIG_PARAM = "&sig="
_HEX = re.compile(r"[0-9a-f]{64}")
#: digits of ``exp`` at most (Unix time, UTC)
EXP_DIGITS = 12


def signature(message: str, secret: str) -> str:
    """Hex HMAC-SHA256 of ``message``."""
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def sign_url(path_with_query: str, secret: str, expires_at: int) -> str:
    """``path_with_query`` with ``exp`` and ``sig`` appended (``sig`` last)."""
    separator = "&" if "?" in path_with_query else "?"
    unsigned = f"{path_with_query}{separator}exp={int(expires_at)}"
    return f"{unsigned}{SIG_PARAM}{signature(unsigned, secret)}"


class SignatureError(Exception):
    """Why a request's signature is refused; ``status`` is the HTTP answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def verify(path: str, query: str, secret: str, now: Optional[float] = None) -> int:
    """The link's ``exp`` when it is valid, else ``SignatureError`` (403 bad or missing, 410
    expired). ``sig`` is compared in lower case: Ruby and Python write hex in lower case."""
    if query.startswith("sig="):
        cut, given = 0, query[len("sig=") :]
    else:
        cut = query.rfind(SIG_PARAM)
        if cut < 0:
            raise SignatureError(403, "this link is not signed")
        given = query[cut + len(SIG_PARAM) :]
    given = given.lower()
    if not _HEX.fullmatch(given):
        raise SignatureError(403, "the signature must be the last parameter, 64 hex digits")
    unsigned = f"{path}?{query[:cut]}" if cut else path
    if not hmac.compare_digest(given, signature(unsigned, secret)):
        raise SignatureError(403, "the signature does not match this link")
    expires = _expiry(query[:cut])
    if expires is None:
        raise SignatureError(403, "the signed link has no valid exp parameter")
    if expires < (time.time() if now is None else now):
        raise SignatureError(410, "this link has expired; reload the page to get a new one")
    return expires


def _expiry(signed_query: str) -> Optional[int]:
    for pair in signed_query.split("&"):
        name, _, value = pair.partition("=")
        if name == "exp":
            return plain_digits(value, EXP_DIGITS)
    return None
