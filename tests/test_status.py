"""The rules: what MOR's GUI will show for what Asterisk lists. Pure, no I/O."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from mor_plugin.status import (
    KINDS,
    Device,
    DeviceState,
    ElsewhereDevice,
    Peer,
    effective_status,
    format_uptime,
    kind_of,
    latency_ms,
    normalize_status,
    parse_address,
    peer_from_fields,
    plan_cycle,
    wrong_server_records,
)

NOW = datetime(2026, 11, 29, 12, 0, 0)
HOUR = 3600


def state(device_id: int, status: str, **kw: object) -> DeviceState:
    values: dict[str, object] = {
        "device_id": device_id,
        "server_id": 1,
        "status": status,
        "since": NOW - timedelta(days=1),
    }
    values.update(kw)
    return DeviceState(**values)  # type: ignore[arg-type]


# --- the GUI's prefix rules -------------------------------------------------------


@pytest.mark.parametrize(
    ("stored", "bullet"),
    [
        ("OK (23 ms)", "ok"),
        ("LAGGED (2345 ms)", "lagged"),
        ("UNREACHABLE", "unreachable"),
        ("UNKNOWN", "unknown"),
        ("Unmonitored", "unmonitored"),
        (None, "none"),
        ("", "none"),
    ],
)
def test_stored_string_maps_to_the_bullet_mor_draws(stored: str, bullet: str) -> None:
    assert kind_of(stored) == bullet


def test_latency_is_read_from_ok_and_lagged_only() -> None:
    assert latency_ms("OK (7 ms)") == 7
    assert latency_ms("LAGGED (2345 ms)") == 2345
    assert latency_ms("UNREACHABLE") is None
    assert latency_ms(None) is None


@pytest.mark.parametrize(
    "raw", ["OK (1 ms)", "LAGGED (2001 ms)", "UNREACHABLE", "UNKNOWN", "Unmonitored"]
)
def test_asterisk_strings_are_kept_exactly(raw: str) -> None:
    assert normalize_status(raw) == raw
    assert normalize_status(raw + " ") == raw


@pytest.mark.parametrize(
    "raw",
    ["", "ok (5 ms)", "OK", "OK (fast)", "Reachable", "\x00\x01", "OK (12 ms); DROP TABLE devices"],
)
def test_strings_the_gui_could_not_colour_become_unknown(raw: str) -> None:
    assert normalize_status(raw) == "UNKNOWN"


# --- PeerEntry fields by Asterisk version -------------------------------------------


def test_address_none_means_no_address() -> None:
    assert parse_address("-none-", "0") == (None, None)


def test_address_split_fields() -> None:
    assert parse_address("192.168.17.77", "5160") == ("192.168.17.77", 5160)


def test_address_with_port_inside_ipaddress_as_asterisk_1_8_0() -> None:
    assert parse_address("10.0.0.5:5062", "") == ("10.0.0.5", 5062)
    assert parse_address("10.0.0.5:5062", "0") == ("10.0.0.5", 5062)


def test_ipv6_addresses() -> None:
    assert parse_address("[2001:db8::1]:5060", "") == ("2001:db8::1", 5060)
    assert parse_address("2001:db8::1", "5060") == ("2001:db8::1", 5060)


def test_trailing_spaces_do_not_leak_into_values() -> None:
    peer = peer_from_fields(
        {"ObjectName": "101 ", "Status": "OK (9 ms) ", "IPaddress": "10.1.1.1 ", "IPport": "5060 "}
    )
    assert peer == Peer("101", "OK (9 ms)", "10.1.1.1", 5060)


ENTRY_1_4 = {
    "Event": "PeerEntry",
    "Channeltype": "SIP",
    "ObjectName": "a",
    "ChanObjectType": "peer",
    "IPaddress": "10.0.0.1",
    "IPport": "5060",
    "Dynamic": "yes",
    "Natsupport": "no",
    "VideoSupport": "no",
    "ACL": "no",
    "Status": "OK (12 ms)",
    "RealtimeDevice": "no",
}
ENTRY_13 = {
    "Event": "PeerEntry",
    "ActionID": "x",
    "Channeltype": "SIP",
    "ObjectName": "a",
    "ChanObjectType": "peer",
    "IPaddress": "10.0.0.1",
    "IPport": "5060",
    "Dynamic": "yes",
    "AutoForcerport": "no",
    "Forcerport": "no",
    "AutoComedia": "no",
    "Comedia": "no",
    "VideoSupport": "no",
    "TextSupport": "no",
    "ACL": "yes",
    "Status": "OK (12 ms)",
    "RealtimeDevice": "no",
    "Description": "",
    "Accountcode": "",
}


@pytest.mark.parametrize("fields", [ENTRY_1_4, ENTRY_13, dict(reversed(list(ENTRY_13.items())))])
def test_peer_entry_is_parsed_by_key_whatever_the_version_or_order(fields: dict[str, str]) -> None:
    assert peer_from_fields(fields) == Peer("a", "OK (12 ms)", "10.0.0.1", 5060)


def test_keys_in_any_case() -> None:
    assert peer_from_fields({"objectname": "b", "STATUS": "UNREACHABLE"}) == Peer(
        "b", "UNREACHABLE"
    )


def test_entry_without_a_name_is_ignored() -> None:
    assert peer_from_fields({"Status": "OK (1 ms)"}) is None


# --- the one-hour UNKNOWN rule ---------------------------------------------------------


def test_first_unreachable_starts_the_clock() -> None:
    assert effective_status(Peer("a", "UNREACHABLE"), None, NOW, HOUR) == ("UNREACHABLE", NOW)


def test_unreachable_for_less_than_the_limit_stays_red() -> None:
    before = state(1, "unreachable", unreachable_since=NOW - timedelta(minutes=59))
    assert effective_status(Peer("a", "UNREACHABLE"), before, NOW, HOUR) == (
        "UNREACHABLE",
        NOW - timedelta(minutes=59),
    )


def test_unreachable_for_the_limit_turns_black() -> None:
    since = NOW - timedelta(hours=1)
    before = state(1, "unreachable", unreachable_since=since)
    assert effective_status(Peer("a", "UNREACHABLE"), before, NOW, HOUR) == ("UNKNOWN", since)


def test_the_limit_is_configurable() -> None:
    since = NOW - timedelta(minutes=6)
    before = state(1, "unreachable", unreachable_since=since)
    assert effective_status(Peer("a", "UNREACHABLE"), before, NOW, 300)[0] == "UNKNOWN"


def test_answering_again_stops_the_clock() -> None:
    before = state(1, "unknown", unreachable_since=NOW - timedelta(hours=3))
    assert effective_status(Peer("a", "OK (5 ms)"), before, NOW, HOUR) == ("OK (5 ms)", None)


def test_asterisk_unknown_keeps_the_clock_running() -> None:
    since = NOW - timedelta(minutes=50)
    before = state(1, "unreachable", unreachable_since=since)
    assert effective_status(Peer("a", "UNKNOWN"), before, NOW, HOUR) == ("UNKNOWN", since)
    # ... so that a restart of Asterisk does not reset an hour-long outage
    again = state(1, "unknown", unreachable_since=since)
    later = NOW + timedelta(minutes=15)
    assert effective_status(Peer("a", "UNREACHABLE"), again, later, HOUR) == ("UNKNOWN", since)


# --- planning a run ----------------------------------------------------------------------


def test_listed_devices_get_asterisks_string_and_unlisted_get_null() -> None:
    devices = [Device(1, "101", None), Device(2, "102", "OK (3 ms)"), Device(3, "103", None)]
    peers = [
        Peer("101", "OK (12 ms)", "10.0.0.1", 5060),
        Peer("103", "Unmonitored", "10.0.0.3", 5060),
    ]
    plan = plan_cycle(1, peers, devices, {}, NOW, HOUR)
    assert dict(plan.reg_status_changes) == {1: "OK (12 ms)", 2: None, 3: "Unmonitored"}
    assert plan.counts == {
        "ok": 1,
        "lagged": 0,
        "unreachable": 0,
        "unknown": 0,
        "unmonitored": 1,
        "none": 1,
    }


def test_unchanged_devices_are_not_written() -> None:
    devices = [Device(1, "101", "OK (12 ms)")]
    first = plan_cycle(1, [Peer("101", "OK (12 ms)", "10.0.0.1", 5060)], devices, {}, NOW, HOUR)
    assert first.reg_status_changes == ()
    states = {s.device_id: s for s in first.state_changes}
    second = plan_cycle(
        1,
        [Peer("101", "OK (12 ms)", "10.0.0.1", 5060)],
        devices,
        states,
        NOW + timedelta(minutes=1),
        HOUR,
    )
    assert second.reg_status_changes == ()
    assert second.state_changes == ()


@pytest.mark.parametrize(
    ("peer", "kept", "moved"),
    [
        (Peer("101", "OK (14 ms)", "10.0.0.1", 5060), {}, False),  # steady
        (Peer("101", "OK (14 ms)"), {}, False),  # no address listed: the last one stays
        (Peer("101", "OK (14 ms)", "10.0.0.1", 5062), {}, True),  # only the port moved
        (Peer("101", "OK (14 ms)", "10.0.0.2", 5060), {}, True),
        (Peer("101", "OK (14 ms)", "10.0.0.1", 5060), {"server_id": 2}, True),  # re-homed
        (Peer("101", "OK (14 ms)", "10.0.0.1", 5060), {"unreachable_since": NOW}, True),
    ],
)
def test_a_device_is_written_when_any_kept_field_moves(
    peer: Peer, kept: dict[str, object], moved: bool
) -> None:
    seen = NOW - timedelta(minutes=3)
    before = replace(state(1, "ok", ip="10.0.0.1", port=5060, last_seen=seen), **kept)
    plan = plan_cycle(1, [peer], [Device(1, "101", "OK (12 ms)")], {1: before}, NOW, HOUR)
    if not moved:
        assert plan.state_changes == ()
        return
    (after,) = plan.state_changes
    assert (after.server_id, after.since, after.unreachable_since) == (1, before.since, None)
    assert (after.ip, after.port) == (peer.ip, peer.port)
    assert (after.last_seen, after.observed_at) == (NOW, NOW)


def test_latency_jitter_changes_the_string_but_not_the_since() -> None:
    devices = [Device(1, "101", "OK (12 ms)")]
    before = {1: state(1, "ok", ip="10.0.0.1", port=5060, last_seen=NOW - timedelta(days=1))}
    plan = plan_cycle(1, [Peer("101", "OK (14 ms)", "10.0.0.1", 5060)], devices, before, NOW, HOUR)
    assert plan.reg_status_changes == ((1, "OK (14 ms)"),)
    assert plan.state_changes == ()


def test_a_change_of_colour_moves_since_and_keeps_the_last_seen() -> None:
    seen = NOW - timedelta(minutes=3)
    devices = [Device(1, "101", "OK (12 ms)")]
    before = {1: state(1, "ok", ip="10.0.0.1", port=5060, last_seen=seen)}
    plan = plan_cycle(1, [Peer("101", "UNREACHABLE", "10.0.0.1", 5060)], devices, before, NOW, HOUR)
    (after,) = plan.state_changes
    assert (after.status, after.since, after.last_seen, after.unreachable_since) == (
        "unreachable",
        NOW,
        seen,
        NOW,
    )


def test_a_device_that_comes_back_is_seen_now() -> None:
    devices = [Device(1, "101", "UNREACHABLE")]
    before = {
        1: state(
            1, "unreachable", ip="10.0.0.1", port=5060, unreachable_since=NOW - timedelta(minutes=5)
        )
    }
    plan = plan_cycle(1, [Peer("101", "OK (30 ms)", "10.0.0.9", 5070)], devices, before, NOW, HOUR)
    (after,) = plan.state_changes
    assert (after.status, after.last_seen, after.unreachable_since, after.ip, after.port) == (
        "ok",
        NOW,
        None,
        "10.0.0.9",
        5070,
    )


def test_unlisted_device_keeps_its_last_address() -> None:
    devices = [Device(1, "101", "OK (12 ms)")]
    before = {1: state(1, "ok", ip="10.0.0.1", port=5060)}
    (after,) = plan_cycle(1, [], devices, before, NOW, HOUR).state_changes
    assert (after.status, after.ip, after.port, after.since) == ("none", "10.0.0.1", 5060, NOW)


def test_unreachable_for_an_hour_is_stored_as_unknown() -> None:
    devices = [Device(1, "101", "UNREACHABLE")]
    before = {1: state(1, "unreachable", unreachable_since=NOW - timedelta(hours=2))}
    plan = plan_cycle(1, [Peer("101", "UNREACHABLE")], devices, before, NOW, HOUR)
    assert plan.reg_status_changes == ((1, "UNKNOWN"),)
    assert plan.counts["unknown"] == 1


def test_peers_without_a_device_here_are_left_for_the_wrong_server_check() -> None:
    plan = plan_cycle(1, [Peer("elsewhere", "OK (1 ms)")], [Device(1, "101", None)], {}, NOW, HOUR)
    assert plan.unmatched_peers == (Peer("elsewhere", "OK (1 ms)"),)
    assert plan.reg_status_changes == ()


def test_states_of_devices_no_longer_here_are_forgotten() -> None:
    plan = plan_cycle(
        1, [], [Device(1, "101", None)], {1: state(1, "none"), 9: state(9, "ok")}, NOW, HOUR
    )
    assert plan.forgotten_device_ids == (9,)


def test_two_devices_with_one_peer_name_both_get_the_status() -> None:
    devices = [Device(1, "dup", None), Device(2, "dup", None)]
    plan = plan_cycle(1, [Peer("dup", "OK (2 ms)")], devices, {}, NOW, HOUR)
    assert dict(plan.reg_status_changes) == {1: "OK (2 ms)", 2: "OK (2 ms)"}


def test_hostile_peer_names_are_just_names() -> None:
    name = "x'); DROP TABLE devices; --"
    plan = plan_cycle(1, [Peer(name, "OK (1 ms)")], [Device(5, name, None)], {}, NOW, HOUR)
    assert plan.reg_status_changes == ((5, "OK (1 ms)"),)


def test_counts_cover_every_kind() -> None:
    assert set(plan_cycle(1, [], [], {}, NOW, HOUR).counts) == set(KINDS)


def test_wrong_server_records_name_the_assigned_server() -> None:
    records = wrong_server_records(
        [Peer("201", "OK (4 ms)", "10.2.0.1", 5060), Peer("ghost", "OK (1 ms)")],
        [ElsewhereDevice(7, "201", 2)],
        server_id=1,
    )
    assert [(r.device_id, r.assigned_server_id, r.reg_status, r.ip) for r in records] == [
        (7, 2, "OK (4 ms)", "10.2.0.1")
    ]


def test_uptime_reads_like_asterisk() -> None:
    assert format_uptime(3 * 86400 + 4 * 3600 + 5 * 60) == "3 days, 4 hours, 5 minutes"
    assert format_uptime(61) == "1 minute, 1 second"
    assert format_uptime(0) == "0 seconds"
