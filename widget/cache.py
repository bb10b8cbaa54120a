"""What the widget keeps in memory, per worker process, so that MOR's pages do not each
cost a database query.

- ``DeviceCache``: what was read of each device, for the bullets and the JSON API (the
  routes MOR's device lists hit hardest). Every page MOR renders signs its links anew and
  lists its own devices, so almost every URL is new while the devices behind them repeat:
  the cache is keyed by device id, never by a URL. It is dropped server by server as the
  collector and the listener write (see its docstring).
- ``ResponseCache`` with ``cached``: whole answers for ``MOR_WIDGET_CACHE_SECONDS``, keyed
  by what the answer depends on (never by ``exp`` or ``sig``); the legend of all devices,
  one count over every device, uses it.

Both are asked only after the signature was checked (``before_request``), so a request that
fails it is never answered from memory, and both are bounded in bytes
(``MOR_WIDGET_CACHE_MB`` each) and in age.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping
from functools import wraps
from typing import Any, Generic, NamedTuple, Optional, TypeVar

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
V = TypeVar("V")


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


#: how long a device's entry may live while its server's marks say nothing changed: what
#: MOR's own GUI changes (a device renamed, moved or deleted) moves no mark
LONGEST_AGE = 60.0

Marks = Mapping[int, Hashable]


class DeviceCache(Generic[V]):
    """What was read of each device, by device id; at most ``max_bytes`` of it.

    Every page MOR renders signs its links anew and lists its own devices, so almost
    every URL is new while the devices behind them repeat: bullets and JSON lists are
    built from this per-device cache, asked only after the signature was checked.

    How long an entry lives: every collector run and every listener batch that changes a
    server's devices moves that server's *mark* (``Database.change_marks``) in the same
    transaction. Every ``seconds`` the cache reads the marks again and drops what it holds
    of each server whose mark moved, so a change shows within ``seconds``, while entries of
    servers where nothing changed live up to ``LONGEST_AGE``. Without marks (a collector
    before schema 5, a server with no run yet) an entry lives ``seconds``.
    """

    def __init__(
        self,
        seconds: float,
        cost_of: Callable[[V], int],
        server_of: Callable[[V], int],
        max_bytes: int,
        longest: float = LONGEST_AGE,
    ) -> None:
        self.seconds = seconds
        self.longest = max(longest, seconds)
        self.max_bytes = max_bytes
        self._cost_of = cost_of
        self._server_of = server_of
        #: id -> (expires, value, cost, server id, epoch read in), in the order put
        self._entries: OrderedDict[int, tuple[float, V, int, int, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        #: the marks last read (None: none to watch) and when they are due again
        self._marks: Optional[Marks] = None
        self._marks_due = 0.0
        #: counts the drops; an entry read before its server's last drop is not served
        self.epoch = 0
        self._dropped_in: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def watch(self, read_marks: Callable[[], Optional[Marks]]) -> None:
        """Read the servers' marks when they are due (every ``seconds``) and drop what is
        held of each server whose mark moved (or that has none any more)."""
        now = time.monotonic()
        if now < self._marks_due:
            return
        marks = read_marks()
        with self._lock:
            self._marks_due = now + self.seconds
            before = self._marks or {}
            moved = {sid for sid, mark in before.items() if (marks or {}).get(sid) != mark}
            if moved:
                # an entry read before now but put after (another thread) is not served
                self.epoch += 1
                for sid in moved:
                    self._dropped_in[sid] = self.epoch
                # and what is held of those servers leaves memory now
                for device_id in [i for i, e in self._entries.items() if e[3] in moved]:
                    self._bytes -= self._entries.pop(device_id)[2]
            self._marks = marks

    def get_many(self, ids: Iterable[int]) -> tuple[dict[int, V], list[int]]:
        """(the values held for ``ids`` that are still good, the ids that were not)."""
        now = time.monotonic()
        found: dict[int, V] = {}
        missing: list[int] = []
        with self._lock:
            entries, dropped_in = self._entries, self._dropped_in
            for device_id in ids:
                entry = entries.get(device_id)
                if (
                    entry is not None
                    and entry[0] >= now
                    and entry[4] >= dropped_in.get(entry[3], 0)
                ):
                    found[device_id] = entry[1]
                else:
                    missing.append(device_id)
        return found, missing

    def put_many(self, values: Mapping[int, V], read_at: float, epoch: int) -> None:
        """Keep ``values``, read at ``read_at`` (``time.monotonic()``) in ``epoch`` (both taken
        before the read, so that a drop during it is not missed)."""
        with self._lock:
            entries, marks = self._entries, self._marks or {}
            for device_id, value in values.items():
                cost = self._cost_of(value)
                server_id = self._server_of(value)
                age = self.longest if server_id in marks else self.seconds
                replaced = entries.pop(device_id, None)
                if replaced is not None:
                    self._bytes -= replaced[2]
                entries[device_id] = (read_at + age, value, cost, server_id, epoch)
                self._bytes += cost
            # the oldest first, in the order put (an expired entry behind a living one waits
            # for it, within the byte bound)
            now = time.monotonic()
            while entries:
                oldest = next(iter(entries.values()))
                if oldest[0] >= now and self._bytes <= self.max_bytes:
                    break
                self._bytes -= entries.popitem(last=False)[1][2]
