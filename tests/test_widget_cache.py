"""The widget's device cache (``widget.cache.DeviceCache``).

- what the real collector and the real listener write shows in bullets and JSON within
  ``MOR_WIDGET_CACHE_SECONDS``, because both move the server's mark in the same
  transaction;
- while no mark moves, a device is read from the database once and then served from
  memory, up to ``LONGEST_AGE``;
- the cache is bounded in bytes and in age, and an entry read before a mark moved is
  never served after it.

The signature is checked before the cache is asked: see
``test_widget_hardening.test_requests_that_fail_the_signature_are_never_answered_from_the_cache``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from flask import Flask
from regstatus_helpers import (
    MorDatabase,
    listening,
    simulated_asterisk,
    summary,
    wait_for,
    write_conf,
)
from sqlalchemy import event

from mor_plugin.config import load_settings
from mor_plugin.simulator import AmiSimulator, SimPeer
from widget import create_app
from widget.cache import DeviceCache

pytestmark = pytest.mark.mariadb

CACHE_SECONDS = 0.5
#: what a loaded 2-core machine may add to a time bound
SLACK = 0.5


@pytest.fixture
def sim() -> Iterator[AmiSimulator]:
    peers = [
        SimPeer("101", "OK (12 ms)", ip="10.0.0.1", port=5060),
        SimPeer("102", "OK (30 ms)", ip="10.0.0.2", port=5060),
    ]
    with simulated_asterisk(peers, "11") as s:
        yield s


@pytest.fixture
def mor(mor_db: MorDatabase) -> MorDatabase:
    mor_db.add_server(1)
    mor_db.add_device(1, "101")
    mor_db.add_device(2, "102")
    return mor_db


@pytest.fixture
def conf(tmp_path: Path, mor: MorDatabase, sim: AmiSimulator) -> Path:
    return write_conf(tmp_path, mor.url, sim, watch_ping_interval=0.3, ami_timeout=1)


@pytest.fixture
def apps() -> Iterator[Callable[..., Flask]]:
    made: list[Flask] = []

    def make(url: str, **settings: Any) -> Flask:
        app = create_app(
            {"MOR_WIDGET_DB_URL": url, "MOR_WIDGET_CACHE_SECONDS": CACHE_SECONDS, **settings}
        )
        made.append(app)
        return app

    yield make
    for app in made:
        app.extensions["mor_widget_db"].dispose()


def shown(app: Flask, device_id: int) -> tuple[str, str]:
    """(the status in the JSON API, the kind the bullet draws) of one device."""
    client = app.test_client()
    answer = client.get(f"/api/v1/devices/status?ids={device_id}")
    assert answer.status_code == 200
    bullet = client.get(f"/devices/{device_id}/bullet.svg")
    assert bullet.status_code == 200
    drawn = re.search(r'class="bullet bullet-(\w+)"', bullet.get_data(as_text=True))
    assert drawn is not None
    return answer.get_json()["devices"][0]["status"], drawn.group(1)


def statements(app: Flask) -> list[str]:
    """Every statement the app sends from now on (its first words)."""
    seen: list[str] = []
    engine = app.extensions["mor_widget_db"].engine

    @event.listens_for(engine, "before_cursor_execute")
    def note(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(" ".join(statement.split()))

    return seen


def device_reads(seen: list[str]) -> int:
    return sum(1 for s in seen if "FROM devices" in s)


def mark_reads(seen: list[str]) -> int:
    return sum(1 for s in seen if "listener_wrote_at" in s and "FROM devices" not in s)


def shows_within(app: Flask, device_id: int, expected: tuple[str, str], since: float) -> float:
    """Seconds from ``since`` until the widget shows ``expected`` (fails past the bound)."""
    wait_for(lambda: shown(app, device_id) == expected, timeout=CACHE_SECONDS + SLACK + 1)
    return time.monotonic() - since


def test_a_device_is_read_once_and_then_served_from_memory_while_no_mark_moves(
    mor: MorDatabase, conf: Path, apps: Callable[..., Flask], capsys: pytest.CaptureFixture[str]
) -> None:
    summary(conf, capsys)  # the collector's first run: server 1 has a mark
    app = apps(mor.url)
    assert shown(app, 1) == ("ok", "ok")
    seen = statements(app)
    # another writer than the collector and the listener moves no mark
    mor.execute("UPDATE devices SET reg_status = 'UNREACHABLE' WHERE id = 1")
    deadline = time.monotonic() + 3 * CACHE_SECONDS
    while time.monotonic() < deadline:
        assert shown(app, 1) == ("ok", "ok")
        time.sleep(0.05)
    assert device_reads(seen) == 0, seen
    assert mark_reads(seen) >= 2, seen  # the marks were read every CACHE_SECONDS


def test_a_change_the_collector_writes_shows_within_the_cache_seconds(
    mor: MorDatabase,
    sim: AmiSimulator,
    conf: Path,
    apps: Callable[..., Flask],
    capsys: pytest.CaptureFixture[str],
) -> None:
    summary(conf, capsys)
    app = apps(mor.url)
    assert shown(app, 1) == ("ok", "ok")
    time.sleep(CACHE_SECONDS)  # cached past the answer's own age: only the mark can tell
    sim.set_status("101", "UNREACHABLE")
    assert summary(conf, capsys)["changed"] == 1
    written = time.monotonic()
    assert shows_within(app, 1, ("unreachable", "unreachable"), written) <= (CACHE_SECONDS + SLACK)
    assert shown(app, 2) == ("ok", "ok")


def test_a_change_the_listener_writes_shows_within_the_cache_seconds(
    mor: MorDatabase,
    sim: AmiSimulator,
    conf: Path,
    apps: Callable[..., Flask],
    capsys: pytest.CaptureFixture[str],
) -> None:
    summary(conf, capsys)
    app = apps(mor.url)
    database = app.extensions["mor_widget_db"]
    with listening(load_settings(conf)):
        wait_for(lambda: sim.event_sessions == 1)
        sim.emit_peer_status("101", "Reachable", 25)
        wait_for(lambda: shown(app, 1) == ("ok", "ok"))
        wait_for(
            lambda: (
                app.test_client()
                .get("/api/v1/devices/status?ids=1")
                .get_json()["devices"][0]["reg_status"]
                == "OK (25 ms)"
            ),
            timeout=CACHE_SECONDS + SLACK + 1,
        )
        # the listener has marked server 1: its devices are now kept beyond CACHE_SECONDS
        assert 1 in database.change_marks()
        time.sleep(CACHE_SECONDS)
        sim.emit_peer_status("101", "Unreachable", -1)
        wait_for(
            lambda: (
                mor.execute("SELECT reg_status FROM devices WHERE id = 1").scalar() == "UNREACHABLE"
            )
        )
        written = time.monotonic()
        assert shows_within(app, 1, ("unreachable", "unreachable"), written) <= (
            CACHE_SECONDS + SLACK
        )


def test_without_a_mark_a_device_is_read_again_after_the_cache_seconds(
    mor: MorDatabase, apps: Callable[..., Flask]
) -> None:
    # no collector run yet: no mark, so nothing can say when the device changes
    app = apps(mor.url)
    assert shown(app, 1) == ("none", "none")
    mor.execute("UPDATE devices SET reg_status = 'OK (5 ms)' WHERE id = 1")
    written = time.monotonic()
    assert shows_within(app, 1, ("ok", "ok"), written) <= CACHE_SECONDS + SLACK


# ---------------------------------------------------------------- the cache alone


def cache(seconds: float, max_bytes: int = 10_000, longest: float = 60) -> DeviceCache[str]:
    """Values are '<server id>:<anything>', each costing 100 bytes."""
    return DeviceCache(
        seconds, lambda value: 100, lambda value: int(value.split(":")[0]), max_bytes, longest
    )


def test_the_cache_never_holds_more_than_its_bytes_and_drops_the_oldest_first() -> None:
    devices = cache(60, max_bytes=1_000)
    for n in range(50):
        devices.put_many({n: f"1:{n}"}, time.monotonic(), devices.epoch)
        assert devices.size_bytes <= 1_000
    assert len(devices) == 10
    found, missing = devices.get_many(range(50))
    assert sorted(found) == list(range(40, 50))
    assert missing == list(range(40))


def test_entries_live_the_cache_seconds_without_a_mark_and_up_to_the_longest_age_with_one() -> None:
    devices = cache(0.1, longest=0.4)
    devices.watch(lambda: {1: ("poll", 1)})  # server 1 has a mark, server 2 none
    devices.put_many({10: "1:a", 20: "2:b"}, time.monotonic(), devices.epoch)
    time.sleep(0.2)
    devices.watch(lambda: {1: ("poll", 1)})  # nothing moved
    assert devices.get_many([10, 20]) == ({10: "1:a"}, [20])
    time.sleep(0.3)
    assert devices.get_many([10]) == ({}, [10])  # past the longest age all the same


def test_a_moved_mark_drops_its_servers_entries_and_their_memory() -> None:
    devices = cache(0.05)
    devices.watch(lambda: {1: "run 1", 2: "run 1"})
    devices.put_many({10: "1:a", 11: "1:b", 20: "2:c"}, time.monotonic(), devices.epoch)
    time.sleep(0.06)
    devices.watch(lambda: {1: "run 2", 2: "run 1"})
    assert devices.get_many([10, 11, 20]) == ({20: "2:c"}, [10, 11])
    assert len(devices) == 1 and devices.size_bytes == 100


def test_an_entry_read_before_its_mark_moved_is_never_served_after() -> None:
    devices = cache(0.05)
    devices.watch(lambda: {1: "run 1"})
    # a request takes its epoch and reads the device; meanwhile the collector writes and
    # another request (another thread) sees the mark move; then the first one stores
    read_at, epoch = time.monotonic(), devices.epoch
    time.sleep(0.06)
    devices.watch(lambda: {1: "run 2"})
    devices.put_many({10: "1:old"}, read_at, epoch)
    assert devices.get_many([10]) == ({}, [10])
    devices.put_many({10: "1:new"}, time.monotonic(), devices.epoch)
    assert devices.get_many([10]) == ({10: "1:new"}, [])


def test_marks_gone_drop_everything() -> None:
    devices = cache(0.05)
    devices.watch(lambda: {1: "run 1"})
    devices.put_many({10: "1:a"}, time.monotonic(), devices.epoch)
    time.sleep(0.06)
    devices.watch(lambda: None)  # the tables went away (a restore of an older dump)
    assert devices.get_many([10]) == ({}, [10])
