"""Webhook delivery against hostile receivers on 127.0.0.1: one that trickles its answer a
byte at a time (the whole delivery ends by webhook_timeout, and the cron run's lock is
free meanwhile), and one that redirects (a 3xx is a failed delivery, never followed)."""

from __future__ import annotations

import json
import logging
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Optional

import pytest
from regstatus_helpers import (
    ROOT,
    WITH_A_PROVIDER,
    CollectorWorld,
    MorDatabase,
    Receiver,
    summary,
    utc_now,
    write_conf,
)

from mor_plugin import notify
from mor_plugin.simulator import AmiSimulator
from mor_plugin.status import Notified


@pytest.fixture
def collector_world() -> CollectorWorld:
    """Device 2 is a provider's: the webhook tests alert on it."""
    return WITH_A_PROVIDER


class Trickler:
    """Reads each request whole, then answers ``HTTP/1.1 200 OK …`` one byte every
    ``every`` seconds -- never silent long enough for a per-read socket timeout -- for at
    most ``limit`` seconds. Records when each request arrived and when its client hung up."""

    def __init__(self, every: float = 0.2, limit: float = 8.0) -> None:
        self.every, self.limit = every, limit
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/hook"
        self.arrived: list[float] = []
        self.hung_up: list[float] = []
        self.requested = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> Trickler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.server.close()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.lower().split(b"\r\n")
                if line.startswith(b"content-length:")
            )
            while len(body) < length:
                body += conn.recv(65536)
            self.arrived.append(time.monotonic())
            self.requested.set()
            answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
            end = time.monotonic() + self.limit
            for byte in answer:
                readable, _, _ = select.select([conn], [], [], self.every)
                if readable and not conn.recv(1):
                    break  # the client hung up
                if time.monotonic() > end or self.stopping.is_set():
                    break
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    break
            self.hung_up.append(time.monotonic())


def _alerts(count: int) -> list[notify.Alert]:
    now = utc_now()
    return [
        notify.Alert({"device_id": i, "alert": "down"}, Notified(i, "unreachable", now, now, 1))
        for i in range(1, count + 1)
    ]


def _hook(url: str, timeout: float) -> notify.Webhook:
    return notify.Webhook(
        url=url,
        secret="s",
        timeout=timeout,
        user_ids=(-1,),
        device_ids=(),
        window=timedelta(minutes=10),
        server_id=1,
    )


def test_a_trickling_receiver_is_cut_off_when_webhook_timeout_has_passed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="mor_plugin")
    alerts = _alerts(notify.MAX_ALERTS + 1)  # two requests: both within the one deadline
    with Trickler() as slow:
        started = time.monotonic()
        delivered = notify.send(_hook(slow.url, 1.0), alerts, utc_now())
        took = time.monotonic() - started
        time.sleep(0.1)
        arrived, hung_up = list(slow.arrived), list(slow.hung_up)
    assert delivered == []
    assert 1.0 <= took < 1.3
    assert len(arrived) == 1  # no retry, no second chunk: the deadline had passed
    assert hung_up and hung_up[0] - arrived[0] < 1.2
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        f"webhook {slow.url} failed (attempt 1 of 2, {notify.MAX_ALERTS} alerts): "
        "no complete answer within webhook_timeout (1 s in all)",
        f"webhook {slow.url}: webhook_timeout (1 s) passed; 1 alerts not sent",
    ]


def test_a_second_run_collects_while_the_first_one_waits_for_a_slow_receiver(
    mor: MorDatabase,
    sim: AmiSimulator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with Trickler() as slow:
        conf = write_conf(
            tmp_path, mor.url, sim, webhook_url=slow.url, webhook_user_ids=-1, webhook_timeout=2
        )
        summary(conf, capsys)  # the baseline: nothing to say
        sim.set_status("102", "UNREACHABLE")  # the provider's device: an alert to send
        started = time.monotonic()
        first = subprocess.Popen(
            [sys.executable, "-m", "mor_plugin.cli", "--config", str(conf)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert slow.requested.wait(15), "the first run never reached the receiver"
            sim.set_status("101", "OK (55 ms)")
            second = summary(conf, capsys)  # exit 0 and a JSON summary, not "another run"
            first_still_running = first.poll() is None
            out, err = first.communicate(timeout=30)
        finally:
            first.kill()
        took = time.monotonic() - started
        arrived, hung_up = slow.arrived[0], slow.hung_up[0]

    assert first_still_running
    assert second["changed"] == 1
    assert mor.reg_statuses()["101"] == "OK (55 ms)"
    assert mor.reg_statuses()["102"] == "UNREACHABLE"  # the first run's, committed before
    assert (first.returncode, out, err) == (0, "", "")
    assert hung_up - arrived < 2.3  # the delivery, bounded by webhook_timeout = 2
    assert took < 2 + 2.5  # the whole first process: start-up, the run, the delivery
    log = (tmp_path / "log" / "ami_debug.log").read_text()
    assert "no complete answer within webhook_timeout (2 s in all)" in log
    # not recorded as sent: the row says what the receiver last knew, for the catch-up
    sent = "SELECT last_status, sent_in_window FROM mor_regstatus_notified"
    assert mor.execute(sent).all() == [("ok", 0)]


class Redirector(Receiver):
    """Answers each POST with ``answer`` (a redirect elsewhere, when set so); counts GETs."""

    def __init__(self) -> None:
        super().__init__()
        self.gets: list[str] = []
        self.answer: tuple[int, Optional[str]] = (204, None)
        self.base = self.url.removesuffix("/hook")
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.posts.append((body, dict(self.headers.items())))
                status, location = receiver.answer
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802
                receiver.gets.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server.RequestHandlerClass = Handler

    def received(self) -> list[dict[str, Any]]:
        return [alert for body, _ in self.posts for alert in json.loads(body)["alerts"]]


@pytest.fixture
def redirector() -> Iterator[Redirector]:
    with Redirector() as receiver:
        yield receiver


def _conf_for(redirector: Redirector, db: MorDatabase, ami: AmiSimulator, tmp_path: Path) -> Path:
    """Alerts for the provider's device 2 to ``redirector``; a dampening window of 1.2 s."""
    hook = f"{redirector.base}/hook"
    return write_conf(
        tmp_path, db.url, ami, webhook_url=hook, webhook_user_ids=-1, flap_window=0.02
    )


def test_a_redirect_is_a_failed_delivery_that_goes_out_again(
    mor: MorDatabase,
    sim: AmiSimulator,
    redirector: Redirector,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    conf = _conf_for(redirector, mor, sim, tmp_path)
    summary(conf, capsys)
    sim.set_status("102", "UNREACHABLE")
    summary(conf, capsys)  # "down", delivered
    time.sleep(1.3)  # past the dampening window: the "up" goes at once
    redirector.answer = (302, f"{redirector.base}/moved?token=t0ps3cret")
    sim.set_status("102", "OK (31 ms)")
    summary(conf, capsys)  # "up": redirected, not followed, failed
    notified = "SELECT last_status FROM mor_regstatus_notified WHERE device_id = 2"
    assert mor.execute(notified).scalar() == "unreachable"  # not recorded as sent
    redirector.answer = (204, None)
    summary(conf, capsys)  # the catch-up sends it again
    assert redirector.gets == []  # the POST never became a GET
    assert [(a["alert"], a["source"]) for a in redirector.received()] == [
        ("down", "poll"),
        ("up", "poll"),  # answered 302
        ("up", "poll"),  # its retry, answered 302
        ("up", "catch-up"),
    ]
    assert mor.execute(notified).scalar() == "ok"
    log = (tmp_path / "log" / "ami_debug.log").read_text()
    assert (
        f"webhook {redirector.base}/hook failed (attempt 1 of 2, 1 alerts): HTTP 302 redirect"
        f" to {redirector.base}/moved?token=***: not followed -- set webhook_url to the final URL"
    ) in log
    assert "t0ps3cret" not in log
    assert "webhook: 0 of 1 alerts delivered" in log


def test_a_first_down_alert_that_failed_goes_out_with_the_next_catch_up(
    mor: MorDatabase,
    sim: AmiSimulator,
    redirector: Redirector,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The device never had a message: its failed "down" must not be lost for good."""
    conf = _conf_for(redirector, mor, sim, tmp_path)
    summary(conf, capsys)
    redirector.answer = (302, f"{redirector.base}/moved")
    sim.set_status("102", "UNREACHABLE")
    summary(conf, capsys)  # "down": redirected, failed
    redirector.answer = (204, None)
    summary(conf, capsys)  # the catch-up sends it
    assert [(a["alert"], a["source"]) for a in redirector.received()] == [
        ("down", "poll"),
        ("down", "poll"),  # its retry
        ("down", "catch-up"),
    ]
    notified = "SELECT last_status FROM mor_regstatus_notified WHERE device_id = 2"
    assert mor.execute(notified).scalar() == "unreachable"
    summary(conf, capsys)  # delivered: nothing more
    assert len(redirector.received()) == 3
