"""The fleet page, a server's device lists and /metrics (real MariaDB; gunicorn with 2 workers)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from regstatus_helpers import ROOT, MorDatabase, make_app, signed, text_of
from regstatus_helpers import WIDGET_SECRET as SECRET

from mor_plugin import schema, store
from testbed.asterisk import free_port
from widget import ConfigError

pytestmark = pytest.mark.mariadb

EVIL = "<script>alert(1)</script>"


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)


def run_row(server_id: int, last_run: datetime, **columns: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "server_id": server_id,
        "last_run": last_run,
        "last_success": last_run,
        "result": "ok",
        "duration_ms": 0,
        "n_ok": 0,
        "n_lagged": 0,
        "n_unreachable": 0,
        "n_unknown": 0,
        "n_unmonitored": 0,
        "n_none": 0,
        "n_wrong_server": 0,
        "asterisk_version": None,
        "listener_connected": False,
        "listener_seen": None,
        "listener_since": None,
    }
    row.update(columns)
    return row


@pytest.fixture
def fleet(mor_db: MorDatabase) -> MorDatabase:
    """Server 1: fresh, listener connected. Server 2: failing for 10 min, listener gone.
    Server 3 (a hostile hostname): the collector never ran. Server 4: listener silent."""
    now = utcnow()
    store.migrate(mor_db.engine, now)  # the collector's tables, as its first run makes them
    mor_db.add_server(1, hostname="ast-one", server_ip="10.0.0.1")
    mor_db.add_server(2, hostname="ast-two")
    mor_db.add_server(3, hostname=EVIL)
    mor_db.add_server(4, hostname="ast-four")
    on_one = [
        (1, "alice", "OK (23 ms)"),
        (2, "bob", "LAGGED (2345 ms)"),
        (3, "carol", "UNREACHABLE"),
        (4, "dave", "UNKNOWN"),
        (5, "erin", "Unmonitored"),
        (6, "frank", None),
        (7, EVIL, "OK (5 ms)"),
    ]
    for device_id, name, reg_status in on_one:
        mor_db.add_device(device_id, name, reg_status=reg_status, description=f"{name}'s phone")
    mor_db.add_device(8, "fax", reg_status=None, device_type="FAX")
    mor_db.add_device(9, "roamer", server_id=2, reg_status=None)
    mor_db.add_device(10, "ok-on-two", server_id=2, reg_status="OK (9 ms)")
    mor_db.add_device(11, "new-one", server_id=3, reg_status=None)
    mor_db.add_device(12, "new-two", server_id=3, reg_status="OK (12 ms)")
    with mor_db.engine.begin() as conn:
        conn.execute(
            schema.server_state.insert(),
            [
                run_row(
                    1,
                    now,
                    duration_ms=420,
                    n_ok=2,
                    n_lagged=1,
                    n_unreachable=1,
                    n_unknown=1,
                    n_unmonitored=1,
                    n_none=1,
                    n_wrong_server=1,
                    asterisk_version="18.20.0",
                    listener_connected=True,
                    listener_seen=now - timedelta(seconds=5),
                    listener_since=now - timedelta(hours=2),
                ),
                run_row(
                    2,
                    now - timedelta(minutes=1),
                    last_success=now - timedelta(minutes=10),
                    result="AMI login failed: Authentication failed",
                    duration_ms=1500,
                    n_ok=1,
                    n_none=1,
                    listener_since=now - timedelta(minutes=30),
                ),
                run_row(
                    4,
                    now,
                    listener_connected=True,
                    listener_seen=now - timedelta(minutes=20),
                    listener_since=now - timedelta(hours=5),
                ),
            ],
        )
        conn.execute(
            schema.device_state.insert(),
            [
                {
                    "device_id": device_id,
                    "server_id": 1,
                    "status": status,
                    "since": now - timedelta(minutes=minutes),
                    "flapping": flapping,
                    "flapping_since": now if flapping else None,
                }
                for device_id, status, minutes, flapping in (
                    (1, "ok", 120, False),
                    (3, "unreachable", 7, True),
                    (7, "ok", 60, False),
                )
            ],
        )
    mor_db.add_sighting(
        9,
        "roamer",
        seen_on=1,
        assigned=2,
        reg_status="OK (40 ms)",
        first_seen=now - timedelta(hours=3),
        last_seen=now,
    )
    return mor_db


@pytest.fixture
def client(fleet: MorDatabase) -> FlaskClient:
    return make_app(fleet.url).test_client()


def server_row(html: str, server_id: int) -> str:
    match = re.search(
        rf'<tr class="server[^"]*" data-server-id="{server_id}">(.*?)</tr>', html, re.S
    )
    assert match, server_id
    return match.group(0)


def counts_of(row: str) -> dict[str, str]:
    return dict(re.findall(r'data-kind="(\w+)"><a href="[^"]+">(\d+)</a>', row))


def listed_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<tr data-device-id="(\d+)">', html)]


# ---------------------------------------------------------------- the fleet page


def test_fleet_page_has_one_row_per_server_with_counts(client: FlaskClient) -> None:
    response = client.get("/servers")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert re.findall(r'data-server-id="(\d+)"', html) == ["1", "2", "3", "4"]
    one = server_row(html, 1)
    assert counts_of(one) == {
        "ok": "2",
        "lagged": "1",
        "unreachable": "1",
        "unknown": "1",
        "unmonitored": "1",
        "none": "1",
        "wrong_server": "1",
        "flapping": "1",
    }
    words = text_of(one)
    assert "1: ast-one 10.0.0.1 Asterisk 18.20.0" in words
    assert "just now (420 ms) ok" in words
    # server 3's collector never ran: counted from devices as they are
    three = counts_of(server_row(html, 3))
    assert three["ok"] == "1" and three["none"] == "1" and "wrong_server" not in three


def test_fleet_page_marks_stale_servers_and_says_why(client: FlaskClient) -> None:
    html = client.get("/servers").get_data(as_text=True)
    assert 'class="server" data-server-id="1"' in html
    two = server_row(html, 2)
    assert 'class="server stale"' in two
    words = text_of(two)
    assert "1 min ago (1500 ms) stale: last success 10 min ago" in words
    assert "AMI login failed: Authentication failed" in words
    three = text_of(server_row(html, 3))
    assert "never stale: no successful run yet" in three


def test_fleet_page_shows_the_listener_state(client: FlaskClient) -> None:
    html = client.get("/servers").get_data(as_text=True)
    assert "connected since 2 h ago" in text_of(server_row(html, 1))
    assert "disconnected since 30 min ago" in text_of(server_row(html, 2))
    assert "not running" in text_of(server_row(html, 3))
    assert "silent : no heartbeat since 20 min ago" in text_of(server_row(html, 4))


def test_fleet_page_escapes_hostnames(client: FlaskClient) -> None:
    html = client.get("/servers").get_data(as_text=True)
    assert EVIL not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_fleet_page_needs_a_signature(fleet: MorDatabase) -> None:
    client = make_app(fleet.url, MOR_WIDGET_SECRET=SECRET).test_client()
    assert client.get("/servers").status_code == 403
    assert client.get(signed("/servers")).status_code == 200
    assert client.get(signed("/servers").replace("/servers", "/servers/1/devices")).status_code == (
        403
    )


def test_every_link_of_the_fleet_page_is_signed_and_opens(fleet: MorDatabase) -> None:
    client = make_app(fleet.url, MOR_WIDGET_SECRET=SECRET).test_client()
    html = client.get(signed("/servers"), headers={"X-Forwarded-Prefix": "/mor-status"}).get_data(
        as_text=True
    )
    links = [unescape(href) for href in re.findall(r'<a href="([^"]+)"', html)]
    # names, 6 counts each, wrong-server (not on server 3: never ran), flapping
    assert len(links) == 4 + 4 * 6 + 3 + 4
    exp = re.search(r"exp=(\d+)", signed("/servers"))
    assert exp
    for href in links:
        assert href.startswith("/mor-status/servers/") and "&sig=" in href, href
        relative = href[len("/mor-status") :]
        answer = client.get(relative)
        assert answer.status_code == 200, (href, answer.get_data(as_text=True)[:300])
    tampered = links[1].replace("status=ok", "status=none")
    assert client.get(tampered[len("/mor-status") :]).status_code == 403


# ---------------------------------------------------------------- a server's devices


@pytest.mark.parametrize(
    ("status", "ids"),
    [
        ("ok", [1, 7]),
        ("lagged", [2]),
        ("unreachable", [3]),
        ("unknown", [4]),
        ("unmonitored", [5]),
        ("none", [6]),  # the fax is not SIP
        ("flapping", [3]),
        ("wrong_server", [9]),
        ("", [1, 2, 3, 4, 5, 6, 7]),
    ],
)
def test_device_list_of_a_server_by_status(
    client: FlaskClient, status: str, ids: list[int]
) -> None:
    response = client.get(f"/servers/1/devices?status={status}")
    assert response.status_code == 200
    assert listed_ids(response.get_data(as_text=True)) == ids


def test_device_list_shows_name_description_user_status_and_since(client: FlaskClient) -> None:
    html = client.get("/servers/1/devices?status=unreachable").get_data(as_text=True)
    words = text_of(html)
    assert "server 1: UNREACHABLE (1)" in words
    assert "3 carol carol's phone 2 UNREACHABLE 7 min ago" in words
    roamer = text_of(client.get("/servers/1/devices?status=wrong_server").get_data(True))
    assert "9 roamer roamer's phone" not in roamer  # added without a description
    assert "9 roamer 2 server 2 OK (40 ms) 3 h ago" in roamer


def test_device_list_says_a_device_without_status_was_never_seen(client: FlaskClient) -> None:
    words = text_of(client.get("/servers/1/devices?status=none").get_data(as_text=True))
    assert "6 frank" in words and "never seen" in words


def test_device_list_escapes_names_and_descriptions(client: FlaskClient) -> None:
    html = client.get("/servers/1/devices?status=ok").get_data(as_text=True)
    assert EVIL not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&#39;s phone" in html


def test_device_list_pages(fleet: MorDatabase) -> None:
    client = make_app(fleet.url, MOR_WIDGET_SECRET=SECRET).test_client()
    first = client.get(signed("/servers/1/devices?per_page=3")).get_data(as_text=True)
    assert listed_ids(first) == [1, 2, 3] and "page 1 of 3" in text_of(first)
    following = re.search(r'<a href="([^"]+)" rel="next">', first)
    assert following
    second = client.get(unescape(following.group(1))).get_data(as_text=True)
    assert listed_ids(second) == [4, 5, 6] and "page 2 of 3" in text_of(second)


@pytest.mark.parametrize(
    ("url", "status"),
    [
        ("/servers/1/devices?status=green", 400),
        ("/servers/1/devices?per_page=501", 400),
        ("/servers/1/devices?per_page=0", 400),
        ("/servers/1/devices?page=x", 400),
        ("/servers/x/devices", 400),
        ("/servers/99/devices", 404),
    ],
)
def test_device_list_refuses_bad_requests(client: FlaskClient, url: str, status: int) -> None:
    assert client.get(url).status_code == status


def test_device_list_takes_500_per_page(client: FlaskClient) -> None:
    assert client.get("/servers/1/devices?per_page=500").status_code == 200


# ---------------------------------------------------------------- /metrics


def scrape(
    client: FlaskClient, **kwargs: Any
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics", **kwargs)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    return samples_of(response.get_data(as_text=True))


def samples_of(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_metrics_count_devices_per_server_and_status(client: FlaskClient) -> None:
    samples = scrape(client)
    assert value(samples, "mor_regstatus_devices", server_id="1", status="ok") == 2
    assert value(samples, "mor_regstatus_devices", server_id="1", status="none") == 1
    assert value(samples, "mor_regstatus_devices", server_id="2", status="ok") == 1
    assert value(samples, "mor_regstatus_devices", server_id="3", status="none") == 1  # live
    assert value(samples, "mor_regstatus_flapping_devices", server_id="1") == 1
    assert value(samples, "mor_regstatus_flapping_devices", server_id="2") == 0
    assert value(samples, "mor_regstatus_wrong_server_devices", server_id="1") == 1
    # aggregates only: no label names a device
    assert all(
        set(dict(labels)) <= {"server_id", "status", "hostname", "asterisk_version"}
        for _, labels in samples
    )


def test_metrics_report_collector_runs_and_listeners(client: FlaskClient) -> None:
    samples = scrape(client)
    assert value(samples, "mor_regstatus_last_run_age_seconds", server_id="1") < 30
    age_two = value(samples, "mor_regstatus_last_success_age_seconds", server_id="2")
    assert 590 < age_two < 640
    assert value(samples, "mor_regstatus_last_run_duration_seconds", server_id="2") == 1.5
    assert value(samples, "mor_regstatus_last_run_success", server_id="1") == 1
    assert value(samples, "mor_regstatus_last_run_success", server_id="2") == 0
    assert value(samples, "mor_regstatus_stale", server_id="2") == 1
    assert value(samples, "mor_regstatus_stale", server_id="3") == 1
    assert value(samples, "mor_regstatus_stale", server_id="1") == 0
    assert ("mor_regstatus_last_run_age_seconds", (("server_id", "3"),)) not in samples
    listener = {
        sid: value(samples, "mor_regstatus_listener_connected", server_id=sid) for sid in "1234"
    }
    assert listener == {"1": 1, "2": 0, "3": 0, "4": 0}  # 4: its heartbeat went silent
    assert value(samples, "mor_regstatus_last_success_timestamp_seconds", server_id="3") == 0
    at = value(samples, "mor_regstatus_last_success_timestamp_seconds", server_id="2")
    assert abs(time.time() - 600 - at) < 30
    info = value(
        samples, "mor_regstatus_server_info", server_id="3", hostname=EVIL, asterisk_version=""
    )
    assert info == 1


def test_metrics_need_no_signature_but_an_allowed_address(fleet: MorDatabase) -> None:
    client = make_app(fleet.url, MOR_WIDGET_SECRET=SECRET).test_client()
    assert scrape(client)  # loopback, unsigned
    refused = client.get("/metrics", environ_base={"REMOTE_ADDR": "192.0.2.9"})
    assert refused.status_code == 403 and "MOR_WIDGET_METRICS_ALLOW" in refused.get_data(True)
    assert "frame-ancestors" in refused.headers["Content-Security-Policy"]
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "::1"}).status_code == 200


def test_metrics_allow_list_takes_networks(fleet: MorDatabase) -> None:
    client = make_app(
        fleet.url, MOR_WIDGET_METRICS_ALLOW="192.0.2.0/24 2001:db8::/32"
    ).test_client()
    assert scrape(client, environ_base={"REMOTE_ADDR": "192.0.2.9"})
    assert scrape(client, environ_base={"REMOTE_ADDR": "2001:db8::7"})
    assert scrape(client, environ_base={"REMOTE_ADDR": "::ffff:192.0.2.10"})
    assert client.get("/metrics").status_code == 403  # 127.0.0.1 is no longer listed
    forwarded = client.get("/metrics", headers={"X-Forwarded-For": "192.0.2.50"})
    assert forwarded.status_code == 200  # behind MOR's proxy, the client it names counts


def test_bad_metrics_allow_setting_is_refused() -> None:
    with pytest.raises(ConfigError, match="MOR_WIDGET_METRICS_ALLOW"):
        make_app("sqlite://", MOR_WIDGET_METRICS_ALLOW="localhost")


def test_metrics_answer_503_when_the_database_is_down() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = make_app(f"mysql+pymysql://x:y@127.0.0.1:{port}/mor").test_client()
    response = client.get("/metrics")
    assert response.status_code == 503 and response.mimetype == "text/plain"


# ---------------------------------------------------------------- under gunicorn


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 (loopback http)
        return str(answer.read().decode())


def test_metrics_agree_across_gunicorn_workers(fleet: MorDatabase, tmp_path: Path) -> None:
    port = free_port()
    access_log, error_log = tmp_path / "access.log", tmp_path / "error.log"
    env = {**os.environ, "MOR_WIDGET_DB_URL": fleet.url, "PYTHONPATH": str(ROOT)}
    env.pop("MOR_WIDGET_SECRET", None)
    with error_log.open("wb") as errors:
        process = subprocess.Popen(  # noqa: S603
            [
                str(Path(sys.executable).with_name("gunicorn")),
                "-w",
                "2",
                "-b",
                f"127.0.0.1:{port}",
                "--access-logfile",
                str(access_log),
                "--access-logformat",
                "%(p)s %(r)s %(s)s",
                "widget:create_app()",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                fetch(f"{base}/healthz")
                break
            except (urllib.error.URLError, ConnectionError):
                assert process.poll() is None, error_log.read_text()
                assert time.monotonic() < deadline, "gunicorn did not answer within 20 s"
                time.sleep(0.2)
        # one worker busy reading a request that is not complete yet: the other answers
        with socket.create_connection(("127.0.0.1", port), timeout=5) as held:
            held.sendall(b"GET /metrics HTTP/1.0\r\n")
            time.sleep(0.3)
            answers = [samples_of(fetch(f"{base}/metrics")) for _ in range(5)]
            held.sendall(b"Host: 127.0.0.1\r\n\r\n")
            raw = b""
            while chunk := held.recv(65536):
                raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200"), head
        answers.append(samples_of(body.decode()))
        answers += [samples_of(fetch(f"{base}/metrics")) for _ in range(5)]
        fleet.execute("UPDATE mor_regstatus_servers SET n_ok = 5 WHERE server_id = 1")
        after = [samples_of(fetch(f"{base}/metrics")) for _ in range(4)]
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        assert process.stderr is None
    ages = "_age_seconds"
    exact = [{k: v for k, v in a.items() if ages not in k[0]} for a in answers]
    assert all(e == exact[0] for e in exact)
    assert value(answers[0], "mor_regstatus_devices", server_id="1", status="ok") == 2
    for a in answers:
        for key, seconds in a.items():
            if ages in key[0]:
                assert abs(seconds - answers[0][key]) < 10, key
    # a change in the database shows in every worker's next answer: nothing is cached per process
    assert {value(a, "mor_regstatus_devices", server_id="1", status="ok") for a in after} == {5}
    # both workers answered
    pids = {line.split()[0] for line in access_log.read_text().splitlines() if "/metrics" in line}
    assert len(pids) == 2, access_log.read_text()
