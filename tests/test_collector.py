"""mor-retrieve-peers end to end: the AMI simulator over real TCP into a real MOR database."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from regstatus_helpers import HOSTILE, MorDatabase, run, summary, write_conf
from sqlalchemy import create_engine, text

from mor_plugin import schema
from mor_plugin.simulator import AmiSimulator, Faults, SimPeer, realistic_peers, run_in_thread

ALL_VERSIONS = ["1.4", "1.6", "1.8", "10", "11", "13", "16", "18", "20"]

#: what a run makes of the default world (conftest's ``mor`` and ``sim``)
EXPECTED = {
    "101": "OK (12 ms)",
    "102": "LAGGED (2345 ms)",
    "103": "UNREACHABLE",
    "104": "UNKNOWN",
    "105": "Unmonitored",
    "106": None,
    "201": "OK (99 ms)",
    HOSTILE: "OK (3 ms)",
    "iax": "kept",
}


def test_a_run_writes_asterisks_statuses_for_this_servers_devices(
    mor: MorDatabase, sim: AmiSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = summary(write_conf(tmp_path, mor.url, sim), capsys)
    assert mor.reg_statuses() == EXPECTED
    assert result["counts"] == {
        "ok": 2,
        "lagged": 1,
        "unreachable": 1,
        "unknown": 1,
        "unmonitored": 1,
        "none": 1,
    }
    assert result["changed"] == 6  # 106 was NULL already
    assert result["server_id"] == 1


def test_a_hostile_peer_name_is_stored_as_a_name(
    mor: MorDatabase, sim: AmiSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary(write_conf(tmp_path, mor.url, sim), capsys)
    rows = mor.execute("SELECT reg_status FROM devices WHERE name = :n", n=HOSTILE).all()
    assert rows == [("OK (3 ms)",)]
    assert mor.execute("SELECT COUNT(*) FROM devices").scalar() == 9


def test_second_identical_run_changes_nothing(
    mor: MorDatabase, sim: AmiSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = write_conf(tmp_path, mor.url, sim)
    summary(conf, capsys)
    before = mor.snapshot()
    again = summary(conf, capsys)
    assert again["changed"] == 0
    assert again["state_changes"] == 0
    after = mor.snapshot()
    # only the run's own bookkeeping moves: the server summary, MOR's uptime text, and
    # when a wrong-server registration was last seen (this run saw it again)
    for table in ("devices", "mor_regstatus_devices"):
        assert after[table] == before[table]
    assert wrong_server_rows(after) == wrong_server_rows(before)


def wrong_server_rows(snapshot: dict[str, list[tuple[Any, ...]]]) -> list[tuple[Any, ...]]:
    """The wrong-server rows without last_seen."""
    seen = schema.wrong_server.c.keys().index("last_seen")
    return [row[:seen] + row[seen + 1 :] for row in snapshot["mor_regstatus_wrong_server"]]


def test_wrong_server_device_is_untouched_and_recorded(
    mor: MorDatabase, sim: AmiSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = summary(write_conf(tmp_path, mor.url, sim), capsys)
    assert mor.reg_statuses()["201"] == "OK (99 ms)"
    assert mor.execute("SELECT server_id FROM devices WHERE id = 7").scalar() == 2
    rows = mor.execute(
        "SELECT device_id, seen_on_server_id, assigned_server_id, reg_status, ip "
        "FROM mor_regstatus_wrong_server"
    ).all()
    assert rows == [(7, 1, 2, "OK (7 ms)", "10.0.2.1")]
    assert result["wrong_server"] == 1


def test_a_device_no_longer_listed_becomes_null(
    mor: MorDatabase, sim: AmiSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = write_conf(tmp_path, mor.url, sim)
    summary(conf, capsys)
    sim.peers = [p for p in sim.peers if p.name != "101"]
    summary(conf, capsys)
    assert mor.reg_statuses()["101"] is None
    status, ip = mor.execute(
        "SELECT status, ip FROM mor_regstatus_devices WHERE device_id = 1"
    ).one()
    assert (status, ip) == ("none", "10.0.0.1")


def test_unreachable_for_over_an_hour_is_shown_as_unknown(
    mor: MorDatabase, sim: AmiSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = write_conf(tmp_path, mor.url, sim)
    summary(conf, capsys)
    assert mor.reg_statuses()["103"] == "UNREACHABLE"
    # the device went unreachable 61 minutes ago
    mor.execute(
        "UPDATE mor_regstatus_devices SET unreachable_since = :t WHERE device_id = 3",
        t=datetime.utcnow() - timedelta(minutes=61),
    )
    summary(conf, capsys)
    assert mor.reg_statuses()["103"] == "UNKNOWN"
    sim.set_status("103", "OK (40 ms)")
    summary(conf, capsys)
    assert mor.reg_statuses()["103"] == "OK (40 ms)"
    assert (
        mor.execute(
            "SELECT unreachable_since FROM mor_regstatus_devices WHERE device_id = 3"
        ).scalar()
        is None
    )


def test_unknown_after_is_read_from_mor_conf(
    mor: MorDatabase, sim: AmiSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = write_conf(tmp_path, mor.url, sim, unknown_after=0)
    summary(conf, capsys)
    assert mor.reg_statuses()["103"] == "UNKNOWN"


def test_dry_run_prints_the_changes_and_writes_nothing(
    mor: MorDatabase, sim: AmiSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = mor.snapshot()
    code, out, err = run(write_conf(tmp_path, mor.url, sim), "--dry-run", capsys=capsys)
    assert code == 0, err
    assert "device 1 '101': None -> 'OK (12 ms)'" in out
    assert "assigned to server 2" in out
    assert "6 of the server's devices would change" in out
    assert mor.snapshot() == before
    assert not (tmp_path / "state.json").exists()


def test_server_version_and_uptime_are_written_for_this_server_only(
    mor: MorDatabase, sim: AmiSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary(write_conf(tmp_path, mor.url, sim), capsys)
    rows = mor.execute("SELECT id, version, uptime FROM servers ORDER BY id").all()
    assert rows[0][1].startswith("11.")
    assert "day" in rows[0][2]
    assert rows[1][1:] == (None, None)


def test_the_run_is_summarised_for_the_widget_and_the_fact(
    mor: MorDatabase, sim: AmiSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary(write_conf(tmp_path, mor.url, sim), capsys)
    row = mor.execute(
        "SELECT result, n_ok, n_none, n_wrong_server, last_success IS NOT NULL "
        "FROM mor_regstatus_servers WHERE server_id = 1"
    ).one()
    assert tuple(row) == ("ok", 2, 1, 1, 1)
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["last_result"] == "ok"
    assert state["counts"]["ok"] == 2
    log = (tmp_path / "log" / "ami_debug.log").read_text()
    assert "run started" in log and "run finished" in log


def test_debug_logs_every_ami_message_with_the_secret_masked(
    mor: MorDatabase, sim: AmiSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary(write_conf(tmp_path, mor.url, sim, debug=1), capsys)
    log = (tmp_path / "log" / "ami_debug.log").read_text()
    assert "PeerEntry" in log
    assert "s3cret" not in log
    assert "'Secret': '***'" in log


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_every_chan_sip_version_gives_the_same_statuses(
    version: str, mor: MorDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    peers = [
        SimPeer("101", "OK (12 ms)", ip="10.0.0.1", port=5060),
        SimPeer("102", "LAGGED (2345 ms)", ip="10.0.0.2", port=5060),
        SimPeer("104", "UNKNOWN"),
        SimPeer("105", "Unmonitored", ip="10.0.0.5", port=5061),
    ]
    with run_in_thread(AmiSimulator(peers, version=version, username="mor", secret="s3cret")) as s:
        summary(write_conf(tmp_path, mor.url, s), capsys)
    statuses = mor.reg_statuses()
    assert [statuses[n] for n in ("101", "102", "104", "105", "106")] == [
        "OK (12 ms)",
        "LAGGED (2345 ms)",
        "UNKNOWN",
        "Unmonitored",
        None,
    ]
    ip, port = mor.execute("SELECT ip, port FROM mor_regstatus_devices WHERE device_id = 1").one()
    assert (ip, port) == ("10.0.0.1", 5060)


def test_credentials_fall_back_to_this_servers_row(
    mor: MorDatabase, sim: AmiSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mor.execute("UPDATE servers SET ami_username = 'nobody', ami_secret = 'x' WHERE id = 2")
    mor.execute(
        "UPDATE servers SET ami_username = 'mor', ami_secret = 's3cret', "
        "ami_port = :p WHERE id = 1",
        p=str(sim.port),
    )
    conf = write_conf(tmp_path, mor.url, sim)
    text_ = "".join(
        line for line in conf.read_text().splitlines(keepends=True) if not line.startswith("ami_")
    )
    conf.write_text(text_ + "ami_host = 127.0.0.1\n")
    summary(conf, capsys)
    assert mor.reg_statuses()["101"] == "OK (12 ms)"


def test_the_store_works_on_sqlite(
    sqlite_url: str, sim: AmiSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO servers (id, server_ip) VALUES (1, '127.0.0.1'), (2, '127.0.0.2')")
        )
        for device_id, name, server in [
            (1, "101", 1),
            (2, "103", 1),
            (3, "106", 1),
            (4, "201", 2),
            (5, HOSTILE, 1),
        ]:
            conn.execute(
                text(
                    "INSERT INTO devices (id, name, device_type, user_id, server_id, "
                    "qualify) VALUES (:i, :n, 'SIP', 2, :s, 'yes')"
                ),
                {"i": device_id, "n": name, "s": server},
            )
    conf = write_conf(tmp_path, sqlite_url, sim)
    first = summary(conf, capsys)
    assert summary(conf, capsys)["changed"] == 0
    with engine.connect() as conn:
        statuses = dict(conn.execute(text("SELECT name, reg_status FROM devices")).all())
        wrong = conn.execute(text("SELECT device_id FROM mor_regstatus_wrong_server")).all()
    assert statuses == {
        "101": "OK (12 ms)",
        "103": "UNREACHABLE",
        "106": None,
        "201": None,
        HOSTILE: "OK (3 ms)",
    }
    assert wrong == [(4,)]
    assert first["changed"] == 3
    engine.dispose()


def test_migrate_alone_creates_the_own_tables(
    mor: MorDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(write_conf(tmp_path, mor.url, None), "--migrate", capsys=capsys)
    assert (code, out.strip()) == (0, "migrated to schema version 5")
    code, out, _ = run(write_conf(tmp_path, mor.url, None), "--migrate", capsys=capsys)
    assert (code, out.strip()) == (0, "schema already at version 5")
    tables = {row[0] for row in mor.execute("SHOW TABLES")}
    assert {
        "mor_regstatus_devices",
        "mor_regstatus_servers",
        "mor_regstatus_wrong_server",
        "mor_regstatus_contacts",
    } <= tables


# --- failures: each ends in time, says one line, exits non-zero, writes nothing ----------


def assert_failed_cleanly(code: int, err: str, expected_code: int, words: str) -> None:
    assert code == expected_code
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert words in lines[0]


def devices_and_state(db: MorDatabase) -> dict[str, Any]:
    snap = db.snapshot()
    snap.pop("mor_regstatus_servers", None)  # a failed run records its error there
    return snap


def test_bad_auth_fails_at_once_without_retrying(
    mor: MorDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with run_in_thread(
        AmiSimulator(
            realistic_peers(5), username="mor", secret="other", faults=Faults(bad_auth=True)
        )
    ) as s:
        conf = write_conf(tmp_path, mor.url, s)
        before = mor.snapshot()
        started = time.monotonic()
        code, _, err = run(conf, capsys=capsys)
        assert time.monotonic() - started < 5
        assert (s.login_failures, s.logins) == (1, 0)
    assert_failed_cleanly(code, err, 3, "refused AMI login for user 'mor'")
    assert devices_and_state(mor) == {
        k: v for k, v in before.items() if k != "mor_regstatus_servers"
    }
    state = json.loads((tmp_path / "state.json").read_text())
    assert "refused AMI login" in state["last_result"]


def fault_run(
    mor: MorDatabase,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    faults: Faults,
    version: str = "11",
) -> tuple[int, str, float]:
    """A good run first, then a run against the fault; returns code, stderr, seconds."""
    peers = realistic_peers(300, seed=3)
    for device_id, peer in enumerate(peers[:200], start=100):
        mor.add_device(device_id, peer.name)
    with run_in_thread(AmiSimulator(peers, version=version, username="mor", secret="s3cret")) as s:
        conf = write_conf(tmp_path, mor.url, s)
        summary(conf, capsys)
        before = devices_and_state(mor)
        for peer in s.peers[:150]:
            peer.status = "UNREACHABLE"  # what the failed run would have written
        s.faults = faults
        started = time.monotonic()
        code, _, err = run(conf, capsys=capsys)
        elapsed = time.monotonic() - started
    assert devices_and_state(mor) == before
    row = mor.execute("SELECT result, last_success IS NOT NULL FROM mor_regstatus_servers").one()
    assert row[0] != "ok" and row[1] == 1
    return code, err, elapsed


def test_connection_dropped_mid_list_fails_cleanly(
    mor: MorDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err, elapsed = fault_run(mor, tmp_path, capsys, Faults(drop_after=100))
    assert_failed_cleanly(code, err, 3, "closed the AMI connection in the middle of the SIPpeers")
    assert elapsed < 5


def test_asterisk_hanging_mid_list_fails_after_the_timeout(
    mor: MorDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err, elapsed = fault_run(mor, tmp_path, capsys, Faults(hang_after=100))
    assert_failed_cleanly(code, err, 3, "went silent for 2 s")
    assert 1.5 < elapsed < 6


def test_garbage_in_the_list_fails_the_run_instead_of_writing_it(
    mor: MorDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err, _ = fault_run(mor, tmp_path, capsys, Faults(garbage=True))
    assert_failed_cleanly(code, err, 3, "announced ListItems")


def test_list_without_its_end_marker_fails(
    mor: MorDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err, _ = fault_run(mor, tmp_path, capsys, Faults(no_complete=True))
    assert_failed_cleanly(code, err, 3, "no PeerlistComplete")


def test_list_whose_count_disagrees_fails(
    mor: MorDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err, _ = fault_run(mor, tmp_path, capsys, Faults(wrong_count=True))
    assert_failed_cleanly(code, err, 3, "announced ListItems")


def test_asterisk_without_chan_sip_is_named(
    mor: MorDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with run_in_thread(
        AmiSimulator(realistic_peers(3), version="21", username="mor", secret="s3cret")
    ) as s:
        code, _, err = run(write_conf(tmp_path, mor.url, s, peer_source="sip"), capsys=capsys)
    assert_failed_cleanly(code, err, 3, "chan_sip is not loaded (removed in Asterisk 21)")


def test_nothing_listening_on_the_ami_port(
    mor: MorDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    code, _, err = run(write_conf(tmp_path, mor.url, None, ami_port=port), capsys=capsys)
    assert_failed_cleanly(code, err, 3, f"cannot connect to Asterisk AMI at 127.0.0.1:{port}")


def test_database_unreachable_fails_within_the_timeout(
    sim: AmiSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    url = f"mysql+pymysql://mor:secretpw@127.0.0.1:{port}/mor"
    started = time.monotonic()
    code, _, err = run(write_conf(tmp_path, url, sim), capsys=capsys)
    assert time.monotonic() - started < 10
    assert_failed_cleanly(code, err, 4, "database mysql+pymysql://mor:***@127.0.0.1")
    assert "secretpw" not in err


class KillingProxy:
    """A TCP proxy to MariaDB that cuts the connection when the client sends ``trigger``."""

    def __init__(self, trigger: bytes) -> None:
        self.trigger = trigger
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.killed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.killed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", 3306))
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, watch: bool) -> None:
        try:
            while data := src.recv(65536):
                if watch and self.trigger in data:
                    self.killed.set()
                    # the database "died": no reconnect either. shutdown() rather than
                    # close() alone, which would not wake the threads blocked on them.
                    for sock in (self.listener, src, dst):
                        _shut(sock)
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def test_database_dying_mid_write_rolls_everything_back(
    mor: MorDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    peers = realistic_peers(3000, seed=5)
    for device_id, peer in enumerate(peers, start=100):
        mor.add_device(device_id, peer.name)
    with run_in_thread(AmiSimulator(peers, username="mor", secret="s3cret")) as s:
        summary(write_conf(tmp_path, mor.url, s), capsys)
        before = mor.snapshot()
        for peer in s.peers:
            peer.status = "UNREACHABLE"
        # cut the line at the state rows: the devices UPDATEs went through already
        proxy = KillingProxy(b"mor_regstatus_devices (device_id")
        proxied = mor.url.replace("127.0.0.1:3306", f"127.0.0.1:{proxy.port}")
        started = time.monotonic()
        code, _, err = run(write_conf(tmp_path, proxied, s), capsys=capsys)
        elapsed = time.monotonic() - started
    assert proxy.killed.is_set()
    assert_failed_cleanly(code, err, 4, "database mysql+pymysql")
    assert elapsed < 15
    time.sleep(0.5)  # let the server notice the dead session and roll it back
    assert mor.snapshot() == before


def test_a_second_run_while_one_holds_the_lock_exits_quietly(
    mor: MorDatabase, tmp_path: Path
) -> None:
    peers = realistic_peers(50)
    with run_in_thread(
        AmiSimulator(peers, username="mor", secret="s3cret", faults=Faults(slow=0.03))
    ) as s:
        conf = write_conf(tmp_path, mor.url, s)
        command = [sys.executable, "-m", "mor_plugin.cli", "--config", str(conf), "-v"]
        first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        while s.actions["SIPpeers"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        second = subprocess.run(command, capture_output=True, text=True, timeout=30)
        out, err = first.communicate(timeout=30)
    assert second.returncode == 0
    assert "another mor-retrieve-peers run holds" in second.stdout
    assert first.returncode == 0, err
    assert "50 peers" in out
    assert s.actions["SIPpeers"] == 1


def test_config_error_is_one_line_naming_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "mor.conf"
    conf.write_text("server_id = abc\n")
    code, _, err = run(conf, capsys=capsys)
    assert_failed_cleanly(code, err, 2, f"{conf}: server_id")


def run_installed(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The console script as cron starts it."""
    script = Path(sys.executable).with_name("mor-retrieve-peers")
    return subprocess.run(
        [str(script), "--config", str(conf), *args], capture_output=True, text=True, timeout=60
    )


def test_the_console_script_runs_as_installed(
    mor: MorDatabase, sim: AmiSimulator, tmp_path: Path
) -> None:
    done = run_installed(write_conf(tmp_path, mor.url, sim), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["peers"] == 7
    assert mor.reg_statuses() == EXPECTED


def test_a_misspelled_key_is_said_on_stderr_and_in_the_log_on_every_run(
    mor: MorDatabase, sim: AmiSimulator, tmp_path: Path
) -> None:
    conf = write_conf(tmp_path, mor.url, sim, ami_prot=5039)
    expected = (
        f"mor-retrieve-peers: {conf}: line 15: unknown key 'ami_prot'"
        " (did you mean 'ami_port'?): ignored\n"
    )
    for _ in range(2):
        done = run_installed(conf)
        assert (done.returncode, done.stdout, done.stderr) == (0, "", expected)
    assert mor.reg_statuses() == EXPECTED
    log = (tmp_path / "log" / "ami_debug.log").read_text()
    assert log.count("WARNING mor_plugin: " + expected.removeprefix("mor-retrieve-peers: ")) == 2


def test_mors_own_keys_of_mor_conf_keep_a_run_silent(
    mor: MorDatabase, sim: AmiSimulator, tmp_path: Path
) -> None:
    # what MOR's other programs read from the same file (MOR's x6/asterisk/agi/mor.conf)
    conf = write_conf(
        tmp_path, mor.url, sim, calls_one_time=4, cron_interval=1, execute_call_files=1
    )
    done = run_installed(conf)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert "WARNING" not in (tmp_path / "log" / "ami_debug.log").read_text()


def test_help_lists_the_exit_codes_of_the_readme_and_the_defaults() -> None:
    script = Path(sys.executable).with_name("mor-retrieve-peers")
    shown = subprocess.run(
        [str(script), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "80"},
    )
    assert shown.returncode == 0, shown.stderr
    # a table: "  <code>  <meaning>", a longer meaning continued under its own column
    listed = re.findall(r"^  (\d)  (\w+)", shown.stdout.split("exit codes:\n", 1)[1], re.M)
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme.split("### Exit codes", 1)[1].split("\n\n")[1]
    assert listed == re.findall(r"^\| (\d) \| (\w+)", table, re.M)
    assert [code for code, _ in listed] == ["0", "1", "2", "3", "4"]
    assert all(len(line) <= 80 for line in shown.stdout.splitlines())
    text = " ".join(shown.stdout.split())
    assert "mor.conf to read (default /var/lib/asterisk/agi-bin/mor.conf)" in text
    for option, default in [
        ("--log-file", "/var/log/mor/ami_debug.log"),
        ("--state-file", "/var/lib/mor-regstatus/state.json"),
        ("--lock-file", "/run/mor_retrieve_peers.lock"),
    ]:
        assert f"{option} PATH overrides" in text
        assert f"(default: mor.conf's, else {default})" in text
