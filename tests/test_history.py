"""The poll's history, latency samples, flapping, purge, webhooks and metrics textfile,
end to end: the AMI simulator over TCP into MariaDB (and SQLite where it is cheap)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from regstatus_helpers import (
    WITH_A_PROVIDER,
    CollectorWorld,
    MorDatabase,
    Receiver,
    summary,
    utc_now,
    write_conf,
)
from sqlalchemy import create_engine, inspect, text

from mor_plugin import schema, store, textfile
from mor_plugin.simulator import AmiSimulator

SECRET = "hook-secret"


@pytest.fixture
def collector_world() -> CollectorWorld:
    """Device 2 is a provider's: the webhook tests alert on it."""
    return WITH_A_PROVIDER


def history(db: MorDatabase) -> list[tuple[Any, ...]]:
    rows = db.execute(
        "SELECT device_id, from_status, to_status, reg_status, latency_ms, source "
        "FROM mor_regstatus_history ORDER BY id"
    ).all()
    return [tuple(row) for row in rows]


def test_history_records_changes_of_colour_not_latency_jitter(
    mor: MorDatabase, sim: AmiSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = write_conf(tmp_path, mor.url, sim)
    summary(conf, capsys)
    assert history(mor) == []  # a first sighting is the baseline, not a transition
    sim.set_status("101", "OK (19 ms)")  # jitter
    sim.set_status("102", "UNREACHABLE")
    sim.set_status("103", "OK (40 ms)")
    summary(conf, capsys)
    assert history(mor) == [
        (2, "ok", "unreachable", "UNREACHABLE", None, "poll"),
        (3, "lagged", "ok", "OK (40 ms)", 40, "poll"),
    ]
    sim.peers = [p for p in sim.peers if p.name != "104"]  # no longer listed: NULL
    summary(conf, capsys)
    assert history(mor)[-1] == (4, "unmonitored", "none", None, None, "poll")
    at, observed = mor.execute(
        "SELECT h.at, s.observed_at FROM mor_regstatus_history h "
        "JOIN mor_regstatus_servers s ON s.server_id = h.server_id ORDER BY h.id DESC LIMIT 1"
    ).one()
    assert abs((at - observed).total_seconds()) < 1  # the poll's list completion


def test_latency_is_sampled_at_most_every_five_minutes(
    mor: MorDatabase, sim: AmiSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = write_conf(tmp_path, mor.url, sim)
    summary(conf, capsys)
    rows = dict(mor.execute("SELECT device_id, samples FROM mor_regstatus_latency").all())
    assert set(rows) == {1, 2, 3}  # OK and LAGGED only
    second, ms = rows[3].split(":")
    assert 0 <= int(second) < 3600 and ms == "2500"
    summary(conf, capsys)  # same 5-minute slot: no second sample
    assert dict(mor.execute("SELECT device_id, samples FROM mor_regstatus_latency").all()) == rows
    # the previous poll ran in an earlier slot: the next one samples again
    mor.execute(
        "UPDATE mor_regstatus_servers SET last_success = :t", t=utc_now() - timedelta(minutes=6)
    )
    sim.set_status("101", "OK (21 ms)")
    summary(conf, capsys)
    samples = mor.execute("SELECT samples FROM mor_regstatus_latency WHERE device_id = 1").all()
    assert [s.split(" ")[-1].split(":")[1] for (s,) in samples][-1] == "21"
    assert sum(len(s.split(" ")) for (s,) in samples) == 2


def test_the_poll_purges_only_old_history_and_latency(
    mor: MorDatabase, sim: AmiSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = write_conf(tmp_path, mor.url, sim, history_days=30)
    summary(conf, capsys)
    now = utc_now()
    hour = now.replace(minute=0, second=0, microsecond=0)
    for i, days in enumerate([40, 31, 29, 1]):
        mor.execute(
            "INSERT INTO mor_regstatus_history (device_id, server_id, at, from_status, "
            "to_status, reg_status, latency_ms, source) "
            "VALUES (:d, 1, :at, 'ok', 'unreachable', 'UNREACHABLE', NULL, 'poll')",
            d=100 + i,
            at=now - timedelta(days=days),
        )
    for i, hours in enumerate([30, 25, 23, 2]):
        mor.execute(
            "INSERT INTO mor_regstatus_latency (device_id, hour, samples) VALUES (:d, :h, '0:5')",
            d=100 + i,
            h=hour - timedelta(hours=hours),
        )
    summary(conf, capsys)
    kept = [d for (d,) in mor.execute("SELECT device_id FROM mor_regstatus_history ORDER BY 1")]
    assert kept == [102, 103]
    kept = [
        d
        for (d,) in mor.execute(
            "SELECT device_id FROM mor_regstatus_latency WHERE device_id >= 100 ORDER BY 1"
        )
    ]
    assert kept == [102, 103]


def test_purge_deletes_in_chunks(mor_db: MorDatabase, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = create_engine(mor_db.url)
    store.migrate(engine, utc_now())
    old = utc_now() - timedelta(days=60)
    with engine.begin() as conn:
        conn.execute(
            schema.history.insert(),
            [
                {
                    "device_id": i,
                    "server_id": 1,
                    "at": old,
                    "from_status": "ok",
                    "to_status": "none",
                    "source": "poll",
                }
                for i in range(25)
            ],
        )
    monkeypatch.setattr(store.history, "PURGE_CHUNK", 10)  # where purge_old reads it
    assert store.purge_old(engine, utc_now(), 30) == (25, 0)
    assert store.purge_old(engine, utc_now(), 30) == (0, 0)
    engine.dispose()


def test_flapping_is_set_by_the_poll_and_cleared_when_the_window_empties(
    mor: MorDatabase, sim: AmiSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = write_conf(tmp_path, mor.url, sim, flap_changes=3, flap_window=0.02)  # 1.2 s
    summary(conf, capsys)
    for status in ("UNREACHABLE", "OK (12 ms)", "UNREACHABLE"):
        sim.set_status("101", status)
        summary(conf, capsys)
    row = mor.execute("SELECT flapping, status FROM mor_regstatus_devices WHERE device_id = 1")
    assert tuple(row.one()) == (1, "unreachable")
    assert mor.reg_statuses()["101"] == "UNREACHABLE"
    time.sleep(1.3)
    summary(conf, capsys)  # no change, but the window no longer holds 3 transitions
    row = mor.execute(
        "SELECT flapping, flapping_since FROM mor_regstatus_devices WHERE device_id = 1"
    )
    assert tuple(row.one()) == (0, None)


def test_webhook_gets_exactly_the_expected_signed_messages(
    mor: MorDatabase, sim: AmiSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Receiver() as hook:
        conf = write_conf(
            tmp_path,
            mor.url,
            sim,
            webhook_url=hook.url,
            webhook_secret=SECRET,
            webhook_user_ids=-1,
            webhook_device_ids=3,
            flap_window=0.02,
        )
        summary(conf, capsys)  # baseline: nothing to say
        sim.set_status("101", "UNREACHABLE")  # not matched by any rule
        sim.set_status("102", "UNREACHABLE")  # a provider's device
        sim.set_status("103", "OK (22 ms)")  # LAGGED -> OK is no alert
        summary(conf, capsys)
        sim.set_status("102", "OK (31 ms)")
        summary(conf, capsys)  # back up within the window: dampened
        time.sleep(1.3)
        summary(conf, capsys)  # window over: the catch-up says where it ended up
        summary(conf, capsys)  # and only once
        alerts = hook.alerts(SECRET)
    assert [(a["device_id"], a["alert"], a["status"], a["source"]) for a in alerts] == [
        (2, "down", "unreachable", "poll"),
        (2, "up", "ok", "catch-up"),
    ]
    assert alerts[0]["reg_status"] == "UNREACHABLE" and alerts[0]["server_id"] == 1
    assert alerts[0]["at"].endswith("Z")


def test_a_failing_webhook_never_fails_the_run(
    mor: MorDatabase, sim: AmiSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Receiver(status=500) as hook:
        conf = write_conf(tmp_path, mor.url, sim, webhook_url=hook.url, webhook_user_ids=-1)
        summary(conf, capsys)
        sim.set_status("102", "UNREACHABLE")
        summary(conf, capsys)
        assert len(hook.posts) == 2  # tried, and retried once
        assert "x-mor-signature" not in hook.posts[0][1]  # no secret, no signature
    # not recorded as sent: the row says what the receiver last knew, for the catch-up
    sent = "SELECT last_status, sent_in_window FROM mor_regstatus_notified"
    assert mor.execute(sent).all() == [("ok", 0)]
    assert mor.reg_statuses()["102"] == "UNREACHABLE"


def test_the_metrics_textfile_parses_and_counts(
    mor: MorDatabase, sim: AmiSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    textfile_dir = tmp_path / "textfile"
    conf = write_conf(tmp_path, mor.url, sim, textfile_dir=textfile_dir)
    summary(conf, capsys)
    # the poll clears a flag that no transitions back; the listener's heartbeat rewrites the file
    mor.execute("UPDATE mor_regstatus_devices SET flapping = 1 WHERE device_id = 2")
    textfile.export(mor.engine, textfile_dir, 1, utc_now())
    content = (textfile_dir / "mor_regstatus.prom").read_text()
    assert list(textfile_dir.iterdir()) == [textfile_dir / "mor_regstatus.prom"]  # no leftovers
    samples = {
        (s.name, s.labels.get("status")): s.value
        for family in text_string_to_metric_families(content)
        for s in family.samples
    }
    assert samples[("mor_regstatus_devices", "ok")] == 2
    assert samples[("mor_regstatus_devices", "lagged")] == 1
    assert samples[("mor_regstatus_devices", "unmonitored")] == 1
    assert samples[("mor_regstatus_devices", "none")] == 0
    assert samples[("mor_regstatus_flapping_devices", None)] == 1
    assert samples[("mor_regstatus_listener_connected", None)] == 0
    assert samples[("mor_regstatus_last_run_success", None)] == 1
    assert abs(samples[("mor_regstatus_last_run_timestamp_seconds", None)] - time.time()) < 60
    assert "device_id" not in content and 'name="' not in content


def test_history_and_latency_work_on_sqlite(
    sqlite_url: str, sim: AmiSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO servers (id, server_ip) VALUES (1, '127.0.0.1')"))
        for device_id in (1, 2):
            conn.execute(
                text(
                    "INSERT INTO devices (id, name, device_type, user_id, server_id, qualify) "
                    "VALUES (:i, :n, 'SIP', 2, 1, 'yes')"
                ),
                {"i": device_id, "n": str(100 + device_id)},
            )
    conf = write_conf(tmp_path, sqlite_url, sim)
    summary(conf, capsys)
    sim.set_status("102", "UNREACHABLE")
    with engine.begin() as conn:  # pretend the last poll was 6 minutes ago
        conn.execute(
            text("UPDATE mor_regstatus_servers SET last_success = :t"),
            {"t": datetime.utcnow() - timedelta(minutes=6)},
        )
    summary(conf, capsys)
    with engine.connect() as conn:
        moves = conn.execute(text("SELECT device_id, to_status FROM mor_regstatus_history")).all()
        samples = conn.execute(
            text("SELECT samples FROM mor_regstatus_latency WHERE device_id = 1")
        ).scalar()
    assert moves == [(2, "unreachable")]
    assert len(samples.split(" ")) == 2
    assert store.purge_old(engine, datetime.utcnow() + timedelta(days=2), 1) == (1, 2)
    engine.dispose()


def test_migration_2_adds_the_observation_columns(mor_db: MorDatabase) -> None:
    engine = create_engine(mor_db.url)
    store.migrate(engine, utc_now())
    with engine.begin() as conn:  # a database migrated before observed_at existed
        conn.execute(text("ALTER TABLE mor_regstatus_devices DROP COLUMN observed_at"))
    for _ in range(2):  # idempotent
        with engine.begin() as conn:
            store.migrations._migration_2(conn)
    precision = mor_db.execute(
        "SELECT DATETIME_PRECISION FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = "
        "DATABASE() AND TABLE_NAME = 'mor_regstatus_devices' AND COLUMN_NAME = 'observed_at'"
    ).scalar()
    assert precision == 6  # a poll and an event within one second stay ordered
    with engine.connect() as conn:
        columns = {c["name"] for c in inspect(conn).get_columns("mor_regstatus_devices")}
        server_columns = {c["name"] for c in inspect(conn).get_columns("mor_regstatus_servers")}
    assert {"observed_at", "flapping", "flapping_since"} <= columns
    assert {"observed_at", "listener_connected"} <= server_columns
    engine.dispose()
