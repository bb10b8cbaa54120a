"""One definition of the exported metrics: node_exporter's textfile and the widget's
/metrics say the same of the same server, and a listener whose heartbeat went silent is
disconnected in both."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from mor_plugin import metrics, store, textfile
from mor_plugin.config import Settings
from widget import metrics as widget_metrics
from widget.db import FleetServer

T0 = datetime(2026, 11, 29, 12, 0, 0)
SILENT_AFTER = 180.0

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def a_server(**changes: Any) -> store.ServerMetrics:
    figures = store.ServerMetrics(
        server_id=3,
        counts={"ok": 5, "lagged": 1, "unreachable": 2, "unknown": 0, "unmonitored": 1, "none": 4},
        flapping=1,
        last_run=T0,
        last_success=T0 - timedelta(minutes=10),
        result="AMI login failed",
        duration_ms=1234,
        peers=9,
        wrong_server=2,
        listener_connected=True,
        listener_seen=T0 + timedelta(seconds=30),
    )
    return replace(figures, **changes)


def in_the_fleet(server: store.ServerMetrics) -> FleetServer:
    """The same server as the widget reads it from the database."""
    return FleetServer(
        server_id=server.server_id,
        hostname="ast-three",
        server_ip="10.0.0.3",
        last_run=server.last_run,
        last_success=server.last_success,
        result=server.result,
        duration_ms=server.duration_ms,
        asterisk_version="18.20.0",
        counts=server.counts,
        wrong_server=server.wrong_server,
        flapping=server.flapping,
        listener_connected=server.listener_connected,
        listener_seen=server.listener_seen,
        listener_since=None,
    )


def samples_of(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class _Fleet(Collector):
    def __init__(self, servers: list[FleetServer], now: datetime) -> None:
        self.servers, self.now = servers, now

    def collect(self) -> Iterator[Metric]:
        return widget_metrics.fleet_metrics(self.servers, self.now, SILENT_AFTER)


def textfile_says(server: store.ServerMetrics, now: datetime) -> Samples:
    return samples_of(textfile.render(server, now, SILENT_AFTER))


def metrics_say(server: store.ServerMetrics, now: datetime) -> Samples:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fleet([in_the_fleet(server)], now))
    return samples_of(generate_latest(registry).decode())


SHARED = {f.name for f in textfile.FAMILIES} & {f.name for f in widget_metrics.FAMILIES}


def shared(samples: Samples) -> Samples:
    return {key: value for key, value in samples.items() if key[0] in SHARED}


def value(samples: Samples, name: str) -> float:
    return samples[(name, (("server_id", "3"),))]


@pytest.mark.parametrize(
    "server",
    [
        a_server(),
        a_server(result="ok", last_success=T0, listener_connected=False),
        a_server(listener_seen=T0 - timedelta(hours=1)),  # a silent listener
        a_server(last_run=None, last_success=None, result=None, duration_ms=0),  # never ran
    ],
)
def test_the_textfile_and_metrics_say_the_same_of_one_server(
    server: store.ServerMetrics,
) -> None:
    now = T0 + timedelta(seconds=90)
    assert len(SHARED) >= 10
    assert shared(textfile_says(server, now)) == shared(metrics_say(server, now))


def test_a_listener_with_a_silent_heartbeat_is_disconnected_in_both() -> None:
    server = a_server(listener_seen=T0)
    for export in (textfile_says, metrics_say):
        fresh = export(server, T0 + timedelta(seconds=SILENT_AFTER))
        silent = export(server, T0 + timedelta(seconds=SILENT_AFTER + 1))
        assert value(fresh, "mor_regstatus_listener_connected") == 1, export.__name__
        assert value(silent, "mor_regstatus_listener_connected") == 0, export.__name__
        assert value(silent, "mor_regstatus_listener_seen_timestamp_seconds") == (metrics.epoch(T0))


def test_the_textfile_judges_the_heartbeat_by_mor_conf_s_timeouts() -> None:
    server = a_server(listener_seen=T0)
    silent_after = Settings().listener_silent_after
    assert silent_after == textfile.DEFAULT_SILENT_AFTER
    late = samples_of(textfile.render(server, T0 + timedelta(seconds=silent_after + 1)))
    assert value(late, "mor_regstatus_listener_connected") == 0


def test_a_server_that_never_ran_has_no_age_duration_or_result() -> None:
    never = a_server(last_run=None, last_success=None, result=None, duration_ms=0)
    said = textfile_says(never, T0)
    assert value(said, "mor_regstatus_last_run_timestamp_seconds") == 0
    assert value(said, "mor_regstatus_last_success_timestamp_seconds") == 0
    absent = {
        "mor_regstatus_last_run_age_seconds",
        "mor_regstatus_last_run_duration_seconds",
        "mor_regstatus_last_run_success",
    }
    assert not absent & {name for name, _ in said}


def test_the_help_of_a_family_is_the_same_in_both() -> None:
    text = textfile.render(a_server(), T0)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fleet([in_the_fleet(a_server())], T0))
    fleet = generate_latest(registry).decode()
    helps = {line for line in text.splitlines() if line.startswith("# HELP")}
    fleet_helps = {line for line in fleet.splitlines() if line.startswith("# HELP")}
    assert {h for h in helps if h.split()[2] in SHARED} <= fleet_helps
