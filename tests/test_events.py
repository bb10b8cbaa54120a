"""The pure rules of issue 6: PeerStatus events, transitions, flapping, notifications."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Optional

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mor_plugin import store, textfile
from mor_plugin.status import (
    Device,
    DeviceState,
    FlapRule,
    KnownStatus,
    Notified,
    Peer,
    PeerEvent,
    event_status,
    flap_update,
    is_flapping,
    needs_peer_lookup,
    notified_after,
    observed_later,
    peer_event_from_fields,
    plan_cycle,
    plan_events,
    qualify_limit,
    should_notify,
)

T0 = datetime(2026, 11, 29, 12, 0, 0)
HOUR = 3600.0


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def state(device_id: int, status: str, **kw: object) -> DeviceState:
    values: dict[str, object] = {"since": T0 - timedelta(days=1), "ip": "10.0.0.1", "port": 5060}
    values.update(kw)
    return DeviceState(device_id=device_id, server_id=1, status=status, **values)  # type: ignore[arg-type]


# --- parsing events ---------------------------------------------------------------------


def test_a_reachable_event_of_asterisk_11() -> None:
    fields = {
        "Event": "PeerStatus",
        "Privilege": "system,all",
        "ChannelType": "SIP",
        "Peer": "SIP/1001",
        "PeerStatus": "Reachable",
        "Time": "23",
    }
    assert peer_event_from_fields(fields, T0) == PeerEvent("1001", "Reachable", T0, 23)


def test_registered_carries_the_address_in_both_spellings() -> None:
    new = {"peer": "SIP/a", "peerstatus": "Registered", "address": "10.1.2.3:5062"}
    old = {"Peer": "SIP/a", "PeerStatus": "Registered", "Address": "10.1.2.3", "Port": "5062"}
    for fields in (new, old):
        event = peer_event_from_fields(fields, T0)
        assert event is not None and (event.ip, event.port) == ("10.1.2.3", 5062)


@pytest.mark.parametrize(
    "fields",
    [
        {"Peer": "IAX2/1001", "PeerStatus": "Reachable", "Time": "5"},
        {"ChannelType": "IAX2", "Peer": "SIP/1001", "PeerStatus": "Reachable"},
        {"Peer": "PJSIP/1001", "PeerStatus": "Reachable"},
        {"Peer": "SIP/", "PeerStatus": "Reachable"},
        {"Peer": "SIP/1001", "PeerStatus": "Exploded"},
        {"PeerStatus": "Reachable"},
    ],
)
def test_events_that_are_not_chan_sip_peer_statuses_are_ignored(fields: dict[str, str]) -> None:
    assert peer_event_from_fields(fields, T0) is None


def test_time_minus_one_and_garbage_mean_no_time() -> None:
    for value in ("-1", "", "abc", "0"):
        fields = {"Peer": "SIP/x", "PeerStatus": "Unreachable", "Time": value}
        event = peer_event_from_fields(fields, T0)
        assert event is not None and event.time_ms is None


@pytest.mark.parametrize(
    ("qualify", "limit"),
    [("yes", 2000), ("", 2000), (None, 2000), ("no", None), ("0", None), ("500", 500)],
)
def test_qualify_limit(qualify: Optional[str], limit: Optional[int]) -> None:
    assert qualify_limit(qualify) == limit


# --- the mapping ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "time_ms", "known", "expected"),
    [
        ("Reachable", None, False, True),  # chan_sip after Unreachable: no Time
        ("Lagged", None, False, True),
        ("Reachable", 91, False, False),
        ("Lagged", 2345, False, False),
        ("Registered", None, False, True),  # the first qualify answer sends no event
        ("Unreachable", None, False, False),
        ("Unregistered", None, False, False),
        ("Rejected", None, False, False),
        ("Reachable", None, True, False),  # a value Asterisk already gave
    ],
)
def test_events_that_leave_the_status_unknown_need_a_look_up(
    status: str, time_ms: Optional[int], known: bool, expected: bool
) -> None:
    event = (
        KnownStatus("101", T0, "OK (1 ms)", "SIPshowpeer")
        if known
        else PeerEvent("101", status, T0, time_ms)
    )
    assert needs_peer_lookup(event) is expected


@pytest.mark.parametrize(
    ("status", "time_ms", "qualify", "stored", "expected"),
    [
        ("Reachable", 23, "yes", "UNREACHABLE", "OK (23 ms)"),
        ("Reachable", None, "yes", "LAGGED (2500 ms)", None),  # no Time: ask Asterisk
        ("Reachable", None, "yes", "UNREACHABLE", None),
        ("Lagged", 2345, "yes", "OK (20 ms)", "LAGGED (2345 ms)"),
        ("Lagged", None, "yes", "OK (20 ms)", None),
        ("Lagged", None, "500", None, None),
        ("Unreachable", None, "yes", "OK (20 ms)", "UNREACHABLE"),
        ("Registered", None, "yes", None, "UNKNOWN"),
        ("Registered", None, "yes", "Unmonitored", "UNKNOWN"),
        ("Registered", None, "yes", "OK (20 ms)", None),
        ("Registered", None, "yes", "UNREACHABLE", None),
        ("Registered", None, "no", None, "Unmonitored"),
        ("Unregistered", None, "yes", "OK (20 ms)", "UNKNOWN"),
        ("Unregistered", None, "no", "Unmonitored", "Unmonitored"),
        ("Rejected", None, "yes", "OK (20 ms)", None),
        ("Rejected", None, "yes", None, None),
    ],
)
def test_event_status_maps_to_chan_sips_strings(
    status: str,
    time_ms: Optional[int],
    qualify: str,
    stored: Optional[str],
    expected: Optional[str],
) -> None:
    assert event_status(status, time_ms, qualify, stored) == expected


DEVICES = [
    Device(1, "101", "OK (12 ms)", qualify="yes"),
    Device(2, "102", None, qualify="no"),
    Device(3, "shared", "OK (5 ms)", qualify="yes"),
    Device(4, "shared", "OK (6 ms)", qualify="yes"),
]
STATES = {1: state(1, "ok", observed_at=at(-600)), 3: state(3, "ok"), 4: state(4, "ok")}


def events(*items: tuple[str, str, Optional[int], float]) -> list[PeerEvent]:
    return [PeerEvent(name, status, at(t), time_ms) for name, status, time_ms, t in items]


def test_plan_events_writes_strings_state_and_transitions() -> None:
    plan = plan_events(1, events(("101", "Unreachable", None, 1)), DEVICES, STATES, HOUR)
    assert plan.reg_status_changes == ((1, "UNREACHABLE"),)
    (new,) = plan.state_changes
    assert (new.status, new.since, new.unreachable_since, new.observed_at) == (
        "unreachable",
        at(1),
        at(1),
        at(1),
    )
    (move,) = plan.transitions
    assert (move.from_status, move.to_status, move.source, move.at) == (
        "ok",
        "unreachable",
        "event",
        at(1),
    )


def test_plan_events_applies_a_batch_in_order_to_every_device_of_the_name() -> None:
    batch = events(
        ("shared", "Unreachable", None, 1),
        ("shared", "Reachable", 9, 2),
        ("101", "Lagged", 2345, 3),
    )
    plan = plan_events(1, batch, DEVICES, STATES, HOUR)
    assert dict(plan.reg_status_changes) == {
        1: "LAGGED (2345 ms)",
        3: "OK (9 ms)",
        4: "OK (9 ms)",
    }
    assert [(t.device_id, t.to_status) for t in plan.transitions] == [
        (3, "unreachable"),
        (4, "unreachable"),
        (3, "ok"),
        (4, "ok"),
        (1, "lagged"),
    ]


def test_plan_events_ignores_names_without_a_device_here() -> None:
    # the caller passes only this server's SIP devices: another server's name finds nothing
    plan = plan_events(1, events(("201", "Unreachable", None, 1)), DEVICES, STATES, HOUR)
    assert (plan.reg_status_changes, plan.state_changes, plan.transitions) == ((), (), ())


def test_plan_events_skips_events_older_than_what_is_stored() -> None:
    newer = {1: state(1, "ok", observed_at=at(10))}
    plan = plan_events(1, events(("101", "Unreachable", None, 5)), DEVICES, newer, HOUR)
    assert plan.reg_status_changes == () and plan.skipped_newer == 1
    plan = plan_events(
        1, events(("101", "Unreachable", None, 5)), DEVICES, STATES, HOUR, not_before=at(6)
    )
    assert plan.reg_status_changes == () and plan.skipped_newer == 1


def test_plan_events_keeps_the_unreachable_clock_for_the_hour_rule() -> None:
    long_down = {1: state(1, "unreachable", unreachable_since=at(-2 * HOUR))}
    device = [Device(1, "101", "UNREACHABLE", qualify="yes")]
    plan = plan_events(1, events(("101", "Unreachable", None, 1)), device, long_down, HOUR)
    assert plan.reg_status_changes == ((1, "UNKNOWN"),)


def test_a_registration_updates_the_address_without_a_transition() -> None:
    batch = [PeerEvent("101", "Registered", at(1), ip="10.9.9.9", port=5070)]
    plan = plan_events(1, batch, DEVICES, STATES, HOUR)
    assert plan.reg_status_changes == () and plan.transitions == ()
    (new,) = plan.state_changes
    assert (new.ip, new.port, new.status) == ("10.9.9.9", 5070, "ok")


def test_rejected_changes_nothing() -> None:
    plan = plan_events(1, events(("101", "Rejected", None, 1)), DEVICES, STATES, HOUR)
    assert (plan.reg_status_changes, plan.state_changes) == ((), ())


def test_plan_events_flags_flapping_from_stored_and_new_transitions() -> None:
    rule = FlapRule(changes=4, window=timedelta(minutes=10))
    recent = {1: [at(-120), at(-60)]}
    batch = events(("101", "Unreachable", None, 1), ("101", "Reachable", 20, 2))
    plan = plan_events(1, batch, DEVICES, STATES, HOUR, recent_times=recent, flap=rule)
    (new,) = plan.state_changes
    assert (new.flapping, new.flapping_since, new.status) == (True, at(2), "ok")
    assert plan.reg_status_changes == ((1, "OK (20 ms)"),)  # reg_status keeps Asterisk's string


# --- the poll --------------------------------------------------------------------------------


def test_the_poll_leaves_a_device_with_a_newer_observation_alone() -> None:
    devices = [Device(1, "101", "UNREACHABLE"), Device(2, "102", "OK (5 ms)")]
    states = {
        1: state(1, "unreachable", observed_at=at(10)),  # an event after the list
        2: state(2, "ok", observed_at=at(-10)),
    }
    peers = [Peer("101", "OK (7 ms)"), Peer("102", "UNREACHABLE")]
    plan = plan_cycle(1, peers, devices, states, at(5), HOUR)
    assert plan.reg_status_changes == ((2, "UNREACHABLE"),)
    assert plan.skipped_newer == 1
    assert plan.counts["unreachable"] == 2
    assert plan.left_alone == {1}  # the writer of its contacts too: the newer observation's


def test_the_last_observation_wins() -> None:
    assert observed_later(state(1, "ok", observed_at=at(10)), at(5))
    assert not observed_later(state(1, "ok", observed_at=at(5)), at(5))  # a tie is not newer
    assert not observed_later(state(1, "ok", observed_at=at(1)), at(5))
    assert not observed_later(state(1, "ok"), at(5))  # a row from before observed_at existed
    assert not observed_later(None, at(5))


def test_the_poll_records_transitions_but_not_jitter_nor_first_sightings() -> None:
    devices = [Device(1, "101", "OK (5 ms)"), Device(2, "102", "OK (5 ms)"), Device(3, "103", None)]
    states = {1: state(1, "ok"), 2: state(2, "ok")}
    peers = [Peer("101", "OK (9 ms)"), Peer("102", "LAGGED (2600 ms)"), Peer("103", "OK (1 ms)")]
    plan = plan_cycle(1, peers, devices, states, at(0), HOUR)
    assert [(t.device_id, t.from_status, t.to_status, t.latency_ms) for t in plan.transitions] == [
        (2, "ok", "lagged", 2600)
    ]
    assert list(plan.latency_samples) == []


def test_the_poll_samples_latency_only_when_asked() -> None:
    devices = [Device(1, "101", None), Device(2, "102", None), Device(3, "103", None)]
    peers = [Peer("101", "OK (9 ms)"), Peer("102", "LAGGED (2600 ms)"), Peer("103", "UNREACHABLE")]
    plan = plan_cycle(1, peers, devices, {}, at(0), HOUR, sample_latency=True)
    assert list(plan.latency_samples) == [1, 9, 2, 2600]


def test_the_poll_clears_flapping_once_the_window_holds_too_few() -> None:
    rule = FlapRule(changes=3, window=timedelta(minutes=10))
    flapping = {1: state(1, "ok", flapping=True, flapping_since=at(-300))}
    devices = [Device(1, "101", "OK (5 ms)")]
    still = plan_cycle(
        1,
        [Peer("101", "OK (5 ms)")],
        devices,
        flapping,
        at(0),
        HOUR,
        recent_counts={1: 3},
        flap=rule,
    )
    assert still.state_changes == ()
    calm = plan_cycle(
        1, [Peer("101", "OK (5 ms)")], devices, flapping, at(0), HOUR, recent_counts={}, flap=rule
    )
    (new,) = calm.state_changes
    assert (new.flapping, new.flapping_since) == (False, None)


def test_is_flapping_counts_inside_the_window_only() -> None:
    rule = FlapRule(changes=3, window=timedelta(minutes=10))
    assert is_flapping([at(-599), at(-300), at(0)], at(0), rule)
    assert not is_flapping([at(-600), at(-300), at(0)], at(0), rule)  # one left the window
    assert not is_flapping([at(-10), at(-5)], at(0), rule)


def test_flap_update_keeps_since_while_flapping() -> None:
    rule = FlapRule(changes=2, window=timedelta(minutes=10))
    already = state(1, "ok", flapping=True, flapping_since=at(-60))
    assert flap_update(already, [at(-60)], True, at(0), rule) is already


# --- notifications -----------------------------------------------------------------------


WINDOW = timedelta(minutes=10)


def test_the_first_message_is_a_down() -> None:
    assert should_notify(None, "unreachable", at(0), WINDOW)
    assert should_notify(None, "unknown", at(0), WINDOW)
    assert not should_notify(None, "ok", at(0), WINDOW)
    assert not should_notify(None, "unmonitored", at(0), WINDOW)


def test_one_message_per_window_and_only_on_a_change_of_alert() -> None:
    sent = Notified(1, "unreachable", at(0), at(0), 1)
    assert not should_notify(sent, "unknown", at(3600), WINDOW)  # still down
    assert not should_notify(sent, "ok", at(599), WINDOW)  # within the window
    assert should_notify(sent, "ok", at(600), WINDOW)
    assert not should_notify(sent, "none", at(9999), WINDOW)


def test_notified_after_counts_within_the_window() -> None:
    first = notified_after(None, 1, "unreachable", at(0), WINDOW)
    assert first == Notified(1, "unreachable", at(0), at(0), 1)
    second = notified_after(first, 1, "ok", at(300), WINDOW)
    assert (second.window_start, second.sent_in_window) == (at(0), 2)
    third = notified_after(second, 1, "unknown", at(700), WINDOW)
    assert (third.window_start, third.sent_in_window) == (at(700), 1)


# --- latency sampling and the textfile ---------------------------------------------------


def test_latency_is_due_once_per_five_minute_slot() -> None:
    assert store.latency_due(None, T0)
    assert not store.latency_due(T0 + timedelta(seconds=10), T0 + timedelta(seconds=290))
    assert store.latency_due(T0 + timedelta(seconds=290), T0 + timedelta(seconds=301))


def test_the_textfile_is_prometheus_text_without_device_labels() -> None:
    metrics = store.ServerMetrics(
        server_id=3,
        counts={"ok": 5, "lagged": 1, "unreachable": 2, "unknown": 0, "unmonitored": 1, "none": 4},
        flapping=1,
        last_run=T0,
        last_success=T0,
        result="ok",
        duration_ms=1234,
        peers=9,
        wrong_server=0,
        listener_connected=True,
        listener_seen=T0 + timedelta(seconds=30),
    )
    text = textfile.render(metrics, T0 + timedelta(seconds=90))
    families = {f.name: f for f in text_string_to_metric_families(text)}
    devices = {s.labels["status"]: s.value for s in families["mor_regstatus_devices"].samples}
    assert devices == {
        "ok": 5,
        "lagged": 1,
        "unreachable": 2,
        "unknown": 0,
        "unmonitored": 1,
        "none": 4,
    }
    assert families["mor_regstatus_last_run_age_seconds"].samples[0].value == 90
    assert families["mor_regstatus_last_run_duration_seconds"].samples[0].value == 1.234
    assert families["mor_regstatus_listener_connected"].samples[0].value == 1
    assert all(
        set(s.labels) <= {"server_id", "status"} for f in families.values() for s in f.samples
    )
