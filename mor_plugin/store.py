"""The MOR database: read this server's devices, write a plan in one transaction.

MOR's ``devices`` table is only ever UPDATEd, never inserted into or altered,
and only for rows assigned to this server. Everything a run writes — the
changed ``reg_status`` values, the project's own state rows, the server's
summary — commits together or not at all, so the GUI never sees a half-written
run nor the NULL window of the legacy collector.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Optional, TypeVar

from sqlalchemy import bindparam, case, create_engine, delete, func, inspect, select, update
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.sql.expression import Insert

from . import schema
from .pjsip import Contact, round_trip_ms
from .plans import (
    BatchInputs,
    BatchPlan,
    Listing,
    PollInputs,
    PollPlan,
    Rules,
    listed_elsewhere_candidates,
)
from .status import Device, DeviceState, ElsewhereDevice, Notified, Plan, Transition, WrongServer

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
    #: when the AMI list completed (the run's observation time)
    observed_at: Optional[datetime] = None


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
    code = args[0] if len(args) >= 2 and isinstance(args[0], int) else None
    if code is None:
        text = str(orig).splitlines()[0] if str(orig) else type(orig).__name__
    elif code in _LOST_CONNECTION:
        text = f"connection to the database lost{_during(err)} (MySQL error {code})"
    elif code <= 0:
        # PyMySQL's error 0: the socket was already closed, or a reply cut short
        text = f"connection to the database lost{_during(err)}: {args[1] or 'no reply'}"
    else:
        text = f"MySQL error {code}: {args[1]}"
    return " ".join(text.split())


#: Client errors of a connection that broke: gone away, lost during a query, cannot read.
_LOST_CONNECTION = frozenset({2006, 2013, 2055})


def _during(err: BaseException) -> str:
    """`` during INSERT INTO x`` from the failed statement's first words (never its values)."""
    words = str(getattr(err, "statement", None) or "").split()[:3]
    if not words:
        return ""
    if words[0].upper() in ("INSERT", "DELETE") and len(words) == 3:
        return " during " + " ".join(words)
    return f" during {words[0].upper()}" if words[0].isalpha() else ""


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
    if _is_mysql(conn):  # SQLite does not enforce VARCHAR lengths
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


def _state_query() -> Any:
    """The kept state's columns, in the order ``_state_from_row`` reads them."""
    s = schema.device_state.c
    return select(
        s.device_id,
        s.server_id,
        s.status,
        s.since,
        s.last_seen,
        s.unreachable_since,
        s.ip,
        s.port,
        s.flapping,
        s.flapping_since,
        s.observed_at,
    )


def load_states(conn: Connection, server_id: int) -> dict[int, DeviceState]:
    s = schema.device_state.c
    rows = _streamed(conn, _state_query().where(s.server_id == server_id))
    shared = _Shared()
    return {row[0]: _state_from_row(row, shared) for row in rows}


def _state_from_row(row: Any, shared: Callable[[Any], Any]) -> DeviceState:
    return DeviceState(
        device_id=row[0],
        server_id=row[1],
        status=shared(row[2]),
        since=shared(row[3]),
        last_seen=shared(row[4]),
        unreachable_since=shared(row[5]),
        ip=row[6],
        port=row[7],
        flapping=bool(row[8]),
        flapping_since=row[9],
        observed_at=shared(row[10]),
    )


def load_devices_named(conn: Connection, server_id: int, names: Iterable[str]) -> list[Device]:
    """This server's SIP devices with these peer names, with ``qualify`` (the listener's read)."""
    d = schema.devices.c
    query = select(d.id, d.name, d.reg_status, d.qualify).where(
        d.name.in_(bindparam("names", expanding=True)),
        d.server_id == server_id,
        d.device_type == "SIP",
    )
    found: list[Device] = []
    for chunk in _chunks(names_mor_can_hold(names), CHUNK):
        for row in conn.execute(query, {"names": list(chunk)}):
            found.append(Device(id=row[0], name=row[1], reg_status=row[2], qualify=row[3]))
    return found


def load_states_of(conn: Connection, device_ids: Iterable[int]) -> dict[int, DeviceState]:
    """The kept state of these devices (whatever server wrote it)."""
    s = schema.device_state.c
    query = _state_query().where(s.device_id.in_(bindparam("ids", expanding=True)))
    states: dict[int, DeviceState] = {}
    for chunk in _chunks(sorted(set(device_ids)), CHUNK):
        for row in conn.execute(query, {"ids": list(chunk)}):
            states[row[0]] = _state_from_row(row, lambda value: value)
    return states


def load_recent_transitions(
    conn: Connection, server_id: int, since: datetime
) -> dict[int, list[datetime]]:
    """Transition times after ``since`` of this server's devices (for the flapping rule).

    A range on the indexed ``at``: a few rows normally, one per changed device in
    an outage.
    """
    h = schema.history.c
    recent: dict[int, list[datetime]] = {}
    rows = conn.execute(
        select(h.device_id, h.at).where(h.at > since, h.server_id == server_id).order_by(h.at)
    )
    for device_id, at in rows:
        recent.setdefault(device_id, []).append(at)
    return recent


def count_recent_transitions(conn: Connection, server_id: int, since: datetime) -> dict[int, int]:
    """How many transitions after ``since`` each of this server's devices has (the poll's
    flapping input: counts, so that an outage's tens of thousands cost little memory)."""
    h = schema.history.c
    rows = conn.execute(
        select(h.device_id, func.count())
        .where(h.at > since, h.server_id == server_id)
        .group_by(h.device_id)
    )
    return {device_id: int(count) for device_id, count in rows}


def poll_observed_at(conn: Connection, server_id: int) -> Optional[datetime]:
    """When the last successful poll of this server completed its AMI list."""
    st = schema.server_state.c
    value = conn.execute(select(st.observed_at).where(st.server_id == server_id)).scalar()
    return value if isinstance(value, datetime) else None


def last_success(conn: Connection, server_id: int) -> Optional[datetime]:
    """When this server's last successful poll ran, if one did."""
    st = schema.server_state.c
    value = conn.execute(select(st.last_success).where(st.server_id == server_id)).scalar()
    return value if isinstance(value, datetime) else None


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
    for chunk in _chunks(names_mor_can_hold(names), CHUNK):
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
        # the SQLite dialect only for the demo's database: a cron run on MySQL never loads it
        from sqlalchemy.dialects import sqlite

        lite = sqlite.insert(table)
        stmt = lite.on_conflict_do_update(
            index_elements=list(key_set),
            set_={c: lite.excluded[c] for c in rows[0] if c not in key_set},
        )
    for chunk in _chunks(rows, CHUNK):
        conn.execute(stmt, list(chunk))


def _is_mysql(conn: Connection) -> bool:
    return conn.dialect.name in ("mysql", "mariadb")


def _insert_rows(conn: Connection, head: str, rows: Sequence[Sequence[Any]], tail: str = "") -> int:
    """MySQL: ``head VALUES (...),(...) tail`` in batches of ``BATCH`` rows; returns rows affected.

    Big runs write 100k rows of ints, short strings and times: turning each value
    into SQL here (strings through the driver's own quoting, each distinct time
    once) costs a third of what PyMySQL's generic per-value quoting does.
    """
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    literal = _sql_literal(dbapi.escape)
    affected = 0
    for chunk in _chunks(rows, BATCH):
        values = ",".join("(" + ",".join(map(literal, row)) + ")" for row in chunk)
        # through SQLAlchemy, statement text as it is: its errors are handled (and a lost
        # connection invalidated) as every other statement's are
        result = conn.exec_driver_sql(f"{head} VALUES {values} {tail}", execution_options=_VERBATIM)
        affected += result.rowcount
    return affected


#: A statement with its values already in it: the driver must not look for ``%s``.
_VERBATIM: dict[str, Any] = {"no_parameters": True}


def _sql_literal(quote: Callable[[str], str]) -> Callable[[Any], str]:
    """A value as a MySQL literal: NULL, numbers, strings quoted by the driver, times."""
    times: dict[datetime, str] = {}

    def literal(value: Any) -> str:
        kind = type(value)
        if value is None:
            return "NULL"
        if kind is int:
            return str(value)
        if kind is str:
            return quote(value)  # PyMySQL's own quoting, aware of NO_BACKSLASH_ESCAPES
        if kind is bool:
            return "1" if value else "0"
        if kind is datetime:
            text = times.get(value)
            if text is None:
                text = times[value] = "'" + value.isoformat(sep=" ") + "'"
            return text
        raise TypeError(f"no SQL literal for a {kind.__name__}")

    return literal


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

    A few multi-row INSERTs and one UPDATE
    instead of a round trip per device: 100k devices in about a second.
    Temporary tables live in this session only and do not commit the transaction.
    """
    conn.exec_driver_sql(f"DROP TEMPORARY TABLE IF EXISTS {_NEW_STATUS}")
    conn.exec_driver_sql(
        f"CREATE TEMPORARY TABLE {_NEW_STATUS} "
        "(id INT NOT NULL PRIMARY KEY, reg_status VARCHAR(50) NULL)"
    )
    _insert_rows(conn, f"INSERT INTO {_NEW_STATUS} (id, reg_status)", changes)
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
    "flapping",
    "flapping_since",
    "observed_at",
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
        state.flapping,
        state.flapping_since,
        state.observed_at,
    )


def write_states(conn: Connection, states: Sequence[DeviceState]) -> None:
    """Insert or update the project's rows for these devices.

    On MySQL multi-row ``INSERT ... ON DUPLICATE KEY UPDATE`` statements built by
    ``_insert_rows`` (a cold run writes 100k rows).
    """
    if not states:
        return
    if not _is_mysql(conn):
        rows = [dict(zip(_STATE_COLUMNS, _state_tuple(s))) for s in states]
        _upsert(conn, schema.device_state, rows, ("device_id",))
        return
    columns = ", ".join(_STATE_COLUMNS)
    updates = ", ".join(f"{c} = VALUES({c})" for c in _STATE_COLUMNS[1:])
    _insert_rows(
        conn,
        f"INSERT INTO {schema.device_state.name} ({columns})",
        [_state_tuple(state) for state in states],
        f"ON DUPLICATE KEY UPDATE {updates}",
    )


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
            "peer_name": fit(w.peer_name, r.peer_name),
            "reg_status": r.reg_status,
            "ip": r.ip,
            "port": r.port,
            "first_seen": existing.get(r.device_id, now),
            "last_seen": now,
        }
        for r in records
    ]
    _upsert(conn, schema.wrong_server, rows, ("device_id", "seen_on_server_id"))


def fit(column: Any, value: Optional[str]) -> Optional[str]:
    """``value`` as the column can hold it: cut to its declared length, and in MOR's own
    tables (``utf8``, three bytes a character at most) with U+FFFD for any character
    beyond the BMP. A long or exotic text from Asterisk is stored as far as it fits and
    never fails the write (MySQL's strict mode refuses it whole)."""
    if value is None:
        return value
    if column.table.metadata is schema.mor_metadata and not _fits_utf8mb3(value):
        value = _BEYOND_BMP.sub("\ufffd", value)
    length = getattr(column.type, "length", None)
    return value if length is None else value[:length]


#: Characters that MySQL's three-byte ``utf8`` (MOR's tables) cannot store.
_BEYOND_BMP = re.compile("[\U00010000-\U0010ffff]")


def _fits_utf8mb3(text: str) -> bool:
    return text.isascii() or _BEYOND_BMP.search(text) is None


def names_mor_can_hold(names: Iterable[str]) -> list[str]:
    """The distinct ``names`` that a row of MOR's ``devices`` could carry, sorted.

    A peer name longer than ``devices.name`` or with a character beyond the BMP
    (``devices`` is ``utf8``) matches no device; in a query it would only make MariaDB
    refuse the statement ("Illegal mix of collations").
    """
    length: int = getattr(schema.devices.c.name.type, "length")  # noqa: B009 - String(100)
    return sorted({n for n in names if len(n) <= length and _fits_utf8mb3(n)})


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
        "asterisk_version": fit(
            schema.server_state.c.asterisk_version, run.asterisk_version or None
        ),
        "observed_at": run.observed_at or run.at,
    }
    for kind, column in schema.COUNT_COLUMNS.items():
        row[column] = run.counts.get(kind, 0)
    _upsert(conn, schema.server_state, [row], ("server_id",))
    values = {}
    if run.asterisk_version:
        values["version"] = fit(schema.servers.c.version, run.asterisk_version)
    if run.uptime:
        values["uptime"] = fit(schema.servers.c.uptime, run.uptime)
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
    write_history(conn, plan.transitions)
    _write_wrong_server(conn, server_id, wrong, now)
    _write_server_run(conn, run)
    return changed


def write_event_plan(conn: Connection, server_id: int, plan: Plan, now: datetime) -> int:
    """What a batch of PeerStatus events changes, inside the caller's transaction."""
    changed = write_reg_statuses(conn, server_id, plan.reg_status_changes)
    write_states(conn, plan.state_changes)
    write_history(conn, plan.transitions)
    if changed or plan.state_changes:
        # in the same transaction: whoever sees the devices' new rows sees this too
        conn.execute(
            update(schema.server_state)
            .where(schema.server_state.c.server_id == server_id)
            .values(listener_wrote_at=now)
        )
    return changed


_HISTORY_COLUMNS = (
    "device_id",
    "server_id",
    "at",
    "from_status",
    "to_status",
    "reg_status",
    "latency_ms",
    "source",
)


def write_history(conn: Connection, transitions: Sequence[Transition]) -> None:
    """Append one ``mor_regstatus_history`` row per change of bullet colour."""
    if not transitions:
        return
    rows = [
        (
            t.device_id,
            t.server_id,
            t.at,
            t.from_status,
            t.to_status,
            t.reg_status,
            t.latency_ms,
            t.source,
        )
        for t in transitions
    ]
    if _is_mysql(conn):
        _insert_rows(
            conn, f"INSERT INTO {schema.history.name} ({', '.join(_HISTORY_COLUMNS)})", rows
        )
        return
    for chunk in _chunks(rows, CHUNK):
        conn.execute(schema.history.insert(), [dict(zip(_HISTORY_COLUMNS, row)) for row in chunk])


# --- latency samples and purging ----------------------------------------------------

#: At most one latency sample per device this often (seconds).
LATENCY_EVERY = 300
#: Hours of latency samples kept.
LATENCY_HOURS = 24
#: A row's samples stop growing here (the column holds 2000 characters).
_SAMPLES_FULL = 1980
#: Rows per purge statement: short statements, short locks.
PURGE_CHUNK = 5000


def latency_due(previous_run: Optional[datetime], now: datetime) -> bool:
    """Whether this poll samples latencies: the first poll in each 5-minute slot does."""
    if previous_run is None:
        return True
    slot = LATENCY_EVERY
    return int(previous_run.timestamp()) // slot != int(now.timestamp()) // slot


def write_latency_samples(conn: Connection, at: datetime, samples: Sequence[int]) -> int:
    """Append ``<second of the hour>:<ms>`` to each device's row for the hour of ``at``.

    ``samples`` is flat: device_id, ms, device_id, ms, ... One multi-row upsert per
    batch; returns the samples written.
    """
    if not samples:
        return 0
    hour = at.replace(minute=0, second=0, microsecond=0)
    offset = int((at - hour).total_seconds())
    table = schema.latency.name
    pairs = len(samples) // 2
    if _is_mysql(conn):
        rows = [(samples[i], hour, f"{offset}:{samples[i + 1]}") for i in range(0, pairs * 2, 2)]
        _insert_rows(
            conn,
            f"INSERT INTO {table} (device_id, hour, samples)",
            rows,
            f"ON DUPLICATE KEY UPDATE samples = IF(CHAR_LENGTH(samples) > {_SAMPLES_FULL}, "
            "samples, CONCAT(samples, ' ', VALUES(samples)))",
        )
        return pairs
    statement = (
        f"INSERT INTO {table} (device_id, hour, samples) VALUES (?, ?, ?) "
        "ON CONFLICT (device_id, hour) DO UPDATE SET samples = CASE WHEN "
        f"length(samples) > {_SAMPLES_FULL} THEN samples "
        "ELSE samples || ' ' || excluded.samples END"
    )
    hour_value = hour.strftime("%Y-%m-%d %H:%M:%S.000000")  # SQLAlchemy's format
    step = BATCH * 2
    for start in range(0, pairs * 2, step):
        chunk = samples[start : start + step]
        batch = [
            (chunk[i], hour_value, f"{offset}:{chunk[i + 1]}") for i in range(0, len(chunk), 2)
        ]
        conn.exec_driver_sql(statement, batch)
    return pairs


def purge_old(engine: Engine, now: datetime, history_days: float) -> tuple[int, int]:
    """Delete history older than ``history_days`` and latency hours older than 24 h.

    Cheap when there is nothing to do (one index lookup per table), chunked when
    there is (each chunk its own short transaction). Returns (history, latency)
    rows deleted.
    """
    h, lat = schema.history.c, schema.latency.c
    history_cutoff = now - timedelta(days=history_days)
    latency_cutoff = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=LATENCY_HOURS)
    deleted = []
    for table, column, cutoff in (
        (schema.history, h.at, history_cutoff),
        (schema.latency, lat.hour, latency_cutoff),
    ):
        total = 0
        with engine.connect() as conn:
            oldest = conn.execute(select(func.min(column))).scalar()
        if oldest is not None and oldest < cutoff:
            while True:
                with engine.begin() as conn:
                    if _is_mysql(conn):
                        result = conn.execute(
                            delete(table)
                            .where(column < cutoff)
                            .with_dialect_options(mysql_limit=PURGE_CHUNK)
                        )
                    else:
                        result = conn.execute(delete(table).where(column < cutoff))
                total += result.rowcount
                if result.rowcount < PURGE_CHUNK:
                    break
        deleted.append(total)
    return deleted[0], deleted[1]


def record_failure(engine: Engine, server_id: int, now: datetime, message: str) -> None:
    """Note a failed run in the server's summary row (best effort, its own transaction)."""
    st = schema.server_state.c
    try:
        with engine.begin() as conn:
            if not inspect(conn).has_table(schema.server_state.name):
                return
            _update_server_row(
                conn,
                server_id,
                update(schema.server_state)
                .where(st.server_id == server_id)
                .values(last_run=now, result=message[:255]),
                last_run=now,
                result=message[:255],
            )
    except SQLAlchemyError as err:
        log.warning("could not record the failure in the database: %s", describe_db_error(err))


# --- the event listener, notifications, metrics ----------------------------------


def write_listener_state(engine: Engine, server_id: int, connected: bool, now: datetime) -> None:
    """Record the listener's heartbeat; ``listener_since`` moves when ``connected`` flips.

    Creates the server's summary row if no poll has written one yet.
    """
    st = schema.server_state.c
    flipped = (st.listener_connected != connected) | st.listener_since.is_(None)
    statement = (
        update(schema.server_state)
        .where(st.server_id == server_id)
        # MySQL assigns left to right: listener_since must see the old listener_connected
        .ordered_values(
            (st.listener_since, case((flipped, now), else_=st.listener_since)),
            (st.listener_connected, connected),
            (st.listener_seen, now),
        )
    )
    with engine.begin() as conn:
        _update_server_row(
            conn,
            server_id,
            statement,
            last_run=now,
            result="no poll yet",
            listener_connected=connected,
            listener_seen=now,
            listener_since=now,
        )


def _update_server_row(conn: Connection, server_id: int, statement: Any, **bare: Any) -> None:
    """Run ``statement``, an UPDATE of the server's summary row; when no successful poll has
    written that row yet, create it from ``bare`` instead. If another writer (the poll, the
    listener) creates it at the same moment, theirs stands and ``statement`` updates it."""
    if conn.execute(statement).rowcount:
        return
    try:
        with conn.begin_nested():
            conn.execute(
                schema.server_state.insert().values(
                    server_id=server_id,
                    last_success=None,
                    duration_ms=0,
                    peers=0,
                    changed=0,
                    **bare,
                )
            )
    except IntegrityError:
        conn.execute(statement)


@dataclass(frozen=True)
class AlertDevice:
    """What a webhook message says about a device."""

    id: int
    name: str
    user_id: int
    reg_status: Optional[str]


def alert_devices(
    conn: Connection, device_ids: Iterable[int], user_ids: Sequence[int], only_ids: Sequence[int]
) -> dict[int, AlertDevice]:
    """Those of ``device_ids`` that a notification rule matches (owner or device id)."""
    d = schema.devices.c
    rule = d.user_id.in_(list(user_ids)) | d.id.in_(list(only_ids))
    query = select(d.id, d.name, d.user_id, d.reg_status).where(
        d.id.in_(bindparam("ids", expanding=True)), rule
    )
    found: dict[int, AlertDevice] = {}
    for chunk in _chunks(sorted(set(device_ids)), CHUNK):
        for row in conn.execute(query, {"ids": list(chunk)}):
            found[row[0]] = AlertDevice(row[0], row[1], row[2], row[3])
    return found


def load_notified(conn: Connection, device_ids: Iterable[int]) -> dict[int, Notified]:
    n = schema.notified.c
    query = select(n.device_id, n.last_status, n.last_sent, n.window_start, n.sent_in_window).where(
        n.device_id.in_(bindparam("ids", expanding=True))
    )
    found: dict[int, Notified] = {}
    for chunk in _chunks(sorted(set(device_ids)), CHUNK):
        for row in conn.execute(query, {"ids": list(chunk)}):
            found[row[0]] = Notified(row[0], row[1], row[2], row[3], row[4])
    return found


def notified_with_status(conn: Connection, server_id: int) -> list[tuple[Notified, str]]:
    """Every dampening row of this server's devices, with the device's current bullet."""
    n, s = schema.notified.c, schema.device_state.c
    rows = conn.execute(
        select(n.device_id, n.last_status, n.last_sent, n.window_start, n.sent_in_window, s.status)
        .join_from(schema.notified, schema.device_state, n.device_id == s.device_id)
        .where(s.server_id == server_id)
    )
    return [(Notified(r[0], r[1], r[2], r[3], r[4]), r[5]) for r in rows]


def write_notified(conn: Connection, rows: Sequence[Notified]) -> None:
    _upsert(
        conn,
        schema.notified,
        [
            {
                "device_id": r.device_id,
                "last_status": r.last_status,
                "last_sent": r.last_sent,
                "window_start": r.window_start,
                "sent_in_window": r.sent_in_window,
            }
            for r in rows
        ],
        ("device_id",),
    )


@dataclass(frozen=True)
class ServerMetrics:
    """The aggregates the textfile exports for one server."""

    server_id: int
    counts: dict[str, int]
    flapping: int
    last_run: Optional[datetime]
    last_success: Optional[datetime]
    result: Optional[str]
    duration_ms: int
    peers: int
    wrong_server: int
    listener_connected: bool
    listener_seen: Optional[datetime]


def server_metrics(conn: Connection, server_id: int) -> ServerMetrics:
    st, s = schema.server_state.c, schema.device_state.c
    row = conn.execute(select(schema.server_state).where(st.server_id == server_id)).first()
    flapping = conn.execute(
        select(func.count()).where(s.server_id == server_id, s.flapping.is_(True))
    ).scalar()
    values = row._mapping if row is not None else {}
    return ServerMetrics(
        server_id=server_id,
        counts={kind: int(values.get(col) or 0) for kind, col in schema.COUNT_COLUMNS.items()},
        flapping=int(flapping or 0),
        last_run=values.get("last_run"),
        last_success=values.get("last_success"),
        result=values.get("result"),
        duration_ms=int(values.get("duration_ms") or 0),
        peers=int(values.get("peers") or 0),
        wrong_server=int(values.get("n_wrong_server") or 0),
        listener_connected=bool(values.get("listener_connected")),
        listener_seen=values.get("listener_seen"),
    )


def write_lock_name(server_id: int) -> str:
    """The MySQL named lock that the poll and the event listener of a server share."""
    return f"mor_regstatus_write_{server_id}"


def in_transaction(
    engine: Engine,
    work: Callable[[Connection], T],
    *,
    lock: Optional[str] = None,
    lock_timeout: float = 30.0,
) -> T:
    """Run ``work`` in one transaction; a deadlock or lock-wait timeout gets one more try.

    With ``lock`` (MySQL/MariaDB) the transaction runs under that named lock
    (``GET_LOCK``), taken before the transaction's first read: the poll and the
    event listener of one server then never interleave, and each reads what the
    other committed last. A lock not obtained within ``lock_timeout`` is logged
    and the work runs anyway (the observation-time rule still guards each row).
    """
    for attempt in (1, 2):
        try:
            with engine.connect() as conn:
                locked = _get_lock(conn, lock, lock_timeout)
                try:
                    with conn.begin():
                        return work(conn)
                finally:
                    if locked:
                        _release_lock(conn, lock or "")
        except DBAPIError as err:
            code = getattr(getattr(err, "orig", None), "args", (None,))[0]
            if attempt == 1 and code in RETRYABLE_MYSQL_ERRORS:
                log.warning("transaction retried after %s", describe_db_error(err))
                continue
            raise
    raise AssertionError("unreachable")  # pragma: no cover


def _get_lock(conn: Connection, name: Optional[str], timeout: float) -> bool:
    if name is None or not _is_mysql(conn):
        return False
    got = conn.exec_driver_sql("SELECT GET_LOCK(%s, %s)", (name, max(0, int(timeout)))).scalar()
    conn.commit()  # end the implicit transaction: the work's snapshot starts after the lock
    if got != 1:
        log.warning("named lock %s not obtained within %g s; writing without it", name, timeout)
        return False
    return True


def _release_lock(conn: Connection, name: str) -> None:
    try:
        conn.exec_driver_sql("SELECT RELEASE_LOCK(%s)", (name,))
        conn.commit()
    except SQLAlchemyError as err:  # the session is gone, and its lock with it
        log.debug("RELEASE_LOCK failed: %s", describe_db_error(err))


# --- PJSIP contacts (schema 3) ---------------------------------------------------


def load_qualify(conn: Connection, server_id: int) -> dict[str, Optional[str]]:
    """``devices.qualify`` by name of this server's SIP devices (the PJSIP limits).

    A name that several devices share keeps the first one's value.
    """
    d = schema.devices.c
    rows = conn.execute(
        select(d.name, d.qualify).where(d.server_id == server_id, d.device_type == "SIP")
    ).all()
    shared = _Shared()
    qualify: dict[str, Optional[str]] = {}
    for name, value in rows:
        if name not in qualify:
            qualify[name] = shared(value)
    return qualify


#: What decides whether a device's stored contacts must be rewritten: the round trip
#: counts in whole milliseconds (as the GUI string does), not microsecond jitter.
ContactKey = tuple[str, str, str, Optional[str], Optional[int]]


def contact_key(contact: Contact) -> ContactKey:
    usec = contact.roundtrip_usec
    return (
        contact.uri[:512],
        contact.user_agent[:255],
        contact.status[:16],
        contact.via[:64] if contact.via else None,
        round_trip_ms(usec) if usec is not None else None,
    )


def _row_key(row: Any) -> ContactKey:
    usec = row[4]
    return (row[0], row[1], row[2], row[3], round_trip_ms(usec) if usec is not None else None)


def load_contact_keys(conn: Connection, server_id: int) -> dict[int, tuple[ContactKey, ...]]:
    """The stored contacts of this server's devices, as comparison keys in ``seq`` order."""
    c = schema.contacts.c
    rows = _streamed(
        conn,
        select(c.device_id, c.uri, c.user_agent, c.status, c.via, c.roundtrip_usec)
        .where(c.server_id == server_id)
        .order_by(c.device_id, c.seq),
    )
    stored: dict[int, list[ContactKey]] = {}
    for row in rows:
        stored.setdefault(row[0], []).append(_row_key(row[1:]))
    return {device_id: tuple(keys) for device_id, keys in stored.items()}


def load_contacts_of(conn: Connection, device_ids: Iterable[int]) -> dict[int, list[Contact]]:
    """The stored contacts of these devices (the listener combines events with them)."""
    c, d = schema.contacts.c, schema.devices.c
    query = (
        select(c.device_id, d.name, c.uri, c.user_agent, c.status, c.via, c.roundtrip_usec)
        .join_from(schema.contacts, schema.devices, d.id == c.device_id)
        .where(c.device_id.in_(bindparam("ids", expanding=True)))
        .order_by(c.device_id, c.seq)
    )
    found: dict[int, list[Contact]] = {}
    for chunk in _chunks(sorted(set(device_ids)), CHUNK):
        for row in conn.execute(query, {"ids": list(chunk)}):
            found.setdefault(row[0], []).append(
                Contact(
                    endpoint=row[1],
                    aor=row[1],
                    uri=row[2],
                    status=row[4],
                    roundtrip_usec=row[6],
                    user_agent=row[3],
                    via=row[5],
                )
            )
    return found


_CONTACT_COLUMNS = (
    "device_id",
    "seq",
    "server_id",
    "uri",
    "user_agent",
    "roundtrip_usec",
    "status",
    "via",
    "seen",
)


def replace_contacts(
    conn: Connection,
    server_id: int,
    contact_sets: Mapping[int, Sequence[Contact]],
    now: datetime,
    *,
    stored: Optional[Collection[int]] = None,
) -> None:
    """Replace the stored contacts of exactly these devices (an empty set deletes them).

    ``stored``: the devices that may have rows (None: any of them); only their rows are
    deleted first. The rows are upserted, so that a device whose rows another server
    wrote (it was moved) needs no delete either.
    """
    if not contact_sets:
        return
    c = schema.contacts.c
    doomed = sorted(contact_sets if stored is None else (i for i in contact_sets if i in stored))
    for chunk in _chunks(doomed, CHUNK):
        conn.execute(delete(schema.contacts).where(c.device_id.in_(list(chunk))))
    rows = [
        (device_id, seq, server_id, key[0], key[1], contact.roundtrip_usec, key[2], key[3], now)
        for device_id, contacts in contact_sets.items()
        for seq, (contact, key) in enumerate((k, contact_key(k)) for k in contacts)
    ]
    if not rows:
        return
    if not _is_mysql(conn):
        dicts = [dict(zip(_CONTACT_COLUMNS, row)) for row in rows]
        _upsert(conn, schema.contacts, dicts, ("device_id", "seq"))
        return
    updates = ", ".join(f"{name} = VALUES({name})" for name in _CONTACT_COLUMNS[2:])
    _insert_rows(
        conn,
        f"INSERT INTO {schema.contacts.name} ({', '.join(_CONTACT_COLUMNS)})",
        rows,
        f"ON DUPLICATE KEY UPDATE {updates}",
    )


def write_contacts(
    conn: Connection,
    server_id: int,
    contact_sets: Mapping[int, Sequence[Contact]],
    now: datetime,
    *,
    leave: Collection[int] = (),
) -> int:
    """The poll's contacts: ``contact_sets`` holds every device of this server that has
    contacts; stored rows of any other device of this server are deleted. Only devices
    whose contacts changed are rewritten; ``leave`` (devices a newer event wrote) are
    not touched. Returns the devices rewritten."""
    stored = load_contact_keys(conn, server_id)
    changed: dict[int, Sequence[Contact]] = {}
    for device_id, contacts in contact_sets.items():
        if device_id in leave:
            continue
        if stored.get(device_id) != tuple(contact_key(contact) for contact in contacts):
            changed[device_id] = contacts
    for device_id in stored:
        if device_id not in contact_sets and device_id not in leave:
            changed[device_id] = ()
    replace_contacts(conn, server_id, changed, now, stored=stored.keys())
    return len(changed)


# --- a poll and an event batch, read and written whole --------------------------------


def load_poll_inputs(
    conn: Connection,
    rules: Rules,
    listing: Listing,
    observed: datetime,
    now: datetime,
    *,
    own_tables: bool = True,
) -> PollInputs:
    """What a poll's plan needs, read in its transaction. ``own_tables`` False: the
    project's tables do not exist yet (a dry run before the first migration)."""
    server_id = rules.server_id
    devices = load_devices(conn, server_id)
    since = observed - rules.flap.window
    return PollInputs(
        devices=devices,
        states=load_states(conn, server_id) if own_tables else {},
        recent_counts=count_recent_transitions(conn, server_id, since) if own_tables else {},
        qualify=load_qualify(conn, server_id) if listing.contacts is not None else {},
        elsewhere=find_devices_elsewhere(
            conn, listed_elsewhere_candidates(listing, devices), server_id
        ),
        sample_latency=own_tables and latency_due(last_success(conn, server_id), now),
    )


def write_poll(conn: Connection, planned: PollPlan, now: datetime, run: ServerRun) -> int:
    """Everything one poll writes, inside its transaction; returns the devices changed.
    The contacts of devices a newer event wrote stay as that event left them."""
    changed = write_plan(conn, run.server_id, planned.plan, planned.wrong, now, run)
    write_contacts(conn, run.server_id, planned.contact_sets, now, leave=planned.plan.left_alone)
    return changed


def load_batch_inputs(
    conn: Connection,
    rules: Rules,
    names: Collection[str],
    earliest: datetime,
    *,
    with_contacts: bool,
) -> BatchInputs:
    """What an event batch's plan needs: the devices of this server with those names, and
    what is stored of them; nothing more when no device has such a name."""
    devices = load_devices_named(conn, rules.server_id, names)
    if not devices:
        return BatchInputs()
    ids = [device.id for device in devices]
    return BatchInputs(
        devices=devices,
        states=load_states_of(conn, ids),
        recent_times=load_recent_transitions(conn, rules.server_id, earliest - rules.flap.window),
        contacts=load_contacts_of(conn, ids) if with_contacts else {},
        not_before=poll_observed_at(conn, rules.server_id),
    )


def write_batch(conn: Connection, server_id: int, planned: BatchPlan, now: datetime) -> int:
    """What an event batch changes, inside its transaction; returns the devices changed."""
    changed = write_event_plan(conn, server_id, planned.plan, now)
    if planned.contact_sets:
        replace_contacts(conn, server_id, planned.contact_sets, now)
    return changed
