"""What the widget takes from its reverse proxy's ``X-Forwarded-*`` headers: safe values only.

Werkzeug's ``ProxyFix`` believes the headers as they come; ``X-Forwarded-Prefix``
ends up in every link and asset URL the widget writes. This middleware, in
front of ``ProxyFix``, drops a header that is not a plain value, so the widget
falls back to what it would use without a proxy:

- ``X-Forwarded-Prefix``: a path of safe segments, ``/mor-status`` or ``/a/b``
  (``^(/[A-Za-z0-9._~-]+)*$``, no ``.`` or ``..`` segment, one trailing ``/``
  tolerated and removed);
- ``X-Forwarded-Host``: ``host`` or ``host:port`` (of each comma-separated value, the
  last is the one ``ProxyFix`` uses and the one checked);
- ``X-Forwarded-Proto``: ``http`` or ``https`` (likewise the last value).

``X-Forwarded-For`` is left to ``ProxyFix``: a value that is not an address
gives a client address that no ``MOR_WIDGET_METRICS_ALLOW`` network contains.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Callable, Optional

MAX_PREFIX = 200
_PREFIX = re.compile(r"(?:/[A-Za-z0-9._~-]+)*")
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]{1,5})?")
_PROTOS = ("http", "https")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def safe_prefix(raw: str) -> Optional[str]:
    """The prefix to put before the widget's paths, or None when ``raw`` is not a safe path."""
    prefix = raw[:-1] if raw.endswith("/") else raw
    if len(prefix) > MAX_PREFIX or not _PREFIX.fullmatch(prefix):
        return None
    if any(segment in (".", "..") for segment in prefix.split("/")):
        return None
    return prefix


def _last(raw: str) -> str:
    return raw.rsplit(",", 1)[-1].strip()


class SafeForwarded:
    """WSGI middleware: removes unsafe ``X-Forwarded-Prefix/-Host/-Proto`` before ``app``."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        prefix = environ.get("HTTP_X_FORWARDED_PREFIX")
        if prefix is not None:
            safe = safe_prefix(prefix)
            if safe is None:
                del environ["HTTP_X_FORWARDED_PREFIX"]
            else:
                environ["HTTP_X_FORWARDED_PREFIX"] = safe
        host = environ.get("HTTP_X_FORWARDED_HOST")
        if host is not None and not _HOST.fullmatch(_last(host)):
            del environ["HTTP_X_FORWARDED_HOST"]
        proto = environ.get("HTTP_X_FORWARDED_PROTO")
        if proto is not None and _last(proto) not in _PROTOS:
            del environ["HTTP_X_FORWARDED_PROTO"]
        return self.app(environ, start_response)
