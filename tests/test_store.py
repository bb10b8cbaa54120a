"""The project's own tables: versioned migrations on MariaDB and SQLite."""

from __future__ import annotations

from datetime import datetime

import pytest
from regstatus_helpers import MorDatabase
from sqlalchemy import create_engine, inspect, text

from mor_plugin import store

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
