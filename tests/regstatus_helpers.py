"""What the tests share besides their fixtures (those are in ``conftest.py``): the MOR
database they fill and read, the collector run as cron runs it, the worlds that
conftest's ``mor`` and ``sim`` build, a webhook receiver, the listener in a thread, and
the widget made and signed as MOR's pages use it."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from html import unescape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from flask import Flask
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine

from mor_plugin import cli, schema
from mor_plugin.config import Settings
from mor_plugin.listener import Listener
from mor_plugin.simulator import AmiSimulator, SimPeer, run_in_thread
from mor_plugin.store import ensure_schema, make_engine
from testbed.mariadb import root_connection, scratch_mor_database, sqlalchemy_url
from widget import create_app
from widget.signing import sign_url

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


# -- the MOR database ---------------------------------------------------------------------


@dataclass
class MorDatabase:
    """A throw-away MOR database and helpers to fill and read it."""

    name: str
    user: str
    password: str
    url: str
    engine: Engine

    def execute(self, sql: str, **params: Any) -> Any:
        with self.engine.begin() as conn:
            return conn.execute(text(sql), params)

    def add_server(self, server_id: int, **columns: Any) -> None:
        values = {
            "id": server_id,
            "server_ip": f"127.0.0.{server_id}",
            "hostname": f"ast{server_id}",
        }
        values.update(columns)
        with self.engine.begin() as conn:
            conn.execute(schema.servers.insert().values(**values))

    def add_user(self, user_id: int, username: str = "", **columns: Any) -> None:
        values = {
            "id": user_id,
            "username": username or f"user{user_id}",
            "password": "x",
            "first_name": "First",
            "last_name": "Last",
        }
        values.update(columns)
        cols = ", ".join(f"`{k}`" for k in values)
        binds = ", ".join(f":{k}" for k in values)
        self.execute(f"INSERT INTO users ({cols}) VALUES ({binds})", **values)

    def add_device(self, device_id: int, name: str, server_id: int = 1, **columns: Any) -> None:
        values = {
            "id": device_id,
            "name": name,
            "server_id": server_id,
            "device_type": "SIP",
            "user_id": 2,
            "secret": "s",
            "context": "mor",
            "extension": str(device_id),
            "username": name,
            "qualify": "yes",
        }
        values.update(columns)
        cols = ", ".join(f"`{k}`" for k in values)
        binds = ", ".join(f":{k}" for k in values)
        self.execute(f"INSERT INTO devices ({cols}) VALUES ({binds})", **values)

    def add_sighting(
        self,
        device_id: int,
        peer_name: str,
        seen_on: int,
        assigned: int,
        reg_status: str,
        first_seen: datetime,
        last_seen: datetime,
        **columns: Any,
    ) -> None:
        """A row of mor_regstatus_wrong_server: the device registered on server ``seen_on``
        although MOR assigns it to ``assigned``."""
        with self.engine.begin() as conn:
            conn.execute(
                schema.wrong_server.insert().values(
                    device_id=device_id,
                    peer_name=peer_name,
                    seen_on_server_id=seen_on,
                    assigned_server_id=assigned,
                    reg_status=reg_status,
                    first_seen=first_seen,
                    last_seen=last_seen,
                    **columns,
                )
            )

    def reg_statuses(self) -> dict[str, Optional[str]]:
        """``devices.name`` -> ``devices.reg_status`` for every device."""
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT name, reg_status FROM devices ORDER BY id"))
            return {name: status for name, status in rows}

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table, to prove that a failed run changed nothing."""
        out: dict[str, list[tuple[Any, ...]]] = {}
        with self.engine.connect() as conn:
            tables = [row[0] for row in conn.execute(text("SHOW TABLES"))]
            for table in sorted(tables):
                rows = conn.execute(text(f"SELECT * FROM `{table}` ORDER BY 1"))
                out[table] = [tuple(row) for row in rows]
        return out


@contextmanager
def mor_database(prefix: str = "mor_t") -> Iterator[MorDatabase]:
    """A fresh MOR database on the real MariaDB with a password user of its own; dropped after."""
    with scratch_mor_database(prefix) as scratch:
        engine = create_engine(scratch.url, pool_pre_ping=True)
        try:
            yield MorDatabase(*scratch, url=scratch.url, engine=engine)
        finally:
            engine.dispose()


# -- the collector, as cron runs it -------------------------------------------------------

#: the AMI user of write_conf's mor.conf, which simulated_asterisk lets in
AMI_USERNAME, AMI_SECRET = "mor", "s3cret"


def write_conf(tmp_path: Path, db_url: str, sim: Optional[AmiSimulator], **extra: Any) -> Path:
    """A mor.conf as an ops engineer would write it, with every path inside tmp_path."""
    values: dict[str, Any] = {
        "server_id": 1,
        "db_url": db_url,
        "ami_host": "127.0.0.1",
        "ami_port": sim.port if sim else 9,
        "ami_username": AMI_USERNAME,
        "ami_secret": AMI_SECRET,
        "manager_conf": tmp_path / "no-manager.conf",
        "log_file": tmp_path / "log" / "ami_debug.log",
        "state_file": tmp_path / "state.json",
        "lock_file": tmp_path / "run.lock",
        "ami_connect_timeout": 2,
        "ami_timeout": 2,
        "ami_list_timeout": 10,
        "db_timeout": 5,
    }
    values.update(extra)
    path = tmp_path / "mor.conf"
    path.write_text("".join(f"{key} = {value}\n" for key, value in values.items()))
    return path


def run(conf: Path, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """One collector run in this process: its exit code, stdout and stderr."""
    code = cli.main(["--config", str(conf), *args])
    out, err = capsys.readouterr()
    return code, out, err


def summary(conf: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """The JSON summary of a collector run that must succeed."""
    code, out, err = run(conf, "--json", capsys=capsys)
    assert code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


def simulated_asterisk(
    peers: Sequence[SimPeer], version: str, **options: Any
) -> AbstractContextManager[AmiSimulator]:
    """The AMI simulator on 127.0.0.1, in a thread until the block ends, letting in
    write_conf's AMI user."""
    simulator = AmiSimulator(
        peers, version=version, username=AMI_USERNAME, secret=AMI_SECRET, **options
    )
    return run_in_thread(simulator)


# -- the worlds of conftest's ``mor`` and ``sim`` -----------------------------------------


@dataclass(frozen=True)
class CollectorWorld:
    """A MOR server (id 1) as the collector meets it: the Asterisk beside it, simulated,
    and what MOR's database holds."""

    #: the Asterisk version the simulator speaks
    asterisk: str
    #: what Asterisk lists (each test gets copies: the tests change them)
    peers: tuple[SimPeer, ...]
    #: puts the world's servers and devices into a MOR database
    fill: Callable[[MorDatabase], None]


#: a peer name that is an SQL injection
HOSTILE = "x'); DROP TABLE devices; --"


def _every_status(db: MorDatabase) -> None:
    """Server 1 (this one) and 2; devices of both, one never registered, one IAX2."""
    db.add_server(1)
    db.add_server(2)
    for device_id, name in enumerate(["101", "102", "103", "104", "105"], start=1):
        db.add_device(device_id, name)
    db.add_device(6, "106")  # never registered: Asterisk does not list it
    db.add_device(7, "201", server_id=2, reg_status="OK (99 ms)")
    db.add_device(8, HOSTILE, description="<script>alert(1)</script>")
    db.add_device(9, "iax", device_type="IAX2", reg_status="kept")


#: Asterisk 11 listing a peer of each status, one of server 2 and one with a hostile name
EVERY_STATUS = CollectorWorld(
    asterisk="11",
    peers=(
        SimPeer("101", "OK (12 ms)", ip="10.0.0.1", port=5060),
        SimPeer("102", "LAGGED (2345 ms)", ip="10.0.0.2", port=5060),
        SimPeer("103", "UNREACHABLE", ip="10.0.0.3", port=5060),
        SimPeer("104", "UNKNOWN"),
        SimPeer("105", "Unmonitored", ip="10.0.0.5", port=5061),
        SimPeer("201", "OK (7 ms)", ip="10.0.2.1", port=5060),  # assigned to server 2
        SimPeer(HOSTILE, "OK (3 ms)", ip="10.0.0.9", port=5060),
    ),
    fill=_every_status,
)


def _with_a_provider(db: MorDatabase) -> None:
    db.add_server(1)
    db.add_device(1, "101")
    db.add_device(2, "102", user_id=-1)  # a provider's device
    db.add_device(3, "103")
    db.add_device(4, "104", qualify="no")


#: Asterisk 13 listing devices 1-4 of server 1: OK, OK (a provider's), LAGGED, Unmonitored
WITH_A_PROVIDER = CollectorWorld(
    asterisk="13",
    peers=(
        SimPeer("101", "OK (12 ms)", ip="10.0.0.1", port=5060),
        SimPeer("102", "OK (30 ms)", ip="10.0.0.2", port=5060),
        SimPeer("103", "LAGGED (2500 ms)", ip="10.0.0.3", port=5060),
        SimPeer("104", "Unmonitored", ip="10.0.0.4", port=5060),
    ),
    fill=_with_a_provider,
)


# -- webhooks and the listener ------------------------------------------------------------


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
    from mor_plugin.cli import ami_endpoint

    engine = make_engine(settings.db_url, timeout=settings.db_timeout)
    endpoint = ami_endpoint(settings, engine)
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


# -- the widget ---------------------------------------------------------------------------

#: what the MOR GUI signs the widget's URLs with
WIDGET_SECRET = "s3cret-shared-with-the-mor-gui"
#: the MOR GUI's origin, allowed to frame the widget
MOR_ORIGIN = "https://mor.example.com"

# id -> (name, reg_status, qualify); every bullet once, on server 1, user 2
WIDGET_DEVICES = {
    1: ("alice", "OK (23 ms)", "yes"),
    2: ("bob", "LAGGED (2345 ms)", "yes"),
    3: ("carol", "UNREACHABLE", "yes"),
    4: ("dave", "UNKNOWN", "yes"),
    5: ("erin", "Unmonitored", "no"),
    6: ("frank", None, "yes"),
}
KIND_OF_ID = {1: "ok", 2: "lagged", 3: "unreachable", 4: "unknown", 5: "unmonitored", 6: "none"}


def clear_widget_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own MOR_WIDGET_* settings must not leak into the tests."""
    for key in [key for key in os.environ if key.startswith("MOR_WIDGET_")]:
        monkeypatch.delenv(key)


def make_app(url: str, **settings: Any) -> Flask:
    """The widget on ``url``, framed by MOR_ORIGIN; ``settings`` override the rest."""
    # no answer cache: these tests change the database and read it back at once
    config = {
        "MOR_WIDGET_DB_URL": url,
        "MOR_WIDGET_FRAME_ANCESTORS": MOR_ORIGIN,
        "MOR_WIDGET_CACHE_SECONDS": 0,
    }
    config.update(settings)
    app = create_app(config)
    app.testing = True
    return app


def signed(path: str, expires_in: int = 300, secret: str = WIDGET_SECRET) -> str:
    """``path`` signed as the MOR GUI signs it, valid ``expires_in`` seconds from now."""
    return sign_url(path, secret, int(time.time()) + expires_in)


def text_of(html: str) -> str:
    """The words a user reads: inline tags dropped, others a space, whitespace collapsed."""
    inline = re.sub(r"</?(?:time|code|strong)\b[^>]*>", "", html)
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", inline)).split())


def _device_state(device_id: int, status: str, **columns: Any) -> dict[str, Any]:
    """A row of mor_regstatus_devices (every column present, for executemany)."""
    row = {
        "device_id": device_id,
        "server_id": 1,
        "status": status,
        "last_seen": None,
        "unreachable_since": None,
        "ip": None,
        "port": None,
    }
    row.update(columns)
    return row


def fill_world(
    db: MorDatabase, now: Optional[datetime] = None, last_success: Optional[datetime] = None
) -> None:
    """Two servers, users 2 and 3, every status, collector state and a wrong-server sighting,
    as they stand at ``now`` (default: this second); server 1's collector last succeeded
    at ``last_success`` (default: ``now``)."""
    now = now or utc_now().replace(microsecond=0)
    last_success = last_success or now
    ensure_schema(db.engine, now)  # the collector's tables, as its first run makes them
    db.add_server(1, hostname="ast-one")
    db.add_server(2, hostname="ast-two")
    db.add_user(2)
    db.add_user(3)
    for device_id, (name, reg_status, qualify) in WIDGET_DEVICES.items():
        db.add_device(
            device_id, name, reg_status=reg_status, qualify=qualify, description=f"{name}'s phone"
        )
    db.add_device(7, "other-user", reg_status="OK (5 ms)", user_id=3)
    db.add_device(8, "fax", reg_status=None, device_type="FAX")
    db.add_device(9, "roamer", server_id=2, reg_status=None)
    with db.engine.begin() as conn:
        conn.execute(
            schema.device_state.insert(),
            [
                _device_state(
                    1,
                    "ok",
                    since=now - timedelta(hours=2),
                    last_seen=now - timedelta(hours=1),
                    ip="192.0.2.10",
                    port=5062,
                ),
                _device_state(
                    2, "ok", since=now - timedelta(days=1), last_seen=now - timedelta(minutes=5)
                ),
                _device_state(
                    3,
                    "unreachable",
                    since=now - timedelta(minutes=7),
                    last_seen=now - timedelta(minutes=8),
                    unreachable_since=now - timedelta(minutes=7),
                    ip="192.0.2.11",
                    port=5060,
                ),
            ],
        )
        counts = {
            "n_ok": 11,
            "n_lagged": 12,
            "n_unreachable": 13,
            "n_unknown": 14,
            "n_unmonitored": 15,
            "n_none": 16,
        }
        conn.execute(
            schema.server_state.insert().values(
                server_id=1,
                last_run=last_success,
                last_success=last_success,
                result="ok",
                n_wrong_server=1,
                asterisk_version="18.20.0",
                **counts,
            )
        )
    db.add_sighting(
        9,
        "roamer",
        seen_on=1,
        assigned=2,
        reg_status="OK (40 ms)",
        first_seen=now - timedelta(hours=3),
        last_seen=now - timedelta(minutes=1),
        ip="198.51.100.7",
        port=5060,
    )


@contextmanager
def widget_login(db: MorDatabase) -> Iterator[tuple[str, str]]:
    """A MySQL user with no privilege yet, for the GUI host (which reaches MariaDB on the
    shared loopback): its account name and its SQLAlchemy URL."""
    name, password = f"ro_{secrets.token_hex(4)}", secrets.token_hex(8)
    account = f"'{name}'@'127.0.0.1'"
    root = root_connection()
    try:
        with root.cursor() as cur:
            cur.execute(f"CREATE USER {account} IDENTIFIED BY '{password}'")
        yield account, sqlalchemy_url(name, password, db.name)
    finally:
        with root.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS {account}")
        root.close()


def statements(app: Flask) -> list[str]:
    """Every statement the app sends from now on (its first words)."""
    seen: list[str] = []
    engine = app.extensions["mor_widget_db"].engine

    @event.listens_for(engine, "before_cursor_execute")
    def note(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(" ".join(statement.split()))

    return seen
