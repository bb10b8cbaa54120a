"""What a run reads: this server's devices, their kept state, the server's summary."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Optional

from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine

from .. import schema
from ..status import Device, DeviceState, ElsewhereDevice
from .bulk import Shared, select_in, streamed
from .fitting import names_mor_can_hold
from .rows import Stored

#: What the poll reads of a device (the event listener also reads ``qualify``).
DEVICES = Stored(schema.devices, Device, ("id", "name", "reg_status"))
DEVICES_QUALIFIED = Stored(schema.devices, Device)
DEVICES_ELSEWHERE = Stored(schema.devices, ElsewhereDevice)
#: The kept state of a device: every column of ``mor_regstatus_devices``.
STATES = Stored(schema.device_state, DeviceState)


def load_devices(conn: Connection, server_id: int) -> list[Device]:
    """This server's SIP devices (the only rows a run may write)."""
    d = schema.devices.c
    rows = streamed(conn, DEVICES.select().where(d.server_id == server_id, d.device_type == "SIP"))
    read = DEVICES.reader(reg_status=Shared())
    return [read(row) for row in rows]


def load_states(conn: Connection, server_id: int) -> dict[int, DeviceState]:
    s = schema.device_state.c
    rows = streamed(conn, STATES.select().where(s.server_id == server_id))
    shared = Shared()
    repeated = ("status", "since", "last_seen", "unreachable_since", "observed_at")
    read = STATES.reader(flapping=bool, **{name: shared for name in repeated})
    return {row[0]: read(row) for row in rows}


def load_devices_named(conn: Connection, server_id: int, names: Iterable[str]) -> list[Device]:
    """This server's SIP devices with these peer names, with ``qualify`` (the listener's read)."""
    d = schema.devices.c
    query = DEVICES_QUALIFIED.select().where(d.server_id == server_id, d.device_type == "SIP")
    read = DEVICES_QUALIFIED.reader()
    return [read(row) for row in select_in(conn, query, d.name, names_mor_can_hold(names))]


def load_states_of(conn: Connection, device_ids: Iterable[int]) -> dict[int, DeviceState]:
    """The kept state of these devices (whatever server wrote it)."""
    read = STATES.reader(flapping=bool)
    rows = select_in(conn, STATES.select(), schema.device_state.c.device_id, device_ids)
    return {row[0]: read(row) for row in rows}


def find_devices_elsewhere(
    conn: Connection, names: Sequence[str], server_id: int
) -> list[ElsewhereDevice]:
    """SIP devices with these names that MOR assigns to another server."""
    d = schema.devices.c
    query = DEVICES_ELSEWHERE.select().where(d.server_id != server_id, d.device_type == "SIP")
    read = DEVICES_ELSEWHERE.reader()
    return [read(row) for row in select_in(conn, query, d.name, names_mor_can_hold(names))]


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
