"""``/metrics``: the fleet's figures in Prometheus' text format.

Every figure is read from the database when Prometheus scrapes, by a custom
collector in a registry of the app's own: no counter lives in a worker
process, so every gunicorn worker gives the same answer (no multiprocess
mode needed). Aggregates per server only, never a label per device. The
names match what the collector writes for node_exporter's textfile collector
(``mor_plugin.textfile``), so one dashboard reads either.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from typing import Callable, Optional

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from mor_plugin.status import KINDS

from .db import Database, FleetServer, is_stale


def listener_up(server: FleetServer, now: datetime, stale_after: float) -> bool:
    """Connected as the listener last said, and its heartbeat is not older than ``stale_after``.

    A listener that died without a word (killed, host down) leaves ``listener_connected``
    set; its silent heartbeat gives it away.
    """
    if not server.listener_connected:
        return False
    return server.listener_seen is None or not is_stale(server.listener_seen, now, stale_after)


class FleetCollector(Collector):
    """Reads the fleet from the database at every scrape."""

    def __init__(
        self, db: Database, now: Callable[[], datetime], stale_after: Callable[[], float]
    ) -> None:
        self._db = db
        self._now = now
        self._stale_after = stale_after

    def describe(self) -> Iterable[Metric]:
        return []  # registering must not query the database

    def collect(self) -> Iterator[Metric]:
        servers = self._db.fleet()
        yield from fleet_metrics(servers, self._now(), self._stale_after())


def fleet_metrics(
    servers: Sequence[FleetServer], now: datetime, stale_after: float
) -> Iterator[Metric]:
    """The metric families for these servers as of ``now``."""
    sid = ["server_id"]
    info = GaugeMetricFamily(
        "mor_regstatus_server_info",
        "An Asterisk server in MOR's servers table (value 1).",
        labels=["server_id", "hostname", "asterisk_version"],
    )
    devices = GaugeMetricFamily(
        "mor_regstatus_devices",
        "SIP devices per status, as of the collector's last run "
        "(before its first run: as devices.reg_status says).",
        labels=["server_id", "status"],
    )
    flapping = GaugeMetricFamily(
        "mor_regstatus_flapping_devices", "Devices currently marked as flapping.", labels=sid
    )
    wrong = GaugeMetricFamily(
        "mor_regstatus_wrong_server_devices",
        "Devices registered on this server although MOR assigns them to another.",
        labels=sid,
    )
    run_age = GaugeMetricFamily(
        "mor_regstatus_last_run_age_seconds",
        "Seconds since the collector's last run on this server (absent: never ran).",
        labels=sid,
    )
    success_age = GaugeMetricFamily(
        "mor_regstatus_last_success_age_seconds",
        "Seconds since the collector's last successful run (absent: never succeeded).",
        labels=sid,
    )
    run_duration = GaugeMetricFamily(
        "mor_regstatus_last_run_duration_seconds",
        "How long the collector's last run took.",
        labels=sid,
    )
    result_ok = GaugeMetricFamily(
        "mor_regstatus_last_run_success",
        "1 when the collector's last run succeeded, else 0.",
        labels=sid,
    )
    stale = GaugeMetricFamily(
        "mor_regstatus_stale",
        "1 when the data is stale: no success within MOR_WIDGET_STALE_AFTER, or never.",
        labels=sid,
    )
    run_at = GaugeMetricFamily(
        "mor_regstatus_last_run_timestamp_seconds",
        "When the collector last ran (Unix time; 0: never).",
        labels=sid,
    )
    success_at = GaugeMetricFamily(
        "mor_regstatus_last_success_timestamp_seconds",
        "When the collector last succeeded (Unix time; 0: never).",
        labels=sid,
    )
    listener_seen = GaugeMetricFamily(
        "mor_regstatus_listener_seen_timestamp_seconds",
        "The event listener's last heartbeat (Unix time; 0: never).",
        labels=sid,
    )
    listener = GaugeMetricFamily(
        "mor_regstatus_listener_connected",
        "1 when the AMI event listener is connected and its heartbeat is fresh, else 0.",
        labels=sid,
    )
    for server in servers:
        label = str(server.server_id)
        info.add_metric([label, server.hostname or "", server.asterisk_version or ""], 1.0)
        for kind in KINDS:
            devices.add_metric([label, kind], float(server.counts.get(kind, 0)))
        if server.flapping is not None:
            flapping.add_metric([label], float(server.flapping))
        if server.wrong_server is not None:
            wrong.add_metric([label], float(server.wrong_server))
        if server.last_run is not None:
            run_age.add_metric([label], _age(server.last_run, now))
            result_ok.add_metric([label], 1.0 if server.result == "ok" else 0.0)
            run_duration.add_metric([label], (server.duration_ms or 0) / 1000)
        if server.last_success is not None:
            success_age.add_metric([label], _age(server.last_success, now))
        stale.add_metric([label], 1.0 if is_stale(server.last_success, now, stale_after) else 0.0)
        listener.add_metric([label], 1.0 if listener_up(server, now, stale_after) else 0.0)
        run_at.add_metric([label], _epoch(server.last_run))
        success_at.add_metric([label], _epoch(server.last_success))
        if server.listener_connected is not None:
            listener_seen.add_metric([label], _epoch(server.listener_seen))
    yield from (
        info,
        devices,
        flapping,
        wrong,
        run_age,
        success_age,
        run_duration,
        result_ok,
        stale,
        run_at,
        success_at,
        listener,
        listener_seen,
    )


def _epoch(moment: Optional[datetime]) -> float:
    return moment.replace(tzinfo=timezone.utc).timestamp() if moment is not None else 0.0


def _age(moment: datetime, now: datetime) -> float:
    return max(0.0, round((now - moment).total_seconds(), 3))


def registry(db: Database, now: Callable[[], datetime], stale_after: float) -> CollectorRegistry:
    """A registry holding only the fleet collector (no per-process metrics)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(FleetCollector(db, now, lambda: stale_after))
    return reg


def allowed(
    address: Optional[str], networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    """Whether a client address is inside one of ``networks`` (IPv4-mapped IPv6 included)."""
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    candidates = [ip]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        candidates.append(ip.ipv4_mapped)
    return any(c in net for c in candidates for net in networks if c.version == net.version)
