"""A short-lived cache of whole answers for the two routes MOR's pages hit hardest.

A device list page asks for one bullet per row, and every open page polls the
JSON API. The data only changes when a collector writes (each cron run, or an
event), so answering the same question from memory for a second or two costs
nothing in freshness and spares the database a query per image.

An answer is keyed by what it depends on: the route and its normalised ids
(``/devices/012/bullet.svg`` and ``/devices/12/bullet.svg?v=1`` are one answer),
never by ``exp`` or ``sig``, which differ for every page the GUI renders. The
signature is checked before the cache is asked (``before_request``), so a
request that fails it is never answered from here. Each worker process has its
own cache, bounded by entries, by bytes and by age: an answer is dropped when
it expires, or sooner, oldest first, when the cache is full.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from functools import wraps
from typing import Any, NamedTuple, Optional

from flask import Response, current_app, request

#: entries per process; the oldest go first when it is full
MAX_ENTRIES = 4096
#: what the cache holds per process unless MOR_WIDGET_CACHE_MB says otherwise
MAX_BYTES = 16 * 1024 * 1024
#: an answer larger than this share of the bound is not kept (it would push out many others)
LARGEST_SHARE = 8
#: bytes an entry costs beyond its key, body and headers (objects, the dict slot), roughly
ENTRY_OVERHEAD = 400
_KEPT_HEADERS = ("Content-Type", "Cache-Control", "ETag")


class _Entry(NamedTuple):
    expires: float
    body: bytes
    headers: list[tuple[str, str]]
    cost: int


class ResponseCache:
    """Answers by key for ``seconds``; at most ``max_entries`` of them and ``max_bytes`` in all."""

    def __init__(
        self, seconds: float, max_bytes: int = MAX_BYTES, max_entries: int = MAX_ENTRIES
    ) -> None:
        self.seconds = seconds
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        #: in the order put, which is the order of expiry (every entry lives ``seconds``)
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        """What the entries cost, as counted against ``max_bytes``."""
        return self._bytes

    def get(self, key: str) -> Optional[Response]:
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.expires < now:
                self._drop_expired(now)
                entry = None
        if entry is None:
            return None
        return Response(entry.body, headers=entry.headers)

    def put(self, key: str, response: Response) -> None:
        headers = [
            (name, response.headers[name]) for name in _KEPT_HEADERS if name in response.headers
        ]
        body = response.get_data()
        cost = len(key) + len(body) + sum(len(n) + len(v) for n, v in headers) + ENTRY_OVERHEAD
        if cost > self.max_bytes // LARGEST_SHARE:
            return
        now = time.monotonic()
        entry = _Entry(now + self.seconds, body, headers, cost)
        with self._lock:
            self._drop_expired(now)
            replaced = self._entries.pop(key, None)
            if replaced is not None:
                self._bytes -= replaced.cost
            while self._entries and (
                self._bytes + cost > self.max_bytes or len(self._entries) >= self.max_entries
            ):
                self._bytes -= self._entries.popitem(last=False)[1].cost
            self._entries[key] = entry
            self._bytes += cost

    def _drop_expired(self, now: float) -> None:
        """Drop the entries that expired (the oldest first); the lock is held."""
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if oldest.expires >= now:
                return
            self._bytes -= self._entries.popitem(last=False)[1].cost


def cached(key_of: Callable[..., str]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Serve a view's 200 answers from the app's cache for ``MOR_WIDGET_CACHE_SECONDS``.

    ``key_of`` gets the view's arguments and names what the answer depends on; it
    refuses a bad request (400) before the cache or the view is asked.
    """

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def wrapper(**kwargs: Any) -> Any:
            cache: Optional[ResponseCache] = current_app.extensions.get("mor_widget_cache")
            if cache is None:
                return view(**kwargs)
            key = f"{view.__name__}:{key_of(**kwargs)}"
            hit = cache.get(key)
            if hit is not None:
                return hit.make_conditional(request)
            response = current_app.make_response(view(**kwargs))
            if response.status_code == 200:
                cache.put(key, response)
            return response

        return wrapper

    return decorate
