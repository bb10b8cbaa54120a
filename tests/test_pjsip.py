"""PJSIP (issue 7): contacts mapped to MOR's GUI strings, through the simulator of every
PJSIP version into MariaDB, the peer_source choice, the listener's ContactStatus events
and the widget's contact list."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timezone
from html import unescape
from pathlib import Path
from typing import Any, Optional

import pytest
from regstatus_helpers import MorDatabase, listening, run, summary, wait_for, write_conf

from mor_plugin.config import load_settings
from mor_plugin.pjsip import (
    Contact,
    ContactEvent,
    apply_contact_event,
    apply_contact_events,
    best_contact,
    contact_address,
    contact_event_from_fields,
    contact_from_fields,
    contact_reg_status,
    merge_sources,
)
from mor_plugin.simulator import (
    AmiSimulator,
    Faults,
    SimContact,
    SimEndpoint,
    SimPeer,
    realistic_endpoints,
    run_in_thread,
)
from mor_plugin.status import Device, KnownStatus, Peer, kind_of

PJSIP_VERSIONS = ["13", "16", "18", "20", "22"]
SCRIPT_UA = '<script>alert("ua")</script>'


def contact(status: str, usec: Optional[int] = None, uri: str = "sip:a@10.0.0.1:5060") -> Contact:
    return Contact("dev", "dev", uri, status, usec)


# --- the mapping (pure) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "usec", "qualify", "expected", "bullet"),
    [
        ("Reachable", 23456, "yes", "OK (23 ms)", "ok"),
        ("Reachable", 23500, "yes", "OK (24 ms)", "ok"),  # rounded, not truncated
        ("Reachable", 300, "yes", "OK (1 ms)", "ok"),  # at least 1 ms, as chan_sip
        ("Reachable", None, "yes", "OK (1 ms)", "ok"),
        ("Reachable", 2000400, "yes", "OK (2000 ms)", "ok"),  # the limit itself is OK
        ("Reachable", 2000600, "yes", "LAGGED (2001 ms)", "lagged"),
        ("Reachable", 150000, "100", "LAGGED (150 ms)", "lagged"),
        ("Reachable", 150000, "500", "OK (150 ms)", "ok"),
        ("Reachable", 150000, "no", "Unmonitored", "unmonitored"),
        ("Unreachable", None, "yes", "UNREACHABLE", "unreachable"),
        ("Unknown", None, "yes", "UNKNOWN", "unknown"),
        ("NonQualified", None, "yes", "Unmonitored", "unmonitored"),
        ("Created", 0, "yes", "Unmonitored", "unmonitored"),  # Asterisk 13-15's label
        ("SomethingNew", None, "yes", "UNKNOWN", "unknown"),
        ("Removed", None, "yes", None, "none"),
    ],
)
def test_each_contact_status_maps_to_the_gui_string_and_bullet(
    status: str, usec: Optional[int], qualify: str, expected: Optional[str], bullet: str
) -> None:
    value = contact_reg_status(contact(status, usec), qualify)
    assert value == expected
    assert kind_of(value) == bullet


def test_the_best_contact_gives_the_device_status() -> None:
    slow = contact("Reachable", 2_500_000, "sip:a@10.0.0.1")
    fast = contact("Reachable", 40_000, "sip:a@10.0.0.2")
    faster = contact("Reachable", 9_000, "sip:a@10.0.0.3")
    down = contact("Unreachable", None, "sip:a@10.0.0.4")
    unqualified = contact("NonQualified", None, "sip:a@10.0.0.5")
    unknown = contact("Unknown", None, "sip:a@10.0.0.6")
    assert best_contact([down, slow, fast, faster], "yes") == ("OK (9 ms)", faster)
    assert best_contact([down, slow], "yes") == ("LAGGED (2500 ms)", slow)
    assert best_contact([down, unknown, unqualified], "yes")[0] == "Unmonitored"
    assert best_contact([down, unknown], "yes")[0] == "UNKNOWN"
    assert best_contact([down, down], "yes")[0] == "UNREACHABLE"
    assert best_contact([], "yes") == (None, None)


def test_contact_list_fields_are_read_by_key_in_any_order_and_spelling() -> None:
    contact_list = {
        "UserAgent": "Yealink T46S",
        "RoundtripUsec": "12600",
        "CallId": "abc@10.1.1.1",
        "ObjectName": "101;@0f3d",
        "Status": "Reachable",
        "ViaPort": "5062",
        "Uri": "sip:101@10.1.1.1:5062;ob",
        "Endpoint": "101",
        "ViaAddr": "10.1.1.1",
        "ObjectType": "contact",
    }
    detail = {
        "AOR": "101",
        "URI": "sip:101@10.1.1.1:5062;ob",
        "UserAgent": "Yealink T46S",
        "ViaAddress": "10.1.1.1:5062",
        "CallID": "abc@10.1.1.1",
        "Status": "Reachable",
        "RoundtripUsec": "12600",
        "EndpointName": "101",
    }
    lowered = {key.lower(): value for key, value in contact_list.items()}
    expected = Contact(
        "101",
        "101",
        "sip:101@10.1.1.1:5062;ob",
        "Reachable",
        12600,
        "Yealink T46S",
        "10.1.1.1:5062",
        "abc@10.1.1.1",
    )
    assert contact_from_fields(contact_list) == expected
    assert contact_from_fields(detail) == expected
    assert contact_from_fields(lowered) == expected
    # a static contact (the AOR's contact=) names no endpoint: the AOR's name is used
    static = contact_from_fields(
        {"ObjectName": "gw@@9a1", "Uri": "sip:gw@10.9.9.9", "Endpoint": ""}
    )
    assert static is not None and (static.endpoint, static.aor) == ("gw", "gw")
    na = contact_from_fields({**detail, "RoundtripUsec": "N/A", "Status": "Unknown"})
    assert na is not None and na.roundtrip_usec is None
    assert contact_from_fields({"Status": "Reachable"}) is None


def test_the_address_comes_from_via_else_from_the_uri() -> None:
    assert contact_address(
        Contact("a", "a", "sip:a@1.2.3.4:5070;ob", "Reachable", via="5.6.7.8:5062")
    ) == ("5.6.7.8", 5062)
    assert contact_address(Contact("a", "a", "sip:a@1.2.3.4:5070;transport=tcp", "Reachable")) == (
        "1.2.3.4",
        5070,
    )
    assert contact_address(Contact("a", "a", "sips:a@[2001:db8::1]:5061", "Reachable")) == (
        "2001:db8::1",
        5061,
    )
    assert contact_address(Contact("a", "a", "sip:gw.example.com", "Reachable")) == (
        "gw.example.com",
        None,
    )


def test_both_drivers_listing_a_name_show_the_better_status_and_pjsip_on_a_tie() -> None:
    sip = [
        Peer("a", "UNKNOWN"),
        Peer("b", "OK (5 ms)"),
        Peer("c", "OK (9 ms)"),
        Peer("s", "OK (1 ms)"),
    ]
    pj = [
        Peer("a", "OK (30 ms)", "10.0.0.1"),
        Peer("b", "UNREACHABLE"),
        Peer("c", "OK (9 ms)", "10.0.0.3"),
        Peer("p", "UNKNOWN"),
    ]
    merged = {peer.name: peer for peer in merge_sources(sip, pj)}
    assert merged["a"] == Peer("a", "OK (30 ms)", "10.0.0.1")
    assert merged["b"] == Peer("b", "OK (5 ms)")
    assert merged["c"].ip == "10.0.0.3"  # tie: PJSIP, the driver MOR migrates to
    assert set(merged) == {"a", "b", "c", "s", "p"}


def test_contact_events_move_one_contact_of_the_set() -> None:
    a = contact("Reachable", 20000, "sip:d@10.0.0.1")
    b = contact("Reachable", 50000, "sip:d@10.0.0.2")

    def event(uri: str, status: str, usec: Optional[int] = None) -> ContactEvent:
        return ContactEvent("dev", "dev", uri, status, usec)

    after = apply_contact_event([a, b], event("sip:d@10.0.0.1", "Unreachable", 0))
    assert best_contact(after, "yes")[0] == "OK (50 ms)"  # the other contact still answers
    after = apply_contact_event(after, event("sip:d@10.0.0.2", "Removed"))
    assert best_contact(after, "yes")[0] == "UNREACHABLE"
    after = apply_contact_event(after, event("sip:d@10.0.0.1", "Removed"))
    assert best_contact(after, "yes") == (None, None)
    added = apply_contact_event([], event("sip:d@10.0.0.9", "NonQualified"))
    assert best_contact(added, "yes")[0] == "Unmonitored"
    assert apply_contact_event([a], event(a.uri, "Updated")) == [a]
    fields = {
        "Event": "ContactStatus",
        "URI": a.uri,
        "ContactStatus": "Reachable",
        "AOR": "dev",
        "EndpointName": "dev",
        "RoundtripUsec": "1234",
    }
    assert contact_event_from_fields(fields) == ContactEvent("dev", "dev", a.uri, "Reachable", 1234)
    assert contact_event_from_fields({**fields, "ContactStatus": "Bogus"}) is None


def test_a_batch_of_contact_events_gives_each_device_its_combined_status() -> None:
    t0 = datetime(2026, 11, 29, 12, 0, 0)
    devices = [Device(1, "dev", "OK (20 ms)", qualify="yes"), Device(2, "other", None)]
    a = Contact("dev", "dev", "sip:d@10.0.0.1:5060", "Reachable", 20000)
    b = Contact("dev", "dev", "sip:d@10.0.0.2:5062", "Reachable", 50000)

    def event(uri: str, status: str, endpoint: str = "dev") -> ContactEvent:
        return ContactEvent(endpoint, endpoint, uri, status, None)

    batch = [
        (t0.replace(second=1), event(a.uri, "Unreachable")),
        (t0.replace(second=2), event("sip:x@10.9.9.9", "Reachable", "stranger")),  # no device
        (t0.replace(second=3), event(b.uri, "Removed")),
    ]
    statuses, sets = apply_contact_events(devices, {1: [a, b]}, batch, None)
    # each event applies to the contacts the one before left: b answers, then it is gone
    assert statuses == [
        KnownStatus("dev", t0.replace(second=1), "OK (50 ms)", "ContactStatus", "10.0.0.2", 5062),
        KnownStatus("dev", t0.replace(second=3), "UNREACHABLE", "ContactStatus", "10.0.0.1", 5060),
    ]
    assert [(c.uri, c.status) for c in sets[1]] == [(a.uri, "Unreachable")]
    assert set(sets) == {1}  # a device no event touched keeps its stored contacts
    gone, sets = apply_contact_events(devices, {1: [a]}, [(t0, event(a.uri, "Removed"))], None)
    assert gone == [KnownStatus("dev", t0, None, "ContactStatus")] and sets == {1: []}


def test_contact_events_older_than_the_last_poll_are_ignored() -> None:
    t0 = datetime(2026, 11, 29, 12, 0, 0)
    devices = [Device(1, "dev", "OK (20 ms)", qualify="yes")]
    a = Contact("dev", "dev", "sip:d@10.0.0.1:5060", "Reachable", 20000)
    late = ContactEvent("dev", "dev", a.uri, "Unreachable", None)
    statuses, sets = apply_contact_events(devices, {1: [a]}, [(t0, late)], t0.replace(second=1))
    assert (statuses, sets) == ([], {})


# --- through the simulator into MariaDB -----------------------------------------------


def endpoints() -> list[SimEndpoint]:
    return [
        SimEndpoint(
            "101",
            [
                SimContact(
                    "sip:101@10.0.0.1:5060", "Reachable", 12400, "Yealink", "10.0.0.1", 5060, "c1"
                ),
                SimContact("sip:101@10.0.9.1:5062;ob", "Unreachable", 0, "Zoiper"),
            ],
        ),
        SimEndpoint("102", [SimContact("sip:102@10.0.0.2:5060", "Reachable", 2_345_000)]),
        SimEndpoint("103", [SimContact("sip:103@10.0.0.3:5060", "Unreachable", 0)]),
        SimEndpoint("104", [SimContact("sip:104@10.0.0.4:5060", "Unknown", 0)]),
        SimEndpoint("105", [SimContact("sip:105@10.0.0.5:5061", "NonQualified", 0, SCRIPT_UA)]),
        SimEndpoint("106"),  # configured, never registered
        SimEndpoint("107", [SimContact("sip:107@10.0.0.7:5060", "Reachable", 150_000)]),
        SimEndpoint("108", [SimContact("sip:108@10.0.0.8:5060", "Reachable", 150_000)]),
        SimEndpoint("201", [SimContact("sip:201@10.0.2.1:5060", "Reachable", 7000)]),
    ]


EXPECTED = {
    "101": "OK (12 ms)",
    "102": "LAGGED (2345 ms)",
    "103": "UNREACHABLE",
    "104": "UNKNOWN",
    "105": "Unmonitored",
    "106": None,
    "107": "LAGGED (150 ms)",  # qualify 100 ms
    "108": "Unmonitored",  # qualify no
    "201": "OK (99 ms)",  # another server's device: untouched
}


@pytest.fixture
def mor(mor_db: MorDatabase) -> MorDatabase:
    mor_db.add_server(1)
    mor_db.add_server(2)
    for device_id, name in enumerate(["101", "102", "103", "104", "105", "106"], start=1):
        mor_db.add_device(device_id, name)
    mor_db.add_device(7, "107", qualify="100")
    mor_db.add_device(8, "108", qualify="no")
    mor_db.add_device(9, "201", server_id=2, reg_status="OK (99 ms)")
    return mor_db


def pjsip_sim(version: str, **options: Any) -> AmiSimulator:
    return AmiSimulator(
        [], version=version, username="mor", secret="s3cret", endpoints=endpoints(), **options
    )


def contact_rows(mor: MorDatabase) -> list[tuple[Any, ...]]:
    return [
        tuple(row)
        for row in mor.execute(
            "SELECT device_id, seq, server_id, uri, user_agent, roundtrip_usec, status, via "
            "FROM mor_regstatus_contacts ORDER BY device_id, seq"
        )
    ]


def seen_by_device(mor: MorDatabase) -> dict[int, Any]:
    rows = mor.execute("SELECT device_id, MAX(seen) FROM mor_regstatus_contacts GROUP BY 1")
    return {row[0]: row[1] for row in rows}


@pytest.mark.parametrize("version", PJSIP_VERSIONS)
def test_every_pjsip_version_gives_the_gui_strings(
    version: str, mor: MorDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with run_in_thread(pjsip_sim(version)) as sim:
        result = summary(write_conf(tmp_path, mor.url, sim, peer_source="pjsip"), capsys)
    statuses = mor.reg_statuses()
    assert statuses == EXPECTED
    for name, value in statuses.items():  # MOR's GUI colours by prefix: every string fits
        assert kind_of(value) == kind_of(EXPECTED[name])
        assert (
            value is None
            or value in ("UNREACHABLE", "UNKNOWN", "Unmonitored")
            or (value.startswith(("OK (", "LAGGED (")) and value.endswith(" ms)"))
        )
    assert result["counts"] == {
        "ok": 1,
        "lagged": 2,
        "unreachable": 1,
        "unknown": 1,
        "unmonitored": 2,
        "none": 1,
    }
    created = "Created" if version == "13" else "NonQualified"
    rows = contact_rows(mor)
    assert rows[:2] == [
        (1, 0, 1, "sip:101@10.0.0.1:5060", "Yealink", 12400, "Reachable", "10.0.0.1:5060"),
        (1, 1, 1, "sip:101@10.0.9.1:5062;ob", "Zoiper", None, "Unreachable", None),
    ]
    assert (5, 0, 1, "sip:105@10.0.0.5:5061", SCRIPT_UA, None, created, None) in rows
    assert {row[0] for row in rows} == {1, 2, 3, 4, 5, 7, 8}  # not 106, not server 2's 201
    ip, port = mor.execute("SELECT ip, port FROM mor_regstatus_devices WHERE device_id = 1").one()
    assert (ip, port) == ("10.0.0.1", 5060)
    wrong = mor.execute("SELECT device_id, reg_status FROM mor_regstatus_wrong_server").all()
    assert [tuple(w) for w in wrong] == [(9, "OK (7 ms)")]


def test_a_second_run_rewrites_no_contact_and_a_changed_one_only_its_device(
    mor: MorDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with run_in_thread(pjsip_sim("20")) as sim:
        conf = write_conf(tmp_path, mor.url, sim, peer_source="pjsip")
        summary(conf, capsys)
        before = contact_rows(mor)
        seen = seen_by_device(mor)
        # microseconds of jitter within the same millisecond change nothing
        sim.endpoints[0].contacts[0].rtt_usec = 12300
        again = summary(conf, capsys)
        assert (again["changed"], again["state_changes"]) == (0, 0)
        assert contact_rows(mor)[1:] == before[1:]
        # contact 101's second phone comes back, 103 unregisters
        sim.endpoints[0].contacts[1].status = "Reachable"
        sim.endpoints[0].contacts[1].rtt_usec = 8000
        sim.endpoints[2].contacts = []
        time.sleep(1.1)  # "seen" has whole seconds
        summary(conf, capsys)
    assert mor.reg_statuses()["101"] == "OK (8 ms)"
    assert mor.reg_statuses()["103"] is None
    after = seen_by_device(mor)
    assert 3 not in after
    assert after[1] > seen[1]
    assert {d: after[d] for d in after if d != 1} == {d: seen[d] for d in seen if d not in (1, 3)}


@pytest.mark.parametrize("version", ["21", "22"])
def test_auto_reads_pjsip_when_sippeers_is_refused(
    version: str, mor: MorDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with run_in_thread(pjsip_sim(version)) as sim:
        summary(write_conf(tmp_path, mor.url, sim), capsys)  # peer_source defaults to auto
        assert sim.actions["SIPpeers"] == 1 and sim.actions["PJSIPShowContacts"] == 1
    assert mor.reg_statuses() == EXPECTED


def test_auto_keeps_chan_sip_where_it_answers(
    mor: MorDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    peers = [SimPeer("101", "OK (44 ms)", ip="10.0.0.1", port=5060)]
    sim = AmiSimulator(peers, version="20", username="mor", secret="s3cret", endpoints=endpoints())
    with run_in_thread(sim):
        summary(write_conf(tmp_path, mor.url, sim), capsys)
        assert sim.actions["PJSIPShowContacts"] == 0
    assert mor.reg_statuses()["101"] == "OK (44 ms)"
    assert mor.reg_statuses()["102"] is None


def test_auto_reads_pjsip_where_chan_sip_is_loaded_but_empty(
    mor: MorDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with run_in_thread(pjsip_sim("18")) as sim:  # chan_sip loaded, no peer
        summary(write_conf(tmp_path, mor.url, sim), capsys)
        assert sim.actions["SIPpeers"] == 1 and sim.actions["PJSIPShowContacts"] == 1
    assert mor.reg_statuses() == EXPECTED


def test_asterisk_13_to_15_lists_endpoints_then_asks_only_those_with_contacts(
    mor: MorDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with run_in_thread(pjsip_sim("13")) as sim:
        summary(write_conf(tmp_path, mor.url, sim, peer_source="pjsip"), capsys)
        assert sim.actions["PJSIPShowContacts"] == 1  # refused: unknown before 16
        assert sim.actions["PJSIPShowEndpoints"] == 1
        assert sim.actions["PJSIPShowEndpoint"] == 8  # every endpoint but 106


def test_both_merges_a_server_running_both_drivers(
    mor: MorDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    peers = [
        SimPeer("101", "UNKNOWN"),  # realtime peer loaded, registered through PJSIP instead
        SimPeer("103", "OK (33 ms)", ip="10.0.1.3", port=5060),  # still on chan_sip
        SimPeer("106", "OK (5 ms)", ip="10.0.1.6", port=5060),  # only on chan_sip
    ]
    sim = AmiSimulator(peers, version="18", username="mor", secret="s3cret", endpoints=endpoints())
    with run_in_thread(sim):
        result = summary(write_conf(tmp_path, mor.url, sim, peer_source="both"), capsys)
    statuses = mor.reg_statuses()
    assert statuses["101"] == "OK (12 ms)"
    assert statuses["103"] == "OK (33 ms)"
    assert statuses["106"] == "OK (5 ms)"
    assert statuses["104"] == "UNKNOWN"
    assert result["peers"] == 9  # 3 chan_sip + 8 PJSIP endpoints with contacts - 2 shared


def test_both_on_asterisk_22_reads_pjsip_alone(
    mor: MorDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with run_in_thread(pjsip_sim("22")) as sim:
        summary(write_conf(tmp_path, mor.url, sim, peer_source="both"), capsys)
    assert mor.reg_statuses() == EXPECTED


def test_pjsip_without_res_pjsip_fails_with_one_line(
    mor: MorDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with run_in_thread(pjsip_sim("22", faults=Faults(no_pjsip=True))) as sim:
        code, _, err = run(write_conf(tmp_path, mor.url, sim), capsys=capsys)
    assert code == 3
    assert "res_pjsip is not loaded" in err and "chan_sip is not loaded either" in err
    assert len(err.strip().splitlines()) == 1


def test_no_contacts_at_all_is_an_empty_list_not_an_error(
    mor: MorDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mor.execute("UPDATE devices SET reg_status = 'OK (3 ms)' WHERE id = 1")
    sim = AmiSimulator([], version="22", username="mor", secret="s3cret")
    with run_in_thread(sim):
        result = summary(write_conf(tmp_path, mor.url, sim), capsys)
    assert result["peers"] == 0
    assert mor.reg_statuses()["101"] is None


def test_ten_thousand_endpoints_stream_within_the_cycle_target(
    mor: MorDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    eps = realistic_endpoints(10_000, seed=7)
    mor.execute(
        "INSERT INTO devices (id, name, server_id, device_type, user_id, secret, context, "
        "extension, username, qualify) "
        + "SELECT seq + 100, CONCAT('', 100000 + seq), 1, 'SIP', 2, 's', 'mor', seq, seq, 'yes' "
        "FROM seq_0_to_9999"
    )
    sim = AmiSimulator([], version="22", username="mor", secret="s3cret", endpoints=eps)
    with run_in_thread(sim):
        conf = write_conf(tmp_path, mor.url, sim)
        cold = summary(conf, capsys)
        steady = summary(conf, capsys)
    assert cold["peers"] == sum(1 for ep in eps if ep.contacts)
    assert steady["changed"] == 0
    n = mor.execute("SELECT COUNT(*) FROM mor_regstatus_contacts").scalar()
    assert n == sum(len(ep.contacts) for ep in eps)


# --- the listener ------------------------------------------------------------------


def test_contact_status_events_reach_the_database_within_a_second(
    mor: MorDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = pjsip_sim("20")
    with run_in_thread(sim):
        conf = write_conf(
            tmp_path, mor.url, sim, peer_source="pjsip", watch_ping_interval=0.3, ami_timeout=1
        )
        summary(conf, capsys)  # the poll's baseline, contacts included
        with listening(load_settings(conf)):
            wait_for(lambda: sim.event_sessions == 1)
            for uri, status, usec, expected in [
                # 101's desk phone stops answering; its softphone is unreachable too
                ("sip:101@10.0.0.1:5060", "Unreachable", None, "UNREACHABLE"),
                # the softphone answers: one reachable contact is enough
                ("sip:101@10.0.9.1:5062;ob", "Reachable", 31_000, "OK (31 ms)"),
                ("sip:101@10.0.9.1:5062;ob", "Reachable", 2_600_000, "LAGGED (2600 ms)"),
                ("sip:101@10.0.0.1:5060", "Reachable", 18_000, "OK (18 ms)"),
                ("sip:101@10.0.0.1:5060", "Removed", None, "LAGGED (2600 ms)"),
                ("sip:101@10.0.9.1:5062;ob", "Removed", None, None),
                ("sip:101@10.0.7.7:5060", "NonQualified", None, "Unmonitored"),
            ]:
                started = time.monotonic()
                sim.emit_contact_status("101", uri, status, usec)
                wait_for(lambda e=expected: mor.reg_statuses()["101"] == e, timeout=1.0)
                assert time.monotonic() - started < 1.0
            sim.emit_contact_status("201", "sip:201@10.0.2.1:5060", "Unreachable")  # server 2's
            sim.emit_contact_status("107", "sip:107@10.0.0.7:5060", "Reachable", 90_000)
            wait_for(lambda: mor.reg_statuses()["107"] == "OK (90 ms)", timeout=1.0)
    assert mor.reg_statuses()["201"] == "OK (99 ms)"
    uris = mor.execute("SELECT uri, status FROM mor_regstatus_contacts WHERE device_id = 1").all()
    assert [tuple(u) for u in uris] == [("sip:101@10.0.7.7:5060", "NonQualified")]
    history = mor.execute(
        "SELECT to_status, source FROM mor_regstatus_history WHERE device_id = 1 ORDER BY id"
    ).all()
    assert [tuple(h) for h in history] == [
        ("unreachable", "event"),
        ("ok", "event"),
        ("lagged", "event"),
        ("ok", "event"),
        ("lagged", "event"),
        ("none", "event"),
        ("unmonitored", "event"),
    ]


# --- the widget --------------------------------------------------------------------


def test_the_status_iframe_lists_every_contact_with_the_user_agent_escaped(
    mor: MorDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from test_widget import make_app, text_of

    with run_in_thread(pjsip_sim("22")) as sim:
        summary(write_conf(tmp_path, mor.url, sim), capsys)
    client = make_app(mor.url).test_client()
    page = client.get("/devices/1/status").get_data(as_text=True)
    words = text_of(page)
    assert "2 contacts" in words
    assert "sip:101@10.0.0.1:5060 Reachable 12 ms Yealink 10.0.0.1:5060" in words
    assert "sip:101@10.0.9.1:5062;ob Unreachable – Zoiper" in words
    page = client.get("/devices/5/status").get_data(as_text=True)
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#34;ua&#34;)&lt;/script&gt;" in page
    assert SCRIPT_UA in unescape(page)
    assert "contact" not in text_of(client.get("/devices/6/status").get_data(as_text=True))


def test_migration_3_adds_the_contacts_table_and_runs_twice_safely(mor_db: MorDatabase) -> None:
    from sqlalchemy import create_engine, inspect, text

    from mor_plugin import store

    engine = create_engine(mor_db.url)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    assert store.migrate(engine, now) == [1, 2, 3, 4, 5]
    with engine.begin() as conn:  # a database at schema 2
        conn.execute(text("DROP TABLE mor_regstatus_contacts"))
        conn.execute(text("DELETE FROM mor_regstatus_schema WHERE version >= 3"))
    assert store.migrate(engine, now) == [3, 4, 5]
    for _ in range(2):
        with engine.begin() as conn:
            store.migrations._migration_3(conn)
    assert store.migrate(engine, now) == []
    with engine.connect() as conn:
        keys = inspect(conn).get_pk_constraint("mor_regstatus_contacts")["constrained_columns"]
    assert keys == ["device_id", "seq"]
    engine.dispose()


# --- the simulator on the wire ------------------------------------------------------


def pjsip_client(sim: AmiSimulator) -> Any:
    from test_simulator import AmiClient, get

    client = AmiClient(sim.port)
    client.send("Login", Username="mor", Secret="s3cret", Events="off")
    assert get(client.read(), "Response") == "Success"
    return client


def read_list(client: Any, complete: str) -> tuple[Any, list[Any], Any]:
    from test_simulator import get

    response = client.read()
    events = []
    while get(response, "Response") == "Success":
        message = client.read()
        if get(message, "Event") == complete:
            return response, events, message
        events.append(message)
    return response, events, None


def test_contact_list_fields_follow_each_versions_hash_order() -> None:
    from test_simulator import get, keys

    orders = {}
    for version in ("16", "18", "20", "22"):
        with run_in_thread(pjsip_sim(version)) as sim:
            client = pjsip_client(sim)
            client.send("PJSIPShowContacts", ActionID="c1")
            response, events, complete = read_list(client, "ContactListComplete")
            client.close()
        assert keys(response) == ["Response", "ActionID", "EventList", "Message"]
        assert keys(complete) == ["Event", "ActionID", "EventList", "ListItems"]
        assert get(complete, "ListItems") == str(len(events)) == "9"
        first = events[0]
        assert keys(first)[:4] == ["Event", "ActionID", "ObjectType", "ObjectName"]
        assert keys(first)[-2:] == ["Status", "RoundtripUsec"]
        assert "CallId" in keys(first) and "CallID" not in keys(first)
        orders[version] = keys(first)[4:-2]
    # recorded from Debian's 16.28 (tests/data/ami/ast16-pjsipshowcontacts.txt)
    assert orders["16"][:4] == ["ViaAddr", "QualifyTimeout", "CallId", "RegServer"]
    assert len({tuple(order) for order in orders.values()}) == 4  # no two alike
    assert "Qualify2xxOnly" in orders["22"] and "Qualify2xxOnly" not in orders["20"]


def test_asterisk_13_has_no_show_contacts_and_prints_created(
    serve_13: AmiSimulator,
) -> None:
    from test_simulator import get, keys

    client = pjsip_client(serve_13)
    client.send("PJSIPShowContacts", ActionID="c")
    refused = client.read()
    assert get(refused, "Message").startswith("Invalid/unknown command: PJSIPShowContacts.")
    client.send("PJSIPShowEndpoint", ActionID="e", Endpoint="PJSIP/101")
    _, events, complete = read_list(client, "EndpointDetailComplete")
    assert [get(e, "Event") for e in events] == [
        "EndpointDetail", "AuthDetail", "AorDetail", "ContactStatusDetail", "ContactStatusDetail",
    ]  # fmt: skip
    detail = events[3]
    assert keys(detail)[:8] == [
        "Event", "ActionID", "AOR", "URI", "UserAgent", "RegExpire", "ViaAddress", "CallID",
    ]  # fmt: skip
    unreachable = events[4]
    assert (get(unreachable, "Status"), get(unreachable, "RoundtripUsec")) == ("Unreachable", "0")
    assert get(complete, "ListItems") == "5"  # every event but the complete one
    client.send("PJSIPShowEndpoint", ActionID="e2", Endpoint="105")
    _, events, _ = read_list(client, "EndpointDetailComplete")
    assert get(events[-1], "Status") == "Created"
    client.send("PJSIPShowEndpoint", ActionID="e3", Endpoint="nobody")
    assert get(client.read(), "Message") == "Unable to retrieve endpoint nobody\n"
    client.close()


@pytest.fixture
def serve_13() -> Iterator[AmiSimulator]:
    with run_in_thread(pjsip_sim("13")) as sim:
        yield sim


def test_no_contacts_is_an_error_with_asterisks_stray_newline() -> None:
    with run_in_thread(AmiSimulator([], version="20", username="mor", secret="s3cret")) as sim:
        client = pjsip_client(sim)
        client.send("PJSIPShowContacts", ActionID="x")
        raw = client.raw()
        client.close()
    assert raw == b"Response: Error\r\nActionID: x\r\nMessage: No Contacts found\n\r\n\r\n"


def test_contact_status_events_carry_the_fields_of_stasis_endpoints() -> None:
    from test_simulator import AmiClient, keys

    for version, label in (("13", "Created"), ("22", "NonQualified")):
        with run_in_thread(pjsip_sim(version)) as sim:
            client = AmiClient(sim.port)
            client.send("Login", Username="mor", Secret="s3cret", Events="system")
            client.read()
            client.read()  # FullyBooted (11+)
            wait_for(lambda s=sim: s.event_sessions == 1)
            sim.emit_contact_status("108", "sip:108@10.0.0.8:5060", "NonQualified")
            event = client.read()
            client.close()
        assert keys(event) == [
            "Event", "Privilege", "URI", "ContactStatus", "AOR", "EndpointName", "RoundtripUsec",
        ]  # fmt: skip
        assert dict(event)["ContactStatus"] == label


def test_a_known_status_sets_the_combined_string_or_null() -> None:
    from mor_plugin.status import Device, DeviceState, KnownStatus, plan_events

    at = datetime(2026, 11, 29, 12, 0, 0)
    device = Device(1, "101", "OK (12 ms)", qualify="yes")
    state = DeviceState(1, 1, "ok", at, observed_at=at, ip="10.0.0.1", port=5060)
    gone = KnownStatus("101", at.replace(second=5), None, "ContactStatus")
    plan = plan_events(1, [gone], [device], {1: state}, 3600)
    assert plan.reg_status_changes == ((1, None),)
    assert [(t.from_status, t.to_status) for t in plan.transitions] == [("ok", "none")]
    down = KnownStatus("101", at.replace(second=6), "UNREACHABLE", "ContactStatus")
    plan = plan_events(1, [down], [device], {1: state}, 0)  # the hour rule applies as for chan_sip
    assert plan.reg_status_changes == ((1, "UNKNOWN"),)
