"""What a run writes, inside the caller's transaction: MOR's ``reg_status`` of the changed
devices, their kept state, the history, the wrong-server records and the run's summary.

MOR's ``devices`` table is only ever UPDATEd (never inserted into or altered), and only
for rows assigned to this server.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Optional

from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, delete, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.schema import CreateTable

from .. import schema
from ..status import DeviceState, Plan, WrongServer
from .bulk import execute_in, insert_rows, upsert_rows
from .engine import is_mysql
from .fitting import fit
from .history import write_history
from .read import STATES
from .servers import ServerRun, mark_listener_wrote, write_server_run

#: Session-private table holding a run's new reg_status values (MySQL only).
_NEW_STATUS = Table(
    "mor_regstatus_new_status",
    MetaData(),
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("reg_status", String(50)),
    prefixes=["TEMPORARY"],
)
#: Every column of a wrong-server row, in the table's order.
_WRONG_SERVER_COLUMNS = tuple(schema.wrong_server.c.keys())


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
    forget = delete(schema.device_state).where(s.server_id == server_id)
    execute_in(conn, forget, s.device_id, plan.forgotten_device_ids)
    write_history(conn, plan.transitions)
    _write_wrong_server(conn, server_id, wrong, now)
    write_server_run(conn, run)
    return changed


def write_event_plan(conn: Connection, server_id: int, plan: Plan, now: datetime) -> int:
    """What a batch of PeerStatus events changes, inside the caller's transaction."""
    changed = write_reg_statuses(conn, server_id, plan.reg_status_changes)
    write_states(conn, plan.state_changes)
    write_history(conn, plan.transitions)
    if changed or plan.state_changes:
        mark_listener_wrote(conn, server_id, now)
    return changed


def write_reg_statuses(
    conn: Connection, server_id: int, changes: Sequence[tuple[int, Optional[str]]]
) -> int:
    """Set ``devices.reg_status`` of the changed devices; returns the rows written.

    The ``server_id`` guard leaves alone a device that the GUI moved to another
    server since it was read.
    """
    if not changes:
        return 0
    if is_mysql(conn):
        return _write_reg_statuses_joined(conn, server_id, changes)
    return _write_reg_statuses_grouped(conn, server_id, changes)


def _write_reg_statuses_joined(
    conn: Connection, server_id: int, changes: Sequence[tuple[int, Optional[str]]]
) -> int:
    """MySQL/MariaDB: load the new values into a temporary table, then one UPDATE ... JOIN.

    A few multi-row INSERTs and one UPDATE
    instead of a round trip per device: 100k devices in about a second.
    Temporary tables live in this session only and do not commit the transaction
    (hence ``DROP TEMPORARY TABLE``: a plain ``DROP TABLE`` would).
    """
    name = _NEW_STATUS.name
    conn.exec_driver_sql(f"DROP TEMPORARY TABLE IF EXISTS {name}")
    conn.execute(CreateTable(_NEW_STATUS))
    insert_rows(conn, _NEW_STATUS, ("id", "reg_status"), changes)
    result = conn.exec_driver_sql(
        f"UPDATE devices d JOIN {name} n ON d.id = n.id "
        "SET d.reg_status = n.reg_status WHERE d.server_id = %s",
        (server_id,),
    )
    conn.exec_driver_sql(f"DROP TEMPORARY TABLE {name}")
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
        .where(d.server_id == bindparam("sid"))
        .values(reg_status=bindparam("value"))
    )
    return sum(
        execute_in(conn, set_value, d.id, ids, {"sid": server_id, "value": value})
        for value, ids in by_value.items()
    )


def write_states(conn: Connection, states: Sequence[DeviceState]) -> None:
    """Insert or update the project's rows for these devices (a cold run writes 100k)."""
    upsert_rows(conn, schema.device_state, STATES.names, [STATES.values(s) for s in states])


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
    gone = set(existing) - {record.device_id for record in records}
    ours = delete(schema.wrong_server).where(w.seen_on_server_id == server_id)
    execute_in(conn, ours, w.device_id, gone)
    rows = [
        (  # in the order of _WRONG_SERVER_COLUMNS
            r.device_id,
            server_id,
            r.assigned_server_id,
            fit(w.peer_name, r.peer_name),
            r.reg_status,
            r.ip,
            r.port,
            existing.get(r.device_id, now),
            now,
        )
        for r in records
    ]
    upsert_rows(conn, schema.wrong_server, _WRONG_SERVER_COLUMNS, rows)
