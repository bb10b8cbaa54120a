"""Schema 2's history: transitions, latency samples, and purging both."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Optional

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Connection, Engine

from .. import schema
from ..status import Transition
from .bulk import Merge, insert_rows, upsert_rows
from .rows import Stored

#: At most one latency sample per device this often (seconds).
LATENCY_EVERY = 300
#: Hours of latency samples kept.
LATENCY_HOURS = 24
#: A row's samples stop growing here (the column holds 2000 characters).
_SAMPLES_FULL = 1980
#: A new sample is appended to the hour's row, unless that row is full.
_APPEND_SAMPLE = Merge(
    mysql=f"IF(CHAR_LENGTH(samples) > {_SAMPLES_FULL}, samples, CONCAT(samples, ' ', {{new}}))",
    sqlite=f"CASE WHEN length(samples) > {_SAMPLES_FULL} THEN samples "
    "ELSE samples || ' ' || {new} END",
)
#: Rows per purge statement: short statements, short locks.
PURGE_CHUNK = 5000

#: A transition: every column of ``mor_regstatus_history`` but its surrogate key.
TRANSITIONS = Stored(schema.history, Transition)


def write_history(conn: Connection, transitions: Sequence[Transition]) -> None:
    """Append one ``mor_regstatus_history`` row per change of bullet colour."""
    rows = [TRANSITIONS.values(t) for t in transitions]
    insert_rows(conn, schema.history, TRANSITIONS.names, rows)


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
    hour = at.replace(minute=0, second=0, microsecond=0)
    offset = int((at - hour).total_seconds())
    pairs = len(samples) // 2
    rows = [(samples[i], hour, f"{offset}:{samples[i + 1]}") for i in range(0, pairs * 2, 2)]
    upsert_rows(
        conn,
        schema.latency,
        ("device_id", "hour", "samples"),
        rows,
        merge={"samples": _APPEND_SAMPLE},
    )
    return pairs


def purge_old(engine: Engine, now: datetime, history_days: float) -> tuple[int, int]:
    """Delete history older than ``history_days`` and latency hours older than 24 h.

    Cheap when there is nothing to do (one index lookup per table), chunked when
    there is (each chunk its own short transaction; SQLite, which has no
    ``DELETE ... LIMIT``, deletes all at once). Returns (history, latency) rows
    deleted.
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
            purge = (
                delete(table).where(column < cutoff).with_dialect_options(mysql_limit=PURGE_CHUNK)
            )
            while True:
                with engine.begin() as conn:
                    result = conn.execute(purge)
                total += result.rowcount
                if result.rowcount < PURGE_CHUNK:
                    break
        deleted.append(total)
    return deleted[0], deleted[1]
