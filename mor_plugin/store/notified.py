"""Webhooks: the devices an alert names, and what was last sent for each (dampening)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Optional

from sqlalchemy.engine import Connection

from .. import schema
from ..status import Notified
from .bulk import select_in, upsert_rows
from .rows import Stored


@dataclass(frozen=True)
class AlertDevice:
    """What a webhook message says about a device."""

    id: int
    name: str
    user_id: int
    reg_status: Optional[str]


ALERT_DEVICES = Stored(schema.devices, AlertDevice)
#: Every column of ``mor_regstatus_notified``.
NOTIFIED = Stored(schema.notified, Notified)


def alert_devices(
    conn: Connection, device_ids: Iterable[int], user_ids: Sequence[int], only_ids: Sequence[int]
) -> dict[int, AlertDevice]:
    """Those of ``device_ids`` that a notification rule matches (owner or device id)."""
    d = schema.devices.c
    rule = d.user_id.in_(list(user_ids)) | d.id.in_(list(only_ids))
    read = ALERT_DEVICES.reader()
    rows = select_in(conn, ALERT_DEVICES.select().where(rule), d.id, device_ids)
    return {row[0]: read(row) for row in rows}


def load_notified(conn: Connection, device_ids: Iterable[int]) -> dict[int, Notified]:
    read = NOTIFIED.reader()
    rows = select_in(conn, NOTIFIED.select(), schema.notified.c.device_id, device_ids)
    return {row[0]: read(row) for row in rows}


def notified_with_status(conn: Connection, server_id: int) -> list[tuple[Notified, str]]:
    """Every dampening row of this server's devices, with the device's current bullet."""
    n, s = schema.notified.c, schema.device_state.c
    rows = conn.execute(
        NOTIFIED.select()
        .add_columns(s.status)
        .join_from(schema.notified, schema.device_state, n.device_id == s.device_id)
        .where(s.server_id == server_id)
    )
    read = NOTIFIED.reader()
    return [(read(row[:-1]), row[-1]) for row in rows]


def write_notified(conn: Connection, rows: Sequence[Notified]) -> None:
    upsert_rows(conn, schema.notified, NOTIFIED.names, [NOTIFIED.values(r) for r in rows])
