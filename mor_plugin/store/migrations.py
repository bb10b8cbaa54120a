"""The project's own tables: versioned migrations, safe when collectors race to run them."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Callable

from sqlalchemy import func, inspect, select
from sqlalchemy.engine import Connection, Engine

from .. import schema
from .engine import StoreError, is_mysql, named_lock

#: Seconds a collector waits for another one's schema migration.
MIGRATE_WAIT = 60
#: The named lock that lets one collector at a time migrate.
_MIGRATE_LOCK = "mor_regstatus_migrate"


def _migration_1(conn: Connection) -> None:
    """The first schema: device state, server summary, wrong-server registrations."""
    for table in (schema.device_state, schema.server_state, schema.wrong_server):
        table.create(conn, checkfirst=True)


def _add_missing_columns(conn: Connection, table: Any, names: Iterable[str]) -> None:
    present = {column["name"] for column in inspect(conn).get_columns(table.name)}
    for name in names:
        if name not in present:
            column = table.c[name]
            ddl = column.type.compile(dialect=conn.dialect)
            default = f" DEFAULT {column.server_default.arg.text}" if column.server_default else ""
            null = "" if column.nullable else " NOT NULL"
            conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {name} {ddl}{null}{default}")


def _migration_2(conn: Connection) -> None:
    """History: transitions, latency samples, flapping, the event listener, webhooks."""
    _add_missing_columns(conn, schema.device_state, ("flapping", "flapping_since", "observed_at"))
    _add_missing_columns(
        conn,
        schema.server_state,
        ("listener_connected", "listener_seen", "listener_since", "observed_at"),
    )
    for table in (schema.history, schema.latency, schema.notified):
        table.create(conn, checkfirst=True)


def _migration_3(conn: Connection) -> None:
    """PJSIP: every contact of a device (the widget lists them)."""
    schema.contacts.create(conn, checkfirst=True)


def _migration_4(conn: Connection) -> None:
    """The server's full Asterisk version (Debian's strings are longer than 30)."""
    if is_mysql(conn):  # SQLite does not enforce VARCHAR lengths
        column = schema.server_state.c.asterisk_version
        ddl = column.type.compile(dialect=conn.dialect)
        conn.exec_driver_sql(
            f"ALTER TABLE {schema.server_state.name} MODIFY COLUMN asterisk_version {ddl} NULL"
        )


def _migration_5(conn: Connection) -> None:
    """When the listener last changed a server's devices (the widget's cache watches it)."""
    _add_missing_columns(conn, schema.server_state, ("listener_wrote_at",))


#: (version, migration) in order; a migration must be safe to run twice.
MIGRATIONS: tuple[tuple[int, Callable[[Connection], None]], ...] = (
    (1, _migration_1),
    (2, _migration_2),
    (3, _migration_3),
    (4, _migration_4),
    (5, _migration_5),
)
LATEST_VERSION = MIGRATIONS[-1][0]


def schema_version(conn: Connection) -> int:
    if not inspect(conn).has_table(schema.schema_version.name):
        return 0
    current = conn.execute(select(func.max(schema.schema_version.c.version))).scalar()
    return int(current or 0)


def migrate(engine: Engine, now: datetime) -> list[int]:
    """Bring the project's own tables to the latest version; returns the versions applied.

    Every server's collector may find a fresh database at the same moment: on
    MySQL a named lock lets one of them migrate while the others wait, then
    find nothing left to do.
    """
    with engine.connect() as holder, named_lock(holder, _MIGRATE_LOCK, MIGRATE_WAIT) as held:
        if not held:
            raise StoreError(
                f"another collector kept migrating the schema for {MIGRATE_WAIT} s -- see its log"
            )
        applied: list[int] = []
        with engine.begin() as conn:
            schema.schema_version.create(conn, checkfirst=True)
        for version, step in MIGRATIONS:
            with engine.begin() as conn:
                if schema_version(conn) >= version:
                    continue
                step(conn)
                conn.execute(schema.schema_version.insert().values(version=version, applied_at=now))
                applied.append(version)
        return applied


def ensure_schema(engine: Engine, now: datetime) -> list[int]:
    """Migrate when the own tables are missing or older than this code."""
    with engine.connect() as conn:
        if schema_version(conn) >= LATEST_VERSION:
            return []
    return migrate(engine, now)
