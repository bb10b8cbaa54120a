"""Metrics for node_exporter's textfile collector: ``<textfile_dir>/mor_regstatus.prom``.

Aggregates of this server only, no per-device labels, in the Prometheus text
format written with plain string formatting (the collector has no
prometheus_client dependency); the families are those of
:mod:`mor_plugin.metrics`, shared with the widget's ``/metrics``. The file is
replaced atomically, so node_exporter never reads half of it. The poll writes
it after every run; the event listener rewrites it on every heartbeat, which
keeps ``..._age_seconds`` fresh. Without a listener, compute the age in PromQL:
``time() - mor_regstatus_last_run_timestamp_seconds``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Optional

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from . import metrics, store
from .atomic import atomic_write
from .config import Settings

log = logging.getLogger(__name__)

FILENAME = "mor_regstatus.prom"

#: the families of the file, in its order
FAMILIES = (
    metrics.DEVICES,
    metrics.FLAPPING_DEVICES,
    metrics.WRONG_SERVER_DEVICES,
    metrics.PEERS,
    metrics.LAST_RUN_TIMESTAMP,
    metrics.LAST_SUCCESS_TIMESTAMP,
    metrics.LAST_RUN_AGE,
    metrics.LAST_RUN_DURATION,
    metrics.LAST_RUN_SUCCESS,
    metrics.LISTENER_CONNECTED,
    metrics.LISTENER_SEEN_TIMESTAMP,
)

#: how old the listener's heartbeat may be with the default mor.conf
DEFAULT_SILENT_AFTER = Settings().listener_silent_after


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}"


def _exposition(samples: Iterable[metrics.Sample]) -> str:
    """``samples`` in Prometheus' text format, family by family in :data:`FAMILIES` order."""
    by_family: dict[metrics.Family, list[str]] = {family: [] for family in FAMILIES}
    for family, values, value in samples:
        labels = ",".join(f'{name}="{v}"' for name, v in zip(family.labels, values))
        by_family[family].append(f"{family.name}{{{labels}}} {_number(value)}")
    lines: list[str] = []
    for family, rows in by_family.items():
        lines += [f"# HELP {family.name} {family.help}", f"# TYPE {family.name} gauge", *rows]
    return "\n".join(lines) + "\n"


def render(
    m: store.ServerMetrics, now: datetime, silent_after: float = DEFAULT_SILENT_AFTER
) -> str:
    """The exposition text for one server's aggregates as of ``now``.

    ``silent_after``: seconds after which the listener's heartbeat shows it gone
    (:attr:`Settings.listener_silent_after`).
    """
    samples = list(metrics.server_samples(m, now, silent_after))
    samples.append((metrics.PEERS, (str(m.server_id),), float(m.peers)))
    return _exposition(samples)


def export(
    engine: Engine,
    directory: Optional[Path],
    server_id: int,
    now: datetime,
    silent_after: float = DEFAULT_SILENT_AFTER,
) -> None:
    """Write the textfile when ``directory`` is set; a failure is logged, never raised."""
    if directory is None:
        return
    try:
        with engine.connect() as conn:
            if not store.schema_version(conn):
                return
            server = store.server_metrics(conn, server_id)
        atomic_write(directory / FILENAME, render(server, now, silent_after))
    except SQLAlchemyError as err:
        log.warning("metrics textfile not written: %s", store.describe_db_error(err))
    except OSError as err:
        log.warning("metrics textfile not written to %s: %s", directory, err.strerror or err)
