"""The event listener (--watch) end to end: the simulator's PeerStatus events over real
TCP into MariaDB, its watchdog, and the cron poll running beside it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from regstatus_helpers import (
    MorDatabase,
    Receiver,
    listening,
    simulated_asterisk,
    summary,
    wait_for,
    write_conf,
)

from mor_plugin import cli, store
from mor_plugin.config import load_settings
from mor_plugin.simulator import AmiSimulator, Faults, SimPeer, run_in_thread

SECRET = "hook-secret"


@pytest.fixture
def sim() -> Iterator[AmiSimulator]:
    peers = [
        SimPeer("101", "OK (12 ms)", ip="10.0.0.1", port=5060),
        SimPeer("102", "OK (30 ms)", ip="10.0.0.2", port=5060),
        SimPeer("103", "Unmonitored", ip="10.0.0.3", port=5060),
        SimPeer("201", "OK (7 ms)", ip="10.0.2.1", port=5060),  # assigned to server 2
    ]
    with simulated_asterisk(peers, "11") as s:
        yield s


@pytest.fixture
def mor(mor_db: MorDatabase) -> MorDatabase:
    mor_db.add_server(1)
    mor_db.add_server(2)
    mor_db.add_device(1, "101")
    mor_db.add_device(2, "102", user_id=-1)  # a provider's device
    mor_db.add_device(3, "103", qualify="no")
    mor_db.add_device(7, "201", server_id=2, reg_status="OK (99 ms)")
    return mor_db


def conf_for(tmp_path: Path, mor: MorDatabase, sim: AmiSimulator, **extra: Any) -> Path:
    values: dict[str, Any] = {"watch_ping_interval": 0.3, "ami_timeout": 1}
    values.update(extra)
    return write_conf(tmp_path, mor.url, sim, **values)


def status_of(mor: MorDatabase, device_id: int) -> Any:
    return mor.execute("SELECT reg_status FROM devices WHERE id = :i", i=device_id).scalar()


def listener_connected(mor: MorDatabase) -> Any:
    """The listener's connected flag; None until its first heartbeat created the row (which
    may come after the AMI session opened: the test must wait, not fail)."""
    return mor.execute(
        "SELECT listener_connected FROM mor_regstatus_servers WHERE server_id = 1"
    ).scalar()


def listener_row(mor: MorDatabase) -> Any:
    return mor.execute(
        "SELECT listener_connected, listener_seen, listener_since FROM mor_regstatus_servers "
        "WHERE server_id = 1"
    ).one()


def test_events_reach_the_database_within_a_second(
    mor: MorDatabase, sim: AmiSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = conf_for(tmp_path, mor, sim)
    summary(conf, capsys)  # the poll writes the baseline
    with listening(load_settings(conf)):
        wait_for(lambda: sim.event_sessions == 1)
        wait_for(lambda: listener_connected(mor) == 1)
        for status, time_ms, expected in [
            ("Unreachable", -1, "UNREACHABLE"),
            ("Reachable", 25, "OK (25 ms)"),
            ("Lagged", 2600, "LAGGED (2600 ms)"),
            ("Unregistered", None, "UNKNOWN"),
        ]:
            started = time.monotonic()
            sim.emit_peer_status("101", status, time_ms)
            wait_for(lambda e=expected: status_of(mor, 1) == e, timeout=1.0)
            assert time.monotonic() - started < 1.0
        # qualify off: a registration reads Unmonitored, and a stranger's bad password nothing
        sim.emit_peer_status("103", "Registered", address=("10.0.0.33", 5062))
        sim.emit_peer_status("102", "Rejected", cause="AUTH_SECRET_FAILED", address=("6.6.6.6", 1))
        wait_for(
            lambda: (
                mor.execute("SELECT ip FROM mor_regstatus_devices WHERE device_id = 3").scalar()
                == "10.0.0.33"
            )
        )
    assert status_of(mor, 3) == "Unmonitored"
    assert status_of(mor, 2) == "OK (30 ms)"
    rows = mor.execute(
        "SELECT from_status, to_status, reg_status, latency_ms, source FROM mor_regstatus_history "
        "WHERE device_id = 1 ORDER BY id"
    ).all()
    assert [tuple(r) for r in rows] == [
        ("ok", "unreachable", "UNREACHABLE", None, "event"),
        ("unreachable", "ok", "OK (25 ms)", 25, "event"),
        ("ok", "lagged", "LAGGED (2600 ms)", 2600, "event"),
        ("lagged", "unknown", "UNKNOWN", None, "event"),
    ]
    connected, seen, since = listener_row(mor)
    assert connected == 0 and seen is not None and since is not None


def test_an_event_for_another_servers_device_is_ignored(
    mor: MorDatabase, sim: AmiSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = conf_for(tmp_path, mor, sim)
    summary(conf, capsys)
    before = mor.snapshot()
    with listening(load_settings(conf)) as running:
        wait_for(lambda: sim.event_sessions == 1)
        sim.emit_peer_status("201", "Unreachable", -1)
        sim.emit_peer_status("nosuchpeer", "Reachable", 5)
        wait_for(lambda: running.listener.events_applied == 2)
    after = mor.snapshot()
    for table in ("devices", "mor_regstatus_devices", "mor_regstatus_history"):
        assert after[table] == before[table]
    assert status_of(mor, 7) == "OK (99 ms)"


def test_an_event_without_time_keeps_the_last_known_latency(
    mor: MorDatabase, sim: AmiSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = conf_for(tmp_path, mor, sim)
    summary(conf, capsys)
    with listening(load_settings(conf)):
        wait_for(lambda: sim.event_sessions == 1)
        sim.emit_peer_status("101", "Lagged")  # no Time line
        wait_for(lambda: status_of(mor, 1) == "LAGGED (12 ms)")
        sim.emit_peer_status("101", "Reachable")
        wait_for(lambda: status_of(mor, 1) == "OK (12 ms)")
    # the next poll brings Asterisk's own figure (the simulator kept 12 ms too)
    summary(conf, capsys)
    assert status_of(mor, 1) == "OK (12 ms)"


def test_a_flapping_device_is_flagged_and_notified_once_per_window(
    mor: MorDatabase, sim: AmiSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Receiver() as hook:
        conf = conf_for(
            tmp_path,
            mor,
            sim,
            webhook_url=hook.url,
            webhook_secret=SECRET,
            webhook_user_ids=-1,
            flap_changes=4,
            flap_window=10,
        )
        summary(conf, capsys)
        with listening(load_settings(conf)):
            wait_for(lambda: sim.event_sessions == 1)
            sim.flap("102", 7, interval=0.05)  # ends UNREACHABLE
            wait_for(
                lambda: (
                    mor.execute(
                        "SELECT COUNT(*) FROM mor_regstatus_history WHERE device_id = 2"
                    ).scalar()
                    == 7
                )
            )
            flapping, since = mor.execute(
                "SELECT flapping, flapping_since FROM mor_regstatus_devices WHERE device_id = 2"
            ).one()
            assert flapping == 1 and since is not None
            wait_for(lambda: hook.posts)
            time.sleep(0.8)  # heartbeats with catch-up run meanwhile: nothing more to send
            summary(conf, capsys)  # and neither has the poll
        alerts = hook.alerts(SECRET)
    assert [(a["device_id"], a["alert"], a["status"]) for a in alerts] == [
        (2, "down", "unreachable")
    ]
    assert alerts[0]["device_name"] == "102" and alerts[0]["user_id"] == -1
    assert status_of(mor, 2) == "UNREACHABLE"  # reg_status keeps Asterisk's string


def test_the_watchdog_reconnects_after_a_silent_hang(
    mor: MorDatabase, sim: AmiSimulator, tmp_path: Path
) -> None:
    settings = load_settings(conf_for(tmp_path, mor, sim, ami_timeout=0.5))
    with listening(settings, first_backoff=0.1) as running:
        wait_for(lambda: sim.event_sessions == 1)
        sim.faults.no_pong = True
        started = time.monotonic()
        wait_for(lambda: running.listener.sessions >= 2, timeout=5)
        assert time.monotonic() - started < 3  # ping interval + timeout + backoff
        sim.faults.no_pong = False
        wait_for(lambda: sim.event_sessions == 1 and listener_connected(mor) == 1)
        sim.emit_peer_status("101", "Reachable", 44)
        wait_for(lambda: status_of(mor, 1) == "OK (44 ms)")


def test_the_watchdog_reconnects_after_a_dropped_connection(
    mor: MorDatabase, sim: AmiSimulator, tmp_path: Path
) -> None:
    settings = load_settings(conf_for(tmp_path, mor, sim))
    with listening(settings, first_backoff=0.1) as running:
        wait_for(lambda: sim.event_sessions == 1)
        wait_for(lambda: listener_connected(mor) == 1)
        since = listener_row(mor)[2]
        sim.drop_event_sessions()
        wait_for(lambda: running.listener.sessions == 2, timeout=3)
        wait_for(lambda: sim.event_sessions == 1)
        sim.emit_peer_status("101", "Unreachable", -1)
        wait_for(lambda: status_of(mor, 1) == "UNREACHABLE")
        assert listener_row(mor)[0] == 1
        assert listener_row(mor)[2] >= since  # connected again since the reconnect


def test_a_refused_login_stops_the_listener_at_once(
    mor: MorDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    faults = Faults(bad_auth=True, auth_fail_delay=0.1)
    with run_in_thread(AmiSimulator([], username="mor", secret="s3cret", faults=faults)) as s:
        conf = conf_for(tmp_path, mor, s)
        started = time.monotonic()
        code = cli.main(["--config", str(conf), "--watch"])
        assert time.monotonic() - started < 5
        assert (s.login_failures, s.logins) == (1, 0)
    assert code == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mor-retrieve-peers: listener stopped: AMI login refused"]


def test_sigterm_stops_the_service_cleanly_and_the_poll_still_runs(
    mor: MorDatabase, sim: AmiSimulator, tmp_path: Path
) -> None:
    conf = conf_for(tmp_path, mor, sim)
    script = Path(sys.executable).with_name("mor-retrieve-peers")
    service = subprocess.Popen(
        [str(script), "--config", str(conf), "--watch"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: sim.event_sessions == 1, timeout=15)
        # the cron poll is not kept out by the listener's lock
        poll = subprocess.run(
            [str(script), "--config", str(conf), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert poll.returncode == 0, poll.stderr
        assert '"peers": 4' in poll.stdout
        sim.emit_peer_status("101", "Unreachable", -1)
        wait_for(lambda: status_of(mor, 1) == "UNREACHABLE")
        service.send_signal(signal.SIGTERM)
        out, err = service.communicate(timeout=15)
    finally:
        if service.poll() is None:
            service.kill()
    assert service.returncode == 0, err
    assert listener_row(mor)[0] == 0
    assert (tmp_path / "run.lock.watch").exists()


def test_the_poll_and_the_listener_last_observation_wins(
    mor: MorDatabase,
    sim: AmiSimulator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conf = conf_for(tmp_path, mor, sim)
    summary(conf, capsys)
    settings = load_settings(conf)
    with listening(settings) as running:
        wait_for(lambda: sim.event_sessions == 1)

        # 1. An event arrives after the poll's list completed, while the poll writes:
        #    the listener waits for the poll's transaction, then its newer event wins.
        real_load = store.load_devices
        slowed: list[int] = []

        def slow_load(conn: Any, server_id: int) -> Any:
            slowed.append(server_id)
            sim.emit_peer_status("101", "Unreachable", -1)
            time.sleep(0.6)  # the listener has it by now, and waits for the lock
            return real_load(conn, server_id)

        # where store.load_poll_inputs looks the function up
        monkeypatch.setattr(store.read, "load_devices", slow_load)
        cli.collect(settings)
        monkeypatch.setattr(store.read, "load_devices", real_load)
        assert slowed == [settings.server_id]  # the event really came while the poll ran
        wait_for(lambda: status_of(mor, 1) == "UNREACHABLE")

        # 2. An event observed before the poll's list, written after the poll: the poll's
        #    newer observation wins, the late event is left out.
        real_apply = running.listener.apply_batch

        def late_apply(events: Any) -> None:
            time.sleep(1.0)
            real_apply(events)

        monkeypatch.setattr(running.listener, "apply_batch", late_apply)
        sim.emit_peer_status("102", "Unreachable", -1)
        time.sleep(0.05)
        sim.emit_peer_status("102", "Reachable", 31)  # Asterisk's state when the poll lists
        time.sleep(0.3)  # both events received; their write is delayed
        cli.collect(settings)
        assert status_of(mor, 2) == "OK (31 ms)"
        wait_for(lambda: running.listener.events_applied >= 3, timeout=5)
    assert status_of(mor, 2) == "OK (31 ms)"
    assert status_of(mor, 1) == "UNREACHABLE"
    rows = mor.execute(
        "SELECT COUNT(*) FROM mor_regstatus_history WHERE device_id = 2 AND source = 'event'"
    ).scalar()
    assert rows == 0


def _read_until(sock: Any, marker: bytes, timeout: float = 3.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize(("events", "gets_it"), [("off", False), ("system", True), ("on", True)])
def test_the_simulator_sends_peer_status_only_to_sessions_that_asked(
    sim: AmiSimulator, events: str, gets_it: bool
) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", sim.port)) as sock:
        _read_until(sock, b"\r\n")
        sock.sendall(
            f"Action: Login\r\nUsername: mor\r\nSecret: s3cret\r\nEvents: {events}\r\n\r\n".encode()
        )
        _read_until(sock, b"Authentication accepted")
        sim.emit_peer_status("101", "Registered", address=("10.0.0.9", 5064))
        sim.emit_peer_status("101", "Reachable")  # no Time line
        sock.sendall(b"Action: Ping\r\nActionID: p1\r\n\r\n")
        data = _read_until(sock, b"Ping: Pong")
    expected = (
        b"Event: PeerStatus\r\nPrivilege: system,all\r\nChannelType: SIP\r\nPeer: SIP/101\r\n"
        b"PeerStatus: Registered\r\nAddress: 10.0.0.9:5064\r\n\r\n"
        b"Event: PeerStatus\r\nPrivilege: system,all\r\nChannelType: SIP\r\nPeer: SIP/101\r\n"
        b"PeerStatus: Reachable\r\n\r\n"
    )
    assert (expected in data) is gets_it
    peer = next(p for p in sim.peers if p.name == "101")
    assert (peer.ip, peer.port, peer.status) == ("10.0.0.9", 5064, "OK (12 ms)")
