"""A short-lived cache of whole answers for the two routes MOR's pages hit hardest.

A device list page asks for one bullet per row, and every open page polls the
JSON API. The data only changes when a collector writes (each cron run, or an
event), so answering the same URL from memory for a second or two costs
nothing in freshness and spares the database a query per image. Each worker
process has its own cache; the signature is still checked on every request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, Optional

from flask import Response, current_app, request

#: entries per process; the oldest go first when it is full
MAX_ENTRIES = 4096
_KEPT_HEADERS = ("Content-Type", "Cache-Control", "ETag")


class ResponseCache:
    def __init__(self, seconds: float, max_entries: int = MAX_ENTRIES) -> None:
        self.seconds = seconds
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, bytes, list[tuple[str, str]]]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Optional[Response]:
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            return None
        return Response(entry[1], headers=entry[2])

    def put(self, key: str, response: Response) -> None:
        headers = [
            (name, response.headers[name]) for name in _KEPT_HEADERS if name in response.headers
        ]
        entry = (time.monotonic() + self.seconds, response.get_data(), headers)
        with self._lock:
            if len(self._entries) >= self.max_entries:
                now = time.monotonic()
                self._entries = {k: v for k, v in self._entries.items() if v[0] >= now}
                while len(self._entries) >= self.max_entries:
                    del self._entries[next(iter(self._entries))]
            self._entries[key] = entry


def cached(view: Callable[..., Any]) -> Callable[..., Any]:
    """Serve a view's 200 answers from the app's cache for ``MOR_WIDGET_CACHE_SECONDS``."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        cache: Optional[ResponseCache] = current_app.extensions.get("mor_widget_cache")
        if cache is None:
            return view(*args, **kwargs)
        key = request.full_path
        hit = cache.get(key)
        if hit is not None:
            return hit.make_conditional(request)
        response = current_app.make_response(view(*args, **kwargs))
        if response.status_code == 200:
            cache.put(key, response)
        return response

    return wrapper
