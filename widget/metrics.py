"""``/metrics``: the fleet's figures in Prometheus' text format.

Every figure is read from the database when Prometheus scrapes, by a custom
collector in a registry of the app's own: no counter lives in a worker
process, so every gunicorn worker gives the same answer (no multiprocess
mode needed). Aggregates per server only, never a label per device. The
families are those of :mod:`mor_plugin.metrics`, which the collector's
node_exporter textfile (``mor_plugin.textfile``) writes too, so one dashboard
reads either.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Callable, Optional

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from mor_plugin import metrics

from .db import Database, FleetServer, is_stale

#: the fleet page calls a listener connected exactly when /metrics does
listener_up = metrics.listener_connected

#: the families of /metrics, in their order
FAMILIES = (
    metrics.SERVER_INFO,
    metrics.DEVICES,
    metrics.FLAPPING_DEVICES,
    metrics.WRONG_SERVER_DEVICES,
    metrics.LAST_RUN_AGE,
    metrics.LAST_SUCCESS_AGE,
    metrics.LAST_RUN_DURATION,
    metrics.LAST_RUN_SUCCESS,
    metrics.STALE,
    metrics.LAST_RUN_TIMESTAMP,
    metrics.LAST_SUCCESS_TIMESTAMP,
    metrics.LISTENER_CONNECTED,
    metrics.LISTENER_SEEN_TIMESTAMP,
)


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


def _fleet_samples(
    server: FleetServer, now: datetime, stale_after: float
) -> Iterator[metrics.Sample]:
    """One server's samples: the shared families, and those only the fleet has.

    ``stale_after`` (``MOR_WIDGET_STALE_AFTER``) also says when a listener's heartbeat
    is too old: the fleet page calls such a listener silent."""
    sid = str(server.server_id)
    info = (sid, server.hostname or "", server.asterisk_version or "")
    yield metrics.SERVER_INFO, info, 1.0
    yield from metrics.server_samples(server, now, stale_after)
    if server.last_success is not None:
        yield metrics.LAST_SUCCESS_AGE, (sid,), metrics.age(server.last_success, now)
    stale = is_stale(server.last_success, now, stale_after)
    yield metrics.STALE, (sid,), 1.0 if stale else 0.0


def fleet_metrics(
    servers: Sequence[FleetServer], now: datetime, stale_after: float
) -> Iterator[Metric]:
    """The metric families for these servers as of ``now``."""
    families = {
        family: GaugeMetricFamily(family.name, family.help, labels=list(family.labels))
        for family in FAMILIES
    }
    for server in servers:
        for family, labels, value in _fleet_samples(server, now, stale_after):
            families[family].add_metric(list(labels), value)
    yield from families.values()


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
