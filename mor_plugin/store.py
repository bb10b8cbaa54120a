"""The MOR database: read this server's devices, write a plan in one transaction.

MOR's ``devices`` table is only ever UPDATEd, never inserted into or altered,
and only for rows assigned to this server. Everything a run writes — the
changed ``reg_status`` values, the project's own state rows, the server's
summary — commits together or not at all, so the GUI never sees a half-written
run nor the NULL window of the legacy collector.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Optional, TypeVar

from sqlalchemy import bindparam, create_engine, delete, func, inspect, select, update
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.sql.expression import Insert

from . import schema
from .status import Device, DeviceState, ElsewhereDevice, Plan, WrongServer

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Ids per statement: keeps every packet far below MySQL's max_allowed_packet.
CHUNK = 2000
#: Rows per executemany batch (PyMySQL sends each as one multi-row INSERT).
BATCH = 5000
#: Session-private table holding a run's new reg_status values (MySQL only).
_NEW_STATUS = "mor_regstatus_new_status"
#: Seconds a collector waits for another one's schema migration.
MIGRATE_WAIT = 60
#: MySQL/MariaDB errors worth one more try: deadlock, lock wait timeout.
RETRYABLE_MYSQL_ERRORS = (1213, 1205)


class StoreError(Exception):
    """A database failure; ``str()`` is one line that says what to fix."""


@dataclass(frozen=True)
class ServerRun:
    """What a run records about itself in ``mor_regstatus_servers``."""

    server_id: int
    at: datetime
    duration_ms: int
    peers: int
    changed: int
    counts: dict[str, int]
    wrong_server: int
    asterisk_version: Optional[str]
    uptime: Optional[str]


def make_engine(url: str, *, timeout: float = 30.0, echo: bool = False) -> Engine:
    """An engine with explicit timeouts: a dead database fails a run, never hangs it."""
    connect_args: dict[str, Any] = {}
    if url.startswith("mysql"):
        connect_args = {
            "connect_timeout": 5,
            "read_timeout": int(timeout),
            "write_timeout": int(timeout),
        }
    elif url.startswith("sqlite"):
        connect_args = {"timeout": timeout}
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args, echo=echo)


def describe_db_error(err: BaseException) -> str:
    """One line for a database failure, without the SQL or the parameters."""
    orig = getattr(err, "orig", None) or err
    args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
    if len(args) >= 2 and isinstance(args[0], int):
        text = f"MySQL error {args[0]}: {args[1]}"
    else:
        text = str(orig).splitlines()[0] if str(orig) else type(orig).__name__
    return " ".join(text.split())


# --- migrations -------------------------------------------------------------


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
    _add_missing_columns(conn, schema.device_state, ("flapping", "flapping_since"))
    _add_missing_columns(
        conn, schema.server_state, ("listener_connected", "listener_seen", "listener_since")
    )
    for table in (schema.history, schema.latency, schema.notified):
        table.create(conn, checkfirst=True)


#: (version, migration) in order; a migration must be safe to run twice.
MIGRATIONS: tuple[tuple[int, Callable[[Connection], None]], ...] = (
    (1, _migration_1),
    (2, _migration_2),
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
    with engine.connect() as holder, _migration_lock(holder):
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


@contextmanager
def _migration_lock(conn: Connection) -> Iterator[None]:
    """MySQL's GET_LOCK for the duration of a migration (SQLite: one writer anyway)."""
    if not _is_mysql(conn):
        yield
        return
    got = conn.exec_driver_sql("SELECT GET_LOCK('mor_regstatus_migrate', %s)", (MIGRATE_WAIT,))
    if got.scalar() != 1:
        raise StoreError(
            f"another collector kept migrating the schema for {MIGRATE_WAIT} s -- see its log"
        )
    try:
        yield
    finally:
        conn.exec_driver_sql("SELECT RELEASE_LOCK('mor_regstatus_migrate')")
        conn.commit()


def ensure_schema(engine: Engine, now: datetime) -> list[int]:
    """Migrate when the own tables are missing or older than this code."""
    with engine.connect() as conn:
        if schema_version(conn) >= LATEST_VERSION:
            return []
    return migrate(engine, now)


# --- reading ------------------------------------------------------------------


def _streamed(conn: Connection, query: Any) -> Any:
    """Rows fetched in batches from a server-side cursor, not all held at once."""
    return conn.execution_options(stream_results=True, max_row_buffer=BATCH).execute(query)


def load_devices(conn: Connection, server_id: int) -> list[Device]:
    """This server's SIP devices (the only rows a run may write)."""
    d = schema.devices.c
    rows = _streamed(
        conn,
        select(d.id, d.name, d.reg_status).where(d.server_id == server_id, d.device_type == "SIP"),
    )
    shared = _Shared()
    return [Device(id=row[0], name=row[1], reg_status=shared(row[2])) for row in rows]


def load_states(conn: Connection, server_id: int) -> dict[int, DeviceState]:
    s = schema.device_state.c
    rows = _streamed(
        conn,
        select(
            s.device_id,
            s.server_id,
            s.status,
            s.since,
            s.last_seen,
            s.unreachable_since,
            s.ip,
            s.port,
        ).where(s.server_id == server_id),
    )
    shared = _Shared()
    return {
        row[0]: DeviceState(
            device_id=row[0],
            server_id=row[1],
            status=shared(row[2]),
            since=shared(row[3]),
            last_seen=shared(row[4]),
            unreachable_since=shared(row[5]),
            ip=row[6],
            port=row[7],
        )
        for row in rows
    }


class _Shared:
    """One object per distinct value: 100k rows hold a few hundred status strings and
    the timestamps of a few runs, so sharing them saves tens of MB on large servers."""

    def __init__(self) -> None:
        self._seen: dict[Any, Any] = {}

    def __call__(self, value: T) -> T:
        if value is None:
            return value
        return self._seen.setdefault(value, value)  # type: ignore[no-any-return]


def find_devices_elsewhere(
    conn: Connection, names: Sequence[str], server_id: int
) -> list[ElsewhereDevice]:
    """SIP devices with these names that MOR assigns to another server."""
    d = schema.devices.c
    query = select(d.id, d.name, d.server_id).where(
        d.name.in_(bindparam("names", expanding=True)),
        d.server_id != server_id,
        d.device_type == "SIP",
    )
    found: list[ElsewhereDevice] = []
    for chunk in _chunks(sorted(set(names)), CHUNK):
        for row in conn.execute(query, {"names": chunk}):
            found.append(ElsewhereDevice(id=row[0], name=row[1], server_id=row[2]))
    return found


def ami_credentials_from_servers(
    engine: Engine, server_id: int
) -> Optional[tuple[str, str, Optional[int]]]:
    """(username, secret, port) of this server's MOR ``servers`` row, if it has one."""
    s = schema.servers.c
    with engine.connect() as conn:
        row = conn.execute(
            select(s.ami_username, s.ami_secret, s.ami_port).where(s.id == server_id)
        ).first()
    if row is None or not row[0]:
        return None
    port = int(row[2]) if row[2] and str(row[2]).strip().isdigit() else None
    return row[0], row[1] or "", port


# --- writing ------------------------------------------------------------------


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _upsert(conn: Connection, table: Any, rows: list[dict[str, Any]], keys: Iterable[str]) -> None:
    """INSERT ... ON DUPLICATE KEY UPDATE (MySQL) or ON CONFLICT DO UPDATE (SQLite)."""
    if not rows:
        return
    key_set = set(keys)
    stmt: Insert
    if conn.dialect.name in ("mysql", "mariadb"):
        my = mysql.insert(table)
        stmt = my.on_duplicate_key_update({c: my.inserted[c] for c in rows[0] if c not in key_set})
    else:
        lite = sqlite.insert(table)
        stmt = lite.on_conflict_do_update(
            index_elements=list(key_set),
            set_={c: lite.excluded[c] for c in rows[0] if c not in key_set},
        )
    for chunk in _chunks(rows, CHUNK):
        conn.execute(stmt, list(chunk))


def _is_mysql(conn: Connection) -> bool:
    return conn.dialect.name in ("mysql", "mariadb")


def write_reg_statuses(
    conn: Connection, server_id: int, changes: Sequence[tuple[int, Optional[str]]]
) -> int:
    """Set ``devices.reg_status`` of the changed devices; returns the rows written.

    The ``server_id`` guard leaves alone a device that the GUI moved to another
    server since it was read.
    """
    if not changes:
        return 0
    if _is_mysql(conn):
        return _write_reg_statuses_joined(conn, server_id, changes)
    return _write_reg_statuses_grouped(conn, server_id, changes)


def _write_reg_statuses_joined(
    conn: Connection, server_id: int, changes: Sequence[tuple[int, Optional[str]]]
) -> int:
    """MySQL/MariaDB: load the new values into a temporary table, then one UPDATE ... JOIN.

    A few multi-row INSERTs (PyMySQL batches ``executemany``) and one UPDATE
    instead of a round trip per device: 100k devices in about a second.
    Temporary tables live in this session only and do not commit the transaction.
    """
    conn.exec_driver_sql(f"DROP TEMPORARY TABLE IF EXISTS {_NEW_STATUS}")
    conn.exec_driver_sql(
        f"CREATE TEMPORARY TABLE {_NEW_STATUS} "
        "(id INT NOT NULL PRIMARY KEY, reg_status VARCHAR(50) NULL)"
    )
    for chunk in _chunks(changes, BATCH):
        conn.exec_driver_sql(
            f"INSERT INTO {_NEW_STATUS} (id, reg_status) VALUES (%s, %s)", list(chunk)
        )
    result = conn.exec_driver_sql(
        f"UPDATE devices d JOIN {_NEW_STATUS} n ON d.id = n.id "
        "SET d.reg_status = n.reg_status WHERE d.server_id = %s",
        (server_id,),
    )
    conn.exec_driver_sql(f"DROP TEMPORARY TABLE {_NEW_STATUS}")
    return int(result.rowcount)


def _write_reg_statuses_grouped(
    conn: Connection, server_id: int, changes: Sequence[tuple[int, Optional[str]]]
) -> int:
    """Any other database (SQLite for the demo): one UPDATE per distinct value and chunk.

    Statuses repeat a lot (every ``UNREACHABLE``, every ``OK (23 ms)``), so this
    needs a few hundred statements for 100k devices, each cached by SQLAlchemy.
    """
    d = schema.devices.c
    by_value: dict[Optional[str], list[int]] = {}
    for device_id, value in changes:
        by_value.setdefault(value, []).append(device_id)
    set_value = (
        update(schema.devices)
        .where(d.id.in_(bindparam("ids", expanding=True)), d.server_id == bindparam("sid"))
        .values(reg_status=bindparam("value"))
    )
    written = 0
    for value, ids in by_value.items():
        for chunk in _chunks(sorted(ids), CHUNK):
            result = conn.execute(set_value, {"ids": list(chunk), "sid": server_id, "value": value})
            written += result.rowcount
    return written


_STATE_COLUMNS = (
    "device_id",
    "server_id",
    "status",
    "since",
    "last_seen",
    "unreachable_since",
    "ip",
    "port",
)


def _state_tuple(state: DeviceState) -> tuple[Any, ...]:
    return (
        state.device_id,
        state.server_id,
        state.status,
        state.since,
        state.last_seen,
        state.unreachable_since,
        state.ip,
        state.port,
    )


def write_states(conn: Connection, states: Sequence[DeviceState]) -> None:
    """Insert or update the project's rows for these devices.

    On MySQL a plain ``INSERT ... ON DUPLICATE KEY UPDATE`` through the driver:
    PyMySQL turns ``executemany`` into multi-row statements, and tuples skip
    SQLAlchemy's per-row parameter processing (a cold run writes 100k rows).
    """
    if not states:
        return
    if not _is_mysql(conn):
        rows = [dict(zip(_STATE_COLUMNS, _state_tuple(s))) for s in states]
        _upsert(conn, schema.device_state, rows, ("device_id",))
        return
    columns = ", ".join(_STATE_COLUMNS)
    updates = ", ".join(f"{c} = VALUES({c})" for c in _STATE_COLUMNS[1:])
    statement = (
        f"INSERT INTO {schema.device_state.name} ({columns}) "
        f"VALUES ({', '.join(['%s'] * len(_STATE_COLUMNS))}) ON DUPLICATE KEY UPDATE {updates}"
    )
    for chunk in _chunks(states, BATCH):
        conn.exec_driver_sql(statement, [_state_tuple(s) for s in chunk])


def _write_wrong_server(
    conn: Connection, server_id: int, records: Sequence[WrongServer], now: datetime
) -> None:
    """Replace this server's wrong-server rows, keeping when each was first seen."""
    w = schema.wrong_server.c
    existing = {
        row[0]: row[1]
        for row in conn.execute(
            select(w.device_id, w.first_seen).where(w.seen_on_server_id == server_id)
        )
    }
    current = {record.device_id for record in records}
    gone = sorted(set(existing) - current)
    for chunk in _chunks(gone, CHUNK):
        conn.execute(
            delete(schema.wrong_server).where(
                w.seen_on_server_id == server_id, w.device_id.in_(list(chunk))
            )
        )
    rows = [
        {
            "device_id": r.device_id,
            "seen_on_server_id": server_id,
            "assigned_server_id": r.assigned_server_id,
            "peer_name": r.peer_name[:100],
            "reg_status": r.reg_status,
            "ip": r.ip,
            "port": r.port,
            "first_seen": existing.get(r.device_id, now),
            "last_seen": now,
        }
        for r in records
    ]
    _upsert(conn, schema.wrong_server, rows, ("device_id", "seen_on_server_id"))


def _write_server_run(conn: Connection, run: ServerRun) -> None:
    row: dict[str, Any] = {
        "server_id": run.server_id,
        "last_run": run.at,
        "last_success": run.at,
        "result": "ok",
        "duration_ms": run.duration_ms,
        "peers": run.peers,
        "changed": run.changed,
        "n_wrong_server": run.wrong_server,
        "asterisk_version": (run.asterisk_version or None),
    }
    for kind, column in schema.COUNT_COLUMNS.items():
        row[column] = run.counts.get(kind, 0)
    _upsert(conn, schema.server_state, [row], ("server_id",))
    values = {}
    if run.asterisk_version:
        values["version"] = run.asterisk_version[:30]
    if run.uptime:
        values["uptime"] = run.uptime[:150]
    if values:
        conn.execute(
            update(schema.servers).where(schema.servers.c.id == run.server_id).values(**values)
        )


def write_plan(
    conn: Connection,
    server_id: int,
    plan: Plan,
    wrong: Sequence[WrongServer],
    now: datetime,
    run: ServerRun,
) -> int:
    """Everything one run writes, inside the caller's transaction; returns devices changed."""
    changed = write_reg_statuses(conn, server_id, plan.reg_status_changes)
    write_states(conn, plan.state_changes)
    s = schema.device_state.c
    for chunk in _chunks(plan.forgotten_device_ids, CHUNK):
        conn.execute(
            delete(schema.device_state).where(
                s.server_id == server_id, s.device_id.in_(list(chunk))
            )
        )
    _write_wrong_server(conn, server_id, wrong, now)
    _write_server_run(conn, run)
    return changed


def record_failure(engine: Engine, server_id: int, now: datetime, message: str) -> None:
    """Note a failed run in the server's summary row (best effort, its own transaction)."""
    st = schema.server_state.c
    try:
        with engine.begin() as conn:
            if not inspect(conn).has_table(schema.server_state.name):
                return
            result = conn.execute(
                update(schema.server_state)
                .where(st.server_id == server_id)
                .values(last_run=now, result=message[:255])
            )
            if result.rowcount == 0:
                conn.execute(
                    schema.server_state.insert().values(
                        server_id=server_id,
                        last_run=now,
                        last_success=None,
                        result=message[:255],
                        duration_ms=0,
                        peers=0,
                        changed=0,
                    )
                )
    except SQLAlchemyError as err:
        log.warning("could not record the failure in the database: %s", describe_db_error(err))


def in_transaction(engine: Engine, work: Callable[[Connection], T]) -> T:
    """Run ``work`` in one transaction; a deadlock or lock-wait timeout gets one more try."""
    for attempt in (1, 2):
        try:
            with engine.begin() as conn:
                return work(conn)
        except DBAPIError as err:
            code = getattr(getattr(err, "orig", None), "args", (None,))[0]
            if attempt == 1 and code in RETRYABLE_MYSQL_ERRORS:
                log.warning("transaction retried after %s", describe_db_error(err))
                continue
            raise
    raise AssertionError("unreachable")  # pragma: no cover
