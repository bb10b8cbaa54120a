"""A server's summary row (``mor_regstatus_servers``) and MOR's ``servers`` row."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Optional

from sqlalchemy import case, inspect, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from .. import schema
from .bulk import upsert_rows
from .engine import describe_db_error
from .fitting import fit

log = logging.getLogger(__name__)


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


def write_server_run(conn: Connection, run: ServerRun) -> None:
    """A successful run's summary; MOR's ``servers`` row gets the version and uptime."""
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
    upsert_rows(conn, schema.server_state, list(row), [tuple(row.values())])
    values = {}
    if run.asterisk_version:
        values["version"] = fit(schema.servers.c.version, run.asterisk_version)
    if run.uptime:
        values["uptime"] = fit(schema.servers.c.uptime, run.uptime)
    if values:
        conn.execute(
            update(schema.servers).where(schema.servers.c.id == run.server_id).values(**values)
        )


def mark_listener_wrote(conn: Connection, server_id: int, now: datetime) -> None:
    """Note that the listener changed this server's devices (the widget's cache watches
    it); in the same transaction, so that whoever sees the devices' new rows sees this."""
    st = schema.server_state.c
    conn.execute(
        update(schema.server_state).where(st.server_id == server_id).values(listener_wrote_at=now)
    )


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
