"""The widget under abuse and trouble, against a real MariaDB.

- the device cache: keyed by device (never by ``exp`` or the spelling of ``sig``),
  bounded in bytes, emptied of a server's devices when its mark moves, never
  consulted for a request whose signature fails (see also test_widget_cache.py);
- the database time of a request is bounded as a whole: a database behind a
  proxy that trickles bytes or goes silent, or a locked table, answers 503
  within ``MOR_WIDGET_DB_TIMEOUT``;
- ids and numbers are plain ASCII digits, ``X-Forwarded-Prefix`` is a safe
  path or ignored, and only an exactly allowed origin is echoed for CORS.
"""

from __future__ import annotations

import gc
import json
import random
import socket
import ssl
import subprocess
import threading
import time
import tracemalloc
import urllib.parse
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pymysql
import pytest
from flask import Flask
from flask.testing import FlaskClient
from regstatus_helpers import WIDGET_SECRET as SECRET
from regstatus_helpers import (
    MorDatabase,
    clear_widget_env,
    fill_world,
    make_app,
    mor_database,
    signed,
)
from sqlalchemy import text

from testbed.mariadb import SOCKET
from widget import ConfigError, dbtime

pytestmark = pytest.mark.mariadb

MARIADB = ("127.0.0.1", 3306)
#: what the machine may add to a time bound (thread switches, a loaded 2-core box)
SLACK = 0.6
#: the bound the documentation promises for a database that does not answer
DOCUMENTED_DB_TIMEOUT = 3.0


@pytest.fixture
def world(mor_db: MorDatabase) -> MorDatabase:
    fill_world(mor_db)
    return mor_db


@pytest.fixture(scope="module")
def shared(mariadb: None) -> Iterator[Callable[..., FlaskClient]]:
    """For tests that only read: one world for the module, one app per set of settings."""
    made: dict[tuple[tuple[str, Any], ...], Flask] = {}
    with mor_database() as db, pytest.MonkeyPatch.context() as env:
        clear_widget_env(env)
        fill_world(db)

        def client(**settings: Any) -> FlaskClient:
            key = tuple(sorted(settings.items()))
            if key not in made:
                made[key] = make_app(db.url, **settings)
            return made[key].test_client()

        yield client
        for app in made.values():
            app.extensions["mor_widget_db"].dispose()


# ---------------------------------------------------------------- the device cache

MANY = range(1000, 1400)  # 400 more devices: an answer for all of them is ~70 KB of JSON


@pytest.fixture
def crowd(world: MorDatabase) -> MorDatabase:
    rows = [
        {
            "id": i,
            "name": f"crowd-device-{i:05d}",
            "reg_status": f"OK ({i % 97} ms)",
            "extension": str(i),
        }
        for i in MANY
    ]
    with world.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO devices (id, name, server_id, device_type, user_id, secret, context,"
                " extension, username, qualify, reg_status) VALUES (:id, :name, 1, 'SIP', 2,"
                " 's', 'mor', :extension, :name, 'yes', :reg_status)"
            ),
            rows,
        )
    return world


def api_path(ids: list[int]) -> str:
    return "/api/v1/devices/status?ids=" + ",".join(map(str, ids))


def memory_growth(action: Callable[[], None]) -> int:
    """Bytes allocated by ``action`` that are still alive after it (Python's own count).

    Not counted: the test client's URLs in ``urllib.parse.urlsplit``'s own cache (128 of
    them at most, since Python 3.11), which a server does not fill.
    """
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        action()
        getattr(urllib.parse.urlsplit, "cache_clear", lambda: None)()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def case_variant(url: str, rng: random.Random) -> str:
    """The same link with the hex digits of its signature in random case."""
    head, sig = url.rsplit("&sig=", 1)
    return head + "&sig=" + "".join(c.upper() if rng.random() < 0.5 else c for c in sig)


def test_one_link_in_many_spellings_and_expiries_is_one_answer_in_memory(
    crowd: MorDatabase, apps: Callable[..., Flask]
) -> None:
    client = apps(crowd.url, MOR_WIDGET_SECRET=SECRET, MOR_WIDGET_CACHE_SECONDS=30).test_client()
    ids = list(MANY)
    assert client.get(signed(api_path(ids[:10]))).status_code == 200  # warm the engine
    first = client.get(signed(api_path(ids)))
    assert first.status_code == 200 and len(first.get_json()["devices"]) == len(ids)
    size = len(first.get_data())
    rng = random.Random(9)
    answers: set[str] = set()

    def browse() -> None:
        link = signed(api_path(ids))
        for n in range(60):
            # the MOR GUI renders each page with its own expiry; a client may spell sig in any case
            for url in (case_variant(link, rng), signed(api_path(ids), expires_in=600 + n)):
                answer = client.get(url)
                assert answer.status_code == 200
                answers.add(json.dumps(answer.get_json()["devices"]))

    grown = memory_growth(browse)
    assert len(answers) == 1  # every spelling and expiry gets the same devices
    # before: one cached copy per spelling and per exp, 120 answers of ~70 KB
    assert grown < 3 * size, f"{grown} bytes kept for 120 requests of one {size}-byte answer"


def test_distinct_answers_never_take_more_memory_than_the_cache_bound(
    crowd: MorDatabase, apps: Callable[..., Flask]
) -> None:
    client = apps(
        crowd.url, MOR_WIDGET_SECRET=SECRET, MOR_WIDGET_CACHE_SECONDS=30, MOR_WIDGET_CACHE_MB=0.5
    ).test_client()
    ids = list(MANY)
    assert client.get(signed(api_path(ids[:10]))).status_code == 200
    rng = random.Random(3)
    sizes: list[int] = []

    def browse() -> None:
        for _ in range(24):  # each page its own devices: 24 answers of ~60 KB, 1.5 MB in all
            answer = client.get(signed(api_path(rng.sample(ids, 350))))
            assert answer.status_code == 200
            sizes.append(len(answer.get_data()))

    grown = memory_growth(browse)
    assert sum(sizes) > 1_200_000
    assert grown < 0.5 * 1024 * 1024 + 2 * max(sizes), f"{grown} bytes kept, the bound is 0.5 MB"


def test_devices_leave_memory_when_their_servers_mark_moves(
    crowd: MorDatabase, apps: Callable[..., Flask]
) -> None:
    client = apps(crowd.url, MOR_WIDGET_CACHE_SECONDS=0.3).test_client()
    ids = list(MANY)
    assert client.get(api_path(ids[:10])).status_code == 200
    rng = random.Random(4)

    def browse() -> None:
        for _ in range(12):
            assert client.get(api_path(rng.sample(ids, 350))).status_code == 200
        # the collector's next run on server 1
        crowd.execute(
            "UPDATE mor_regstatus_servers SET observed_at = :now WHERE server_id = 1",
            now=datetime.now(timezone.utc).replace(tzinfo=None),
        )
        time.sleep(0.4)
        assert client.get(api_path(ids[:5])).status_code == 200

    grown = memory_growth(browse)
    assert grown < 150_000, f"{grown} bytes still kept after the server's mark moved"


def test_the_cache_keeps_the_order_asked_and_ignores_what_does_not_change_the_answer(
    world: MorDatabase, apps: Callable[..., Flask]
) -> None:
    client = apps(world.url, MOR_WIDGET_CACHE_SECONDS=30).test_client()
    assert [
        d["id"] for d in client.get("/api/v1/devices/status?ids=1,2").get_json()["devices"]
    ] == [
        1,
        2,
    ]
    assert [
        d["id"] for d in client.get("/api/v1/devices/status?ids=2,1").get_json()["devices"]
    ] == [
        2,
        1,
    ]
    before = client.get("/devices/1/bullet.svg").get_data()
    world.execute("UPDATE devices SET reg_status = 'UNREACHABLE' WHERE id IN (1, 2)")
    # the same answer, asked in other words: from memory until it expires
    assert client.get("/devices/01/bullet.svg?v=2").get_data() == before
    same = client.get("/api/v1/devices/status?ids=1&ids=2&ids=1&x=y").get_json()["devices"]
    assert [d["status"] for d in same] == ["ok", "lagged"]
    # another set of the same devices: from what was read of each device
    alone = client.get("/api/v1/devices/status?ids=2").get_json()["devices"]
    assert [d["status"] for d in alone] == ["lagged"]


def test_requests_that_fail_the_signature_are_never_answered_from_the_cache(
    world: MorDatabase, apps: Callable[..., Flask]
) -> None:
    client = apps(world.url, MOR_WIDGET_SECRET=SECRET, MOR_WIDGET_CACHE_SECONDS=30).test_client()
    for path in ("/devices/1/bullet.svg", "/api/v1/devices/status?ids=1"):
        good = signed(path)
        cached = client.get(good)
        assert cached.status_code == 200
        head, sig = good.rsplit("&sig=", 1)
        separator = "&" if "?" in path else "?"
        upper = f"{head}&sig={sig.upper()}"
        assert client.get(upper).get_data() == cached.get_data()
        refused = {
            path: 403,
            f"{path}{separator}exp={int(time.time()) + 300}": 403,
            f"{head}&sig={sig[:-1]}": 403,
            f"{head}&sig={sig[::-1]}": 403,
            signed(path, secret="another secret"): 403,
            head.replace("exp=", "exp=1") + f"&sig={sig}": 403,
            signed(path, expires_in=-10): 410,
        }
        for url, status in refused.items():
            answer = client.get(url)
            assert answer.status_code == status, url
            assert answer.get_data() != cached.get_data()


def test_cache_bound_setting_is_checked() -> None:
    for bad in ("-1", "0", "x", "5000"):
        with pytest.raises(ConfigError, match="MOR_WIDGET_CACHE_MB"):
            make_app("sqlite://", MOR_WIDGET_CACHE_MB=bad)


# ---------------------------------------------------------------- database time per request


class FaultyProxy:
    """A TCP proxy on 127.0.0.1 in front of MariaDB's 127.0.0.1:3306.

    ``mode`` (changeable at any time, also for open connections): ``pass``
    forwards both ways; ``trickle`` forwards the server's bytes one every
    ``interval`` seconds, so that no single read ever waits long; ``silent``
    forwards nothing back, and accepts new connections without ever answering.
    """

    def __init__(self, mode: str = "pass", interval: float = 0.25) -> None:
        self.mode = mode
        self.interval = interval
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port = int(self._listener.getsockname()[1])
        self._spawn(self._accept)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _keep(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self._keep(client)
            if self.mode == "silent":
                continue  # held open, never answered
            upstream = socket.create_connection(MARIADB)
            self._keep(upstream)
            self._spawn(self._pump, client, upstream, False)
            self._spawn(self._pump, upstream, client, True)

    def _pump(self, source: socket.socket, target: socket.socket, from_server: bool) -> None:
        source.settimeout(0.05)
        while not self._stop.is_set():
            try:
                data = source.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data:
                return
            try:
                if from_server and self.mode == "silent":
                    continue
                if from_server and self.mode == "trickle":
                    for byte in data:
                        if self._stop.wait(self.interval):
                            return
                        target.sendall(bytes([byte]))
                else:
                    target.sendall(data)
            except OSError:
                return

    def url(self, db: MorDatabase) -> str:
        return db.url.replace("127.0.0.1:3306", f"127.0.0.1:{self.port}")

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        with self._lock:
            threads, sockets = list(self._threads), list(self._sockets)
        for thread in threads:
            thread.join(2)
        for sock in sockets:
            sock.close()


@pytest.fixture
def proxy() -> Iterator[FaultyProxy]:
    p = FaultyProxy()
    yield p
    p.close()


def timed_get(client: FlaskClient, url: str) -> tuple[float, Any]:
    started = time.monotonic()
    response = client.get(url)
    return time.monotonic() - started, response


def assert_503_unavailable(response: Any) -> None:
    assert response.status_code == 503
    body = response.get_data(as_text=True)
    assert "not answering" in body and len(body) < 2000
    assert "Traceback" not in body and "pymysql" not in body.lower()


@pytest.mark.parametrize("mode", ["trickle", "silent"])
def test_a_database_that_trickles_or_is_silent_answers_503_within_the_documented_3_s(
    world: MorDatabase, proxy: FaultyProxy, apps: Callable[..., Flask], mode: str
) -> None:
    proxy.mode = mode
    client = apps(proxy.url(world)).test_client()  # the default MOR_WIDGET_DB_TIMEOUT
    took, response = timed_get(client, "/healthz")
    assert_503_unavailable(response)
    assert took < DOCUMENTED_DB_TIMEOUT + SLACK, f"/healthz took {took:.1f} s"


def test_a_database_that_turns_slow_bounds_each_request_as_a_whole(
    world: MorDatabase, proxy: FaultyProxy, apps: Callable[..., Flask]
) -> None:
    client = apps(proxy.url(world), MOR_WIDGET_DB_TIMEOUT=1).test_client()
    urls = [
        "/devices/1/status",  # several statements: the bound is for all of them together
        "/devices/2/bullet.svg",
        "/api/v1/devices/status?ids=1,2,3",
        "/healthz",
    ]
    for url in urls:
        assert client.get(url).status_code == 200, url  # pooled connections, all well
    proxy.mode = "trickle"
    for url in urls:
        took, response = timed_get(client, url)
        assert_503_unavailable(response)
        assert took < 1 + SLACK, f"{url} took {took:.1f} s"
    proxy.mode = "pass"
    assert client.get("/devices/1/status").status_code == 200  # and it comes back


def test_a_locked_table_answers_503_within_the_db_timeout_and_recovers(
    world: MorDatabase, apps: Callable[..., Flask]
) -> None:
    client = apps(world.url, MOR_WIDGET_DB_TIMEOUT=1).test_client()
    assert client.get("/devices/1/bullet.svg").status_code == 200
    locker = pymysql.connect(unix_socket=SOCKET, user="root", database=world.name)
    try:
        with locker.cursor() as cur:
            cur.execute("LOCK TABLES devices WRITE")
        took, response = timed_get(client, "/devices/1/bullet.svg")
        assert response.status_code == 503 and response.mimetype == "image/svg+xml"
        assert took < 1 + SLACK, f"the bullet took {took:.1f} s"
        took, response = timed_get(client, "/api/v1/devices/status?ids=1")
        assert response.status_code == 503 and "not answering" in response.get_json()["error"]
        assert took < 1 + SLACK
        with locker.cursor() as cur:
            cur.execute("UNLOCK TABLES")
    finally:
        locker.close()
    assert client.get("/devices/1/bullet.svg").status_code == 200


def test_a_connection_the_server_closed_is_replaced_without_an_error(
    world: MorDatabase, apps: Callable[..., Flask]
) -> None:
    """No ping before each use: a pooled connection that MariaDB closed (a restart,
    wait_timeout, a KILL) fails its first statement, and the read is made again, once, on
    a new connection."""
    client = apps(world.url).test_client()
    root = pymysql.connect(unix_socket=SOCKET, user="root", autocommit=True)
    try:
        for path in (
            "/devices/1/bullet.svg",
            "/api/v1/devices/status?ids=1",
            "/devices/1/status",
            "/servers",
            "/healthz",
        ):
            assert client.get(path).status_code == 200, path
            with root.cursor() as cur:
                cur.execute(
                    "SELECT id FROM information_schema.processlist WHERE user = %s", (world.user,)
                )
                pooled = [row[0] for row in cur.fetchall()]
                assert pooled, "the widget keeps its connection in the pool"
                for connection_id in pooled:
                    cur.execute(f"KILL CONNECTION {int(connection_id)}")
            assert client.get(path).status_code == 200, path
    finally:
        root.close()


@pytest.mark.parametrize("bad", ["0", "-1", "x", "601"])
def test_db_timeout_setting_is_checked(bad: str) -> None:
    with pytest.raises(ConfigError, match="MOR_WIDGET_DB_TIMEOUT"):
        make_app("sqlite://", MOR_WIDGET_DB_TIMEOUT=bad)


def test_the_bound_holds_under_tls_too(tmp_path: Path) -> None:
    """PyMySQL wraps the socket in TLS when the server offers it (MySQL 8 does by default);
    the wrapped socket keeps the request's deadline (this MariaDB has no TLS: a TLS peer here)."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                while not stop.wait(0.1):  # one byte, one TLS record, every 0.1 s
                    tls.sendall(b"x")
        except OSError:
            conn.close()  # the client has gone

    server = threading.Thread(target=trickle, daemon=True)
    server.start()
    client_ctx = ssl.create_default_context(cafile=str(cert))
    client_ctx.sslsocket_class = dbtime.DeadlineSSLSocket  # what DeadlineConnection sets
    raw = dbtime.DeadlineSocket(socket.AF_INET, socket.SOCK_STREAM)
    raw.settimeout(5)  # each read alone would wait up to 5 s
    raw.connect(listener.getsockname())
    started = time.monotonic()
    try:
        with dbtime.time_limit(0.5):
            tls = client_ctx.wrap_socket(raw, server_hostname="localhost")
            assert isinstance(tls, dbtime.DeadlineSSLSocket)
            with tls, pytest.raises(socket.timeout):
                while True:
                    tls.recv(1)
        assert time.monotonic() - started < 0.5 + SLACK
    finally:
        stop.set()
        server.join(2)
        listener.close()


# ---------------------------------------------------------------- ids and numbers

NOT_DIGITS = ["1%0A", "1%20", "%201", "+1", "1_0", "%D9%A1", "%EF%BC%91", "1%00", "0x1", "%C2%B2"]
ID_ROUTES = [
    "/devices/{}/status",
    "/devices/{}/bullet.svg",
    "/users/{}/devices/status",
    "/api/v1/servers/{}/summary",
    "/api/v1/devices/{}/history",
    "/servers/{}/devices",
]


@pytest.fixture
def client(shared: Callable[..., FlaskClient]) -> FlaskClient:
    return shared()


@pytest.mark.parametrize("raw", NOT_DIGITS)
def test_ids_in_paths_are_plain_digits_or_400(client: FlaskClient, raw: str) -> None:
    for route in ID_ROUTES:
        response = client.get(route.format(raw))
        assert response.status_code == 400, route.format(raw)
    assert client.get("/devices/1/status").status_code == 200


@pytest.mark.parametrize(
    "query",
    [
        *(f"ids={raw}" for raw in NOT_DIGITS),
        "ids=1,%202",
        "ids=1,,2",
        "ids=1,2,",
        "ids=1&ids=",
    ],
)
def test_ids_in_the_api_are_plain_digits_or_400(client: FlaskClient, query: str) -> None:
    response = client.get(f"/api/v1/devices/status?{query}")
    assert response.status_code == 400
    assert "error" in response.get_json()


@pytest.mark.parametrize(
    "url",
    [
        *(
            f"/api/v1/devices/1/history?hours={raw}"
            for raw in ["24%0A", "%D9%A1", " 24", "2%C2%B2"]
        ),
        *(f"/servers/1/devices?page={raw}" for raw in ["1%0A", "%EF%BC%91", "1 "]),
        *(f"/servers/1/devices?per_page={raw}" for raw in ["10%0A", "+10", "%D9%A1%D9%A0"]),
    ],
)
def test_numbers_in_queries_are_plain_digits_or_400(client: FlaskClient, url: str) -> None:
    assert client.get(url).status_code == 400


# ---------------------------------------------------------------- X-Forwarded-Prefix

BAD_PREFIXES = [
    '"><script>alert(1)</script>',
    "//evil.example",
    "/mor status",
    "javascript:alert(1)",
    "/mor-status/../../x",
    "/a,/b",
    "/%2e%2e",
    "mor-status",
    "/mor-status?x=1",
    "/mor-status\\x",
]


@pytest.mark.parametrize("prefix", BAD_PREFIXES)
def test_an_unsafe_forwarded_prefix_is_ignored(
    shared: Callable[..., FlaskClient], prefix: str
) -> None:
    client = shared(MOR_WIDGET_SECRET=SECRET)
    headers = {"X-Forwarded-Prefix": prefix}
    html = client.get(signed("/devices/1/status"), headers=headers).get_data(as_text=True)
    assert 'href="/static/widget.css"' in html and 'src="/static/refresh.js"' in html
    fleet = client.get(signed("/servers"), headers=headers).get_data(as_text=True)
    assert 'href="/servers/1/devices?' in fleet
    for page in (html, fleet):
        assert "evil" not in page and "script>alert" not in page and "javascript:" not in page


@pytest.mark.parametrize("prefix", ["/mor-status", "/mor-status/", "/a/b.c~d_e-f", ""])
def test_a_safe_forwarded_prefix_is_used(shared: Callable[..., FlaskClient], prefix: str) -> None:
    client = shared()
    html = client.get("/devices/1/status", headers={"X-Forwarded-Prefix": prefix}).get_data(
        as_text=True
    )
    assert f'href="{prefix.rstrip("/")}/static/widget.css"' in html


# ---------------------------------------------------------------- CORS

ANCESTORS = (
    "'self' https://mor.example.com https://*.example.org mor.example.net http://10.0.0.5:8080"
)


@pytest.mark.parametrize(
    "origin",
    [
        "'self'",
        "'none'",
        "null",
        "*",
        "https://*.example.org",
        "https://a.example.org",
        "mor.example.net",
        "https://mor.example.net",
        "https://mor.example.com/",
        "https://mor.example.com:443",
        "https://MOR.example.com",
        "http://mor.example.com",
        "https://mor.example.com.evil.test",
        "https://mor.example.com https://evil.test",
        "http://10.0.0.5",
        "http://10.0.0.5:8080/x",
    ],
)
def test_only_an_exactly_allowed_origin_is_echoed(
    shared: Callable[..., FlaskClient], origin: str
) -> None:
    client = shared(MOR_WIDGET_FRAME_ANCESTORS=ANCESTORS)
    response = client.get("/api/v1/devices/status?ids=1", headers={"Origin": origin})
    assert response.status_code == 200
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Origin" in response.headers.get("Vary", "")


@pytest.mark.parametrize("origin", ["https://mor.example.com", "http://10.0.0.5:8080"])
def test_an_allowed_origin_is_echoed(shared: Callable[..., FlaskClient], origin: str) -> None:
    client = shared(MOR_WIDGET_FRAME_ANCESTORS=ANCESTORS)
    for url in ("/api/v1/devices/status?ids=1", "/api/v1/devices/status?ids=x"):
        response = client.get(url, headers={"Origin": origin})
        assert response.headers["Access-Control-Allow-Origin"] == origin
        assert "Origin" in response.headers["Vary"]


def test_an_allowed_origin_written_with_its_default_port_or_in_capitals_is_the_same(
    shared: Callable[..., FlaskClient],
) -> None:
    client = shared(MOR_WIDGET_FRAME_ANCESTORS="https://MOR.Example.com:443")
    response = client.get(
        "/api/v1/devices/status?ids=1", headers={"Origin": "https://mor.example.com"}
    )
    assert response.headers["Access-Control-Allow-Origin"] == "https://mor.example.com"


def test_the_api_says_it_varies_by_origin_even_without_one(client: FlaskClient) -> None:
    assert "Origin" in client.get("/api/v1/devices/status?ids=1").headers["Vary"]
