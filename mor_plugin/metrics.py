"""The Prometheus metrics the project exports, each family defined once.

Two exporters render them: the collector's node_exporter textfile
(:mod:`mor_plugin.textfile`, one server) and the widget's ``/metrics``
(``widget.metrics``, every server of the fleet). A family means the same in
both, so one dashboard or alert reads either. Every family is a gauge,
labelled by ``server_id`` (never by device). Pure: figures in, samples out.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional, Protocol

from .status import KINDS


@dataclass(frozen=True)
class Family:
    """One metric family: its name, help text and label names."""

    name: str
    help: str
    labels: tuple[str, ...] = ("server_id",)


SERVER_INFO = Family(
    "mor_regstatus_server_info",
    "An Asterisk server in MOR's servers table (value 1).",
    ("server_id", "hostname", "asterisk_version"),
)
DEVICES = Family(
    "mor_regstatus_devices",
    "SIP devices per registration status, as of the collector's last run.",
    ("server_id", "status"),
)
FLAPPING_DEVICES = Family("mor_regstatus_flapping_devices", "Devices currently marked as flapping.")
WRONG_SERVER_DEVICES = Family(
    "mor_regstatus_wrong_server_devices",
    "Devices registered on this server although MOR assigns them to another.",
)
PEERS = Family("mor_regstatus_peers", "SIP peers Asterisk listed in the collector's last run.")
LAST_RUN_TIMESTAMP = Family(
    "mor_regstatus_last_run_timestamp_seconds",
    "When the collector last ran (Unix time; 0: never).",
)
LAST_SUCCESS_TIMESTAMP = Family(
    "mor_regstatus_last_success_timestamp_seconds",
    "When the collector last succeeded (Unix time; 0: never).",
)
LAST_RUN_AGE = Family(
    "mor_regstatus_last_run_age_seconds",
    "Seconds since the collector's last run, when exported (absent: never ran).",
)
LAST_SUCCESS_AGE = Family(
    "mor_regstatus_last_success_age_seconds",
    "Seconds since the collector's last successful run (absent: never succeeded).",
)
LAST_RUN_DURATION = Family(
    "mor_regstatus_last_run_duration_seconds",
    "How long the collector's last run took (absent: never ran).",
)
LAST_RUN_SUCCESS = Family(
    "mor_regstatus_last_run_success",
    "1 when the collector's last run succeeded, else 0 (absent: never ran).",
)
STALE = Family(
    "mor_regstatus_stale",
    "1 when the data is stale: no success within MOR_WIDGET_STALE_AFTER, or never.",
)
LISTENER_CONNECTED = Family(
    "mor_regstatus_listener_connected",
    "1 when the AMI event listener is connected and its heartbeat is recent, else 0.",
)
LISTENER_SEEN_TIMESTAMP = Family(
    "mor_regstatus_listener_seen_timestamp_seconds",
    "The event listener's last heartbeat (Unix time; 0: never).",
)


class ServerFigures(Protocol):
    """What the shared families are computed from: one server's row of
    ``mor_regstatus_servers`` and its device counts (None: not known)."""

    @property
    def server_id(self) -> int: ...
    @property
    def counts(self) -> Mapping[str, int]: ...
    @property
    def flapping(self) -> Optional[int]: ...
    @property
    def wrong_server(self) -> Optional[int]: ...
    @property
    def last_run(self) -> Optional[datetime]: ...
    @property
    def last_success(self) -> Optional[datetime]: ...
    @property
    def result(self) -> Optional[str]: ...
    @property
    def duration_ms(self) -> Optional[int]: ...
    @property
    def listener_connected(self) -> Optional[bool]: ...
    @property
    def listener_seen(self) -> Optional[datetime]: ...


#: a family, its label values, its value
Sample = tuple[Family, tuple[str, ...], float]


def epoch(moment: Optional[datetime]) -> float:
    """A naive UTC time as Unix time; 0 for None (never)."""
    return moment.replace(tzinfo=timezone.utc).timestamp() if moment is not None else 0.0


def age(moment: datetime, now: datetime) -> float:
    """Seconds from ``moment`` to ``now``, never negative, to the millisecond."""
    return max(0.0, round((now - moment).total_seconds(), 3))


def listener_connected(server: ServerFigures, now: datetime, silent_after: float) -> bool:
    """Connected as the listener last said, and its heartbeat not older than ``silent_after``.

    A listener that died without a word (killed, host down) leaves ``listener_connected``
    set; its silent heartbeat gives it away.
    """
    if not server.listener_connected:
        return False
    seen = server.listener_seen
    return seen is None or (now - seen).total_seconds() <= silent_after


def server_samples(server: ServerFigures, now: datetime, silent_after: float) -> Iterator[Sample]:
    """The samples of the families both exporters write, for one server as of ``now``.

    ``silent_after``: seconds after which the listener's heartbeat shows it gone.
    """
    sid = str(server.server_id)
    for kind in KINDS:
        yield DEVICES, (sid, kind), float(server.counts.get(kind, 0))
    if server.flapping is not None:
        yield FLAPPING_DEVICES, (sid,), float(server.flapping)
    if server.wrong_server is not None:
        yield WRONG_SERVER_DEVICES, (sid,), float(server.wrong_server)
    yield LAST_RUN_TIMESTAMP, (sid,), epoch(server.last_run)
    yield LAST_SUCCESS_TIMESTAMP, (sid,), epoch(server.last_success)
    if server.last_run is not None:
        yield LAST_RUN_AGE, (sid,), age(server.last_run, now)
        yield LAST_RUN_DURATION, (sid,), (server.duration_ms or 0) / 1000
        yield LAST_RUN_SUCCESS, (sid,), 1.0 if server.result == "ok" else 0.0
    connected = listener_connected(server, now, silent_after)
    yield LISTENER_CONNECTED, (sid,), 1.0 if connected else 0.0
    if server.listener_connected is not None:  # None: the server has no row yet
        yield LISTENER_SEEN_TIMESTAMP, (sid,), epoch(server.listener_seen)
