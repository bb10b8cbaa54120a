"""Shared by the listener and history tests: a webhook receiver on loopback, a listener
running in a thread, and polling the database until a condition holds."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

from mor_plugin.config import Settings
from mor_plugin.listener import Listener
from mor_plugin.store import ensure_schema, make_engine


class Receiver:
    """A webhook endpoint on 127.0.0.1 that records every POST (body, lower-cased headers)."""

    def __init__(self, status: int = 204) -> None:
        self.status = status
        self.posts: list[tuple[bytes, dict[str, str]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.posts.append((body, {k.lower(): v for k, v in self.headers.items()}))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def alerts(self, secret: str) -> list[dict[str, Any]]:
        """Every alert received, after checking each POST's signature."""
        out: list[dict[str, Any]] = []
        for body, headers in self.posts:
            expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(headers["x-mor-signature"], expected)
            assert headers["content-type"] == "application/json"
            out.extend(json.loads(body)["alerts"])
        return out


def utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def wait_for(check: Callable[[], Any], timeout: float = 5.0, every: float = 0.02) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {value!r})")
        time.sleep(every)


class RunningListener:
    """A Listener on its own event loop in a thread, stoppable like SIGTERM stops it."""

    def __init__(self, listener: Listener, loop: asyncio.AbstractEventLoop) -> None:
        self.listener = listener
        self.loop = loop
        self.code: Optional[int] = None
        self.thread: Optional[threading.Thread] = None

    def stop(self) -> Optional[int]:
        self.loop.call_soon_threadsafe(self.listener.stop.set)
        assert self.thread is not None
        self.thread.join(15)
        assert not self.thread.is_alive(), "the listener did not stop within 15 s"
        return self.code


@contextmanager
def listening(settings: Settings, **options: Any) -> Iterator[RunningListener]:
    """Run the listener of ``settings`` until the block ends."""
    from mor_plugin.cli import _endpoint

    engine = make_engine(settings.db_url, timeout=settings.db_timeout)
    endpoint = _endpoint(settings, engine)
    ensure_schema(engine, utc_now())  # as cli --watch does before it listens
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, RunningListener] = {}

    def serve() -> None:
        asyncio.set_event_loop(loop)
        listener = Listener(settings, endpoint, engine, utc_now=utc_now, **options)
        running = RunningListener(listener, loop)
        holder["running"] = running
        ready.set()
        try:
            running.code = loop.run_until_complete(listener.run())
        finally:
            loop.close()

    thread = threading.Thread(target=serve, name="listener", daemon=True)
    thread.start()
    assert ready.wait(5)
    running = holder["running"]
    running.thread = thread
    try:
        yield running
    finally:
        if thread.is_alive():
            running.stop()
        engine.dispose()
