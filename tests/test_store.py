"""The project's own tables: versioned migrations, chunked reads and bulk writes, named locks,
on MariaDB and SQLite."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from regstatus_helpers import MorDatabase
from sqlalchemy import create_engine, inspect, text

from mor_plugin import schema, store
from mor_plugin.status import Device, Notified, Transition

NOW = datetime(2026, 11, 29, 12, 0, 0)

# The tables as schema 1 created them, before history and the event listener.
SCHEMA_1 = [
    "CREATE TABLE mor_regstatus_schema (version INTEGER NOT NULL PRIMARY KEY, "
    "applied_at DATETIME NOT NULL)",
    "CREATE TABLE mor_regstatus_devices (device_id INTEGER NOT NULL PRIMARY KEY, "
    "server_id INTEGER NOT NULL, status VARCHAR(12) NOT NULL, since DATETIME NOT NULL, "
    "last_seen DATETIME, unreachable_since DATETIME, ip VARCHAR(45), port INTEGER)",
    "CREATE TABLE mor_regstatus_servers (server_id INTEGER NOT NULL PRIMARY KEY, "
    "last_run DATETIME NOT NULL, last_success DATETIME, result VARCHAR(255) NOT NULL, "
    "duration_ms INTEGER NOT NULL, peers INTEGER NOT NULL, changed INTEGER NOT NULL, "
    "n_ok INTEGER NOT NULL, n_lagged INTEGER NOT NULL, n_unreachable INTEGER NOT NULL, "
    "n_unknown INTEGER NOT NULL, n_unmonitored INTEGER NOT NULL, n_none INTEGER NOT NULL, "
    "n_wrong_server INTEGER NOT NULL, asterisk_version VARCHAR(30))",
    "CREATE TABLE mor_regstatus_wrong_server (device_id INTEGER NOT NULL, "
    "seen_on_server_id INTEGER NOT NULL, assigned_server_id INTEGER NOT NULL, "
    "peer_name VARCHAR(100) NOT NULL, reg_status VARCHAR(50) NOT NULL, ip VARCHAR(45), "
    "port INTEGER, first_seen DATETIME NOT NULL, last_seen DATETIME NOT NULL, "
    "PRIMARY KEY (device_id, seen_on_server_id))",
    "INSERT INTO mor_regstatus_schema VALUES (1, '2026-11-01 00:00:00')",
    "INSERT INTO mor_regstatus_devices VALUES (7, 1, 'ok', '2026-11-01 00:00:00', NULL, NULL, "
    "'10.0.0.7', 5060)",
    "INSERT INTO mor_regstatus_servers VALUES (1, '2026-11-01 00:00:00', '2026-11-01 00:00:00', "
    "'ok', 10, 1, 1, 1, 0, 0, 0, 0, 0, 0, '11.25.3')",
]


def upgrade_keeps_rows(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        for statement in SCHEMA_1:
            conn.execute(text(statement))
    assert store.migrate(engine, NOW) == [2, 3, 4, 5]
    assert store.migrate(engine, NOW) == []
    with engine.connect() as conn:
        assert store.schema_version(conn) == store.LATEST_VERSION == 5
        row = conn.execute(
            text("SELECT status, ip, flapping FROM mor_regstatus_devices WHERE device_id = 7")
        ).one()
        assert tuple(row) == ("ok", "10.0.0.7", 0)
        server = conn.execute(
            text(
                "SELECT asterisk_version, listener_connected, listener_wrote_at"
                " FROM mor_regstatus_servers"
            )
        ).one()
        assert tuple(server) == ("11.25.3", 0, None)
        debian = "22.10.1+dfsg+~cs6.17.60671434-1"  # 31 characters: wider than schema 1's 30
        conn.execute(text("UPDATE mor_regstatus_servers SET asterisk_version = :v"), {"v": debian})
        assert conn.execute(
            text("SELECT asterisk_version FROM mor_regstatus_servers")
        ).scalar() == (debian)
        tables = set(inspect(conn).get_table_names())
    assert {
        "mor_regstatus_history",
        "mor_regstatus_latency",
        "mor_regstatus_notified",
        "mor_regstatus_contacts",
    } <= tables
    engine.dispose()


def test_schema_1_is_upgraded_in_place_on_mariadb(mor_db: MorDatabase) -> None:
    upgrade_keeps_rows(mor_db.url)


def test_schema_1_is_upgraded_in_place_on_sqlite(sqlite_url: str) -> None:
    upgrade_keeps_rows(sqlite_url)


@pytest.mark.parametrize("backend", ["mariadb", "sqlite"])
def test_a_fresh_database_gets_every_version_once(
    backend: str, request: pytest.FixtureRequest
) -> None:
    url = (
        request.getfixturevalue("mor_db").url
        if backend == "mariadb"
        else request.getfixturevalue("sqlite_url")
    )
    engine = create_engine(url)
    assert store.migrate(engine, NOW) == [1, 2, 3, 4, 5]
    with engine.connect() as conn:
        versions = conn.execute(text("SELECT version FROM mor_regstatus_schema ORDER BY 1")).all()
    assert [v for (v,) in versions] == [1, 2, 3, 4, 5]
    engine.dispose()


def test_collectors_migrating_a_fresh_database_at_once_all_succeed(mor_db: MorDatabase) -> None:
    """Every server's first run may meet the empty database at the same moment."""
    import threading

    engines = [create_engine(mor_db.url) for _ in range(5)]
    results: list[object] = []
    start = threading.Barrier(len(engines))

    def first_run(engine: object) -> None:
        start.wait()
        try:
            results.append(store.migrate(engine, NOW))  # type: ignore[arg-type]
        except Exception as err:  # noqa: BLE001 - the test reports what went wrong
            results.append(err)

    threads = [threading.Thread(target=first_run, args=(e,)) for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results, key=len) == [[], [], [], [], [1, 2, 3, 4, 5]]  # type: ignore[arg-type]
    for engine in engines:
        engine.dispose()


def engine_for(backend: str, request: pytest.FixtureRequest) -> Any:
    """A migrated database of this test's own: MariaDB, or SQLite (the demo's)."""
    if backend == "mariadb":
        url = request.getfixturevalue("mor_db").url
    else:
        url = request.getfixturevalue("sqlite_url")
    engine = store.make_engine(url)
    store.migrate(engine, NOW)
    return engine


@pytest.mark.parametrize("backend", ["mariadb", "sqlite"])
def test_rows_beyond_one_chunk_are_each_written_and_read_once(
    backend: str, request: pytest.FixtureRequest
) -> None:
    engine = engine_for(backend, request)
    many = 2 * store.CHUNK + 1
    with engine.begin() as conn:
        store.write_notified(conn, [Notified(i, "ok", NOW, NOW, 1) for i in range(1, many + 1)])
        # a second write of some of them updates those rows in place
        store.write_notified(conn, [Notified(i, "none", NOW, NOW, 2) for i in range(1, many, 2)])
    asked = [*range(1, many + 11), 1, 2, 2]  # ten unknown ids, and repeats
    with engine.connect() as conn:
        found = store.load_notified(conn, asked)
        total = conn.execute(text("SELECT COUNT(*) FROM mor_regstatus_notified")).scalar()
    assert total == many
    assert sorted(found) == list(range(1, many + 1))
    assert found[1] == Notified(1, "none", NOW, NOW, 2)
    assert found[2] == Notified(2, "ok", NOW, NOW, 1)
    assert found[many] == Notified(many, "ok", NOW, NOW, 1)
    engine.dispose()


@pytest.mark.parametrize("backend", ["mariadb", "sqlite"])
def test_latency_samples_are_appended_until_the_hour_row_is_full(
    backend: str, request: pytest.FixtureRequest
) -> None:
    engine = engine_for(backend, request)
    with engine.begin() as conn:
        for second in range(0, 3600, 5):
            store.write_latency_samples(conn, NOW + timedelta(seconds=second), [7, 23, 8, 5])
    with engine.connect() as conn:
        query = text("SELECT device_id, samples FROM mor_regstatus_latency")
        rows = {device_id: samples for device_id, samples in conn.execute(query)}
    assert rows[7].startswith("0:23 5:23 10:23 ")
    assert rows[8].startswith("0:5 5:5 10:5 ")
    assert 1980 < len(rows[7]) <= 2000  # stopped growing once full, never refused
    engine.dispose()


def test_work_runs_without_the_named_lock_when_another_session_keeps_it(
    mor_db: MorDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    engine = store.make_engine(mor_db.url)
    lock = f"mor_regstatus_test_{mor_db.name}"  # named locks are server-wide: one of its own
    with engine.connect() as other:
        assert other.exec_driver_sql("SELECT GET_LOCK(%s, 0)", (lock,)).scalar() == 1
        answer = store.in_transaction(
            engine, lambda conn: conn.execute(text("SELECT 42")).scalar(), lock=lock, lock_timeout=1
        )
        assert answer == 42
        assert f"named lock {lock} not obtained within 1 s" in caplog.text
        other.exec_driver_sql("SELECT RELEASE_LOCK(%s)", (lock,))
    engine.dispose()


def test_the_named_lock_is_released_after_the_work(mor_db: MorDatabase) -> None:
    engine = store.make_engine(mor_db.url)
    lock = f"mor_regstatus_test_{mor_db.name}"
    held = store.in_transaction(
        engine,
        lambda conn: conn.exec_driver_sql("SELECT IS_USED_LOCK(%s)", (lock,)).scalar(),
        lock=lock,
    )
    assert held is not None
    with engine.connect() as other:
        assert other.exec_driver_sql("SELECT IS_FREE_LOCK(%s)", (lock,)).scalar() == 1
    engine.dispose()


def test_a_migration_that_another_collector_keeps_locked_fails_in_one_line(
    mor_db: MorDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store.migrations, "MIGRATE_WAIT", 1)
    engine = store.make_engine(mor_db.url)
    with engine.connect() as other:
        # the lock's name is shared with every collector version in a fleet (and, server-wide,
        # with other tests' migrations: wait for theirs)
        taken = other.exec_driver_sql("SELECT GET_LOCK('mor_regstatus_migrate', 30)").scalar()
        assert taken == 1
        with pytest.raises(store.StoreError, match="kept migrating the schema for 1 s"):
            store.migrate(engine, NOW)
        other.exec_driver_sql("SELECT RELEASE_LOCK('mor_regstatus_migrate')")
    monkeypatch.undo()
    assert store.migrate(engine, NOW) == [1, 2, 3, 4, 5]
    engine.dispose()


def test_a_value_class_and_its_table_must_agree_on_the_columns() -> None:
    from mor_plugin.store.rows import Stored

    with pytest.raises(KeyError):
        Stored(schema.notified, Transition)  # a transition has no row in that table
    with pytest.raises(ValueError):
        Stored(schema.devices, Device, ("name", "id"))  # not its leading fields
