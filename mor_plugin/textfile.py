"""Metrics for node_exporter's textfile collector: ``<textfile_dir>/mor_regstatus.prom``.

Aggregates of this server only, no per-device labels, in the Prometheus text
format written with plain string formatting (the collector has no
prometheus_client dependency). The file is replaced atomically
(:func:`mor_plugin.atomic.atomic_write`), so node_exporter never reads half of
it. The poll writes it after every run; the event listener rewrites it on every
heartbeat, which keeps ``..._age_seconds`` fresh. Without a listener, compute
the age in PromQL: ``time() - mor_regstatus_last_run_timestamp_seconds``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from . import store
from .atomic import atomic_write
from .status import KINDS

log = logging.getLogger(__name__)

FILENAME = "mor_regstatus.prom"


def _epoch(at: Optional[datetime]) -> float:
    return at.replace(tzinfo=timezone.utc).timestamp() if at is not None else 0.0


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}"


def render(m: store.ServerMetrics, now: datetime) -> str:
    """The exposition text for one server's aggregates."""
    sid = f'server_id="{m.server_id}"'
    lines: list[str] = []

    def metric(name: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} gauge")
        for labels, value in samples:
            lines.append(f"{name}{{{labels}}} {_number(value)}")

    metric(
        "mor_regstatus_devices",
        "SIP devices of the server per registration status, as of the last poll.",
        [(f'{sid},status="{kind}"', m.counts.get(kind, 0)) for kind in KINDS],
    )
    metric(
        "mor_regstatus_flapping_devices",
        "Devices of the server marked flapping.",
        [(sid, m.flapping)],
    )
    metric(
        "mor_regstatus_wrong_server_devices",
        "Devices registered on the server but assigned to another one.",
        [(sid, m.wrong_server)],
    )
    metric("mor_regstatus_peers", "SIP peers Asterisk listed in the last poll.", [(sid, m.peers)])
    metric(
        "mor_regstatus_last_run_timestamp_seconds",
        "When the last poll ran (Unix time).",
        [(sid, _epoch(m.last_run))],
    )
    metric(
        "mor_regstatus_last_success_timestamp_seconds",
        "When the last successful poll ran (Unix time; 0: never).",
        [(sid, _epoch(m.last_success))],
    )
    metric(
        "mor_regstatus_last_run_age_seconds",
        "Seconds since the last poll, when this file was written.",
        [(sid, max(0.0, (now - m.last_run).total_seconds()) if m.last_run else 0.0)],
    )
    metric(
        "mor_regstatus_last_run_duration_seconds",
        "How long the last successful poll took.",
        [(sid, m.duration_ms / 1000)],
    )
    metric(
        "mor_regstatus_last_run_success",
        "1 when the last poll succeeded.",
        [(sid, 1 if m.result == "ok" else 0)],
    )
    metric(
        "mor_regstatus_listener_connected",
        "1 when the AMI event listener is connected.",
        [(sid, 1 if m.listener_connected else 0)],
    )
    metric(
        "mor_regstatus_listener_seen_timestamp_seconds",
        "The event listener's last heartbeat (Unix time; 0: never).",
        [(sid, _epoch(m.listener_seen))],
    )
    return "\n".join(lines) + "\n"


def export(engine: Engine, directory: Optional[Path], server_id: int, now: datetime) -> None:
    """Write the textfile when ``directory`` is set; a failure is logged, never raised."""
    if directory is None:
        return
    try:
        with engine.connect() as conn:
            if not store.schema_version(conn):
                return
            metrics = store.server_metrics(conn, server_id)
        atomic_write(directory / FILENAME, render(metrics, now))
    except SQLAlchemyError as err:
        log.warning("metrics textfile not written: %s", store.describe_db_error(err))
    except OSError as err:
        log.warning("metrics textfile not written to %s: %s", directory, err.strerror or err)
