"""The AMI simulator speaks Asterisk's manager protocol as each version does.

Real TCP on 127.0.0.1 with a plain-socket client that parses by key, per-version
field lists written from chan_sip's source, and a byte-for-byte conformance check of
versions 16 and 22 against AMI transcripts recorded from Debian's real Asterisk 16.28
and 22.10 (``tests/data/ami``, written by ``python -m testbed.record``).
"""

from __future__ import annotations

import hashlib
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from recorded_ami import RECORDED, Pairs, Transcript, parse, split_messages, transcript

import mor_plugin
from mor_plugin.simulator import (
    VERSIONS,
    AmiSimulator,
    Faults,
    SimContact,
    SimEndpoint,
    SimPeer,
    main,
    realistic_peers,
    run_in_thread,
)

BANNERS = {
    "1.4": "Asterisk Call Manager/1.0",
    "1.6": "Asterisk Call Manager/1.1",
    "1.8": "Asterisk Call Manager/1.1",
    "10": "Asterisk Call Manager/1.2",
    "11": "Asterisk Call Manager/1.3",
    "13": "Asterisk Call Manager/2.10.6",
    "16": "Asterisk Call Manager/5.0.4",  # Debian 11's 16.28.0 (recorded)
    "18": "Asterisk Call Manager/7.0.3",
    "20": "Asterisk Call Manager/9.0.0",
    "21": "Asterisk Call Manager/10.0.0",
    "22": "Asterisk Call Manager/11.0.0",
}

# PeerEntry keys per version, written from chan_sip.c (manager branch of
# _sip_show_peers) at 1.4.44, 1.6.2.24, 1.8.32.3, 10.12.4, 11.25.3, 13.38.3, 20.10.0.
_HEAD = ["Event", "ActionID", "Channeltype", "ObjectName", "ChanObjectType"]
_HEAD += ["IPaddress", "IPport", "Dynamic"]
_V11 = _HEAD + ["AutoForcerport", "Forcerport", "AutoComedia", "Comedia", "VideoSupport"]
_V11 += ["TextSupport", "ACL", "Status", "RealtimeDevice", "Description"]
ENTRY_KEYS = {
    "1.4": _HEAD + ["Natsupport", "VideoSupport", "ACL", "Status", "RealtimeDevice"],
    "1.6": _HEAD + ["Natsupport", "VideoSupport", "TextSupport", "ACL", "Status", "RealtimeDevice"],
    "1.8": _HEAD + ["Forcerport", "VideoSupport", "TextSupport", "ACL", "Status", "RealtimeDevice"],
    "10": _HEAD
    + ["Forcerport", "VideoSupport", "TextSupport", "ACL", "Status", "RealtimeDevice"]
    + ["Description"],
    "11": _V11,
    "13": _V11 + ["Accountcode"],
    "16": _V11 + ["Accountcode"],
    "18": _V11 + ["Accountcode"],
    "20": _V11 + ["Accountcode"],
}
CHAN_SIP_VERSIONS = list(ENTRY_KEYS)
NEW_LIST_VERSIONS = [v for v in CHAN_SIP_VERSIONS if v not in ("1.4", "1.6", "1.8", "10", "11")]

LIST_COMMANDS = "Use Action: ListCommands to show available commands."

PEERS = [
    SimPeer("2001", "OK (23 ms)", "10.1.2.3", 5062, useragent="Yealink SIP-T46S 66.86.0.15"),
    SimPeer("2002", "LAGGED (2345 ms)", "192.168.7.8", 5060),
    SimPeer("2003", "UNREACHABLE", "10.9.9.9", 5070),
    SimPeer("2004", "UNKNOWN"),
    SimPeer("2005", "Unmonitored", "10.4.4.4", 5099, description="Reception"),
    SimPeer("provider1", "OK (4 ms)", "203.0.113.5", 5060, dynamic=False),
]


# -- a plain-socket AMI client ---------------------------------------------


def keys(message: Pairs) -> list[str]:
    return [k for k, _ in message]


def get(message: Pairs, key: str) -> Optional[str]:
    return next((v for k, v in message if k.lower() == key.lower()), None)


class AmiClient:
    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._buf = bytearray()
        self.banner = self.take(b"\r\n").decode().rstrip("\r\n")

    def take(self, sep: bytes = b"\r\n\r\n") -> bytes:
        """Bytes up to and including the next ``sep``."""
        start = 0
        while True:
            i = self._buf.find(sep, start)
            if i >= 0:
                out = bytes(self._buf[: i + len(sep)])
                del self._buf[: i + len(sep)]
                return out
            start = max(0, len(self._buf) - len(sep) + 1)
            data = self.sock.recv(1 << 16)
            if not data:
                raise EOFError(bytes(self._buf))
            self._buf += data

    def raw(self) -> bytes:
        """The next non-empty message, raw."""
        while True:
            raw = self.take()
            if raw.strip(b"\r\n"):
                return raw

    def read(self) -> Pairs:
        return parse(self.raw())

    def send(self, action: str, **headers: str) -> None:
        lines = [f"Action: {action}"] + [f"{k}: {v}" for k, v in headers.items()]
        self.send_raw("\r\n".join(lines) + "\r\n\r\n")

    def send_raw(self, text: str) -> None:
        self.sock.sendall(text.encode())

    def login(self, username: str = "mor", secret: str = "morsecret", **extra: str) -> Pairs:  # noqa: S107
        self.send("Login", Username=username, Secret=secret, Events="off", **extra)
        return self.read()

    def sippeers(self, **headers: str) -> tuple[Pairs, list[Pairs], Pairs]:
        """The list response, its PeerEntry events and its PeerlistComplete."""
        self.send("SIPpeers", **headers)
        response = self.read()
        entries: list[Pairs] = []
        while True:
            message = self.read()
            if get(message, "Event") == "PeerlistComplete":
                return response, entries, message
            entries.append(message)

    def closed(self, within: float = 3.0) -> bool:
        """True once the server has closed the connection (nothing else arrives)."""
        self.sock.settimeout(within)
        try:
            return self.sock.recv(1 << 16) == b""
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., AmiSimulator]]:
    """Start simulators in threads; everything is stopped after the test."""
    with ExitStack() as stack:

        def start(peers: Sequence[SimPeer] = PEERS, **kwargs: Any) -> AmiSimulator:
            # Copies: drift and set_status change peers in place.
            sim = AmiSimulator([replace(p) for p in peers], **kwargs)
            return stack.enter_context(run_in_thread(sim))

        yield start


@pytest.fixture
def connect() -> Iterator[Callable[[AmiSimulator], AmiClient]]:
    clients: list[AmiClient] = []

    def open_client(sim: AmiSimulator) -> AmiClient:
        clients.append(AmiClient(sim.port))
        return clients[-1]

    yield open_client
    for client in clients:
        client.close()


# -- banner and login -------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_banner_names_the_ami_version_of_each_asterisk(serve, connect, version):
    sim = serve(version=version)
    assert connect(sim).banner == BANNERS[version]


def test_login_with_the_right_secret_is_accepted(serve, connect):
    sim = serve()
    reply = connect(sim).login(ActionID="L1")
    assert reply == [
        ("Response", "Success"),
        ("ActionID", "L1"),
        ("Message", "Authentication accepted"),
    ]
    assert sim.logins == 1
    assert sim.actions["Login"] == 1


def test_a_wrong_secret_is_refused_after_a_second_and_the_socket_closes(serve, connect):
    sim = serve()
    client = connect(sim)
    started = time.monotonic()
    reply = client.login(secret="wrong", ActionID="L1")
    elapsed = time.monotonic() - started
    assert reply == [
        ("Response", "Error"),
        ("ActionID", "L1"),
        ("Message", "Authentication failed"),
    ]
    assert elapsed >= 0.95
    assert client.closed()
    assert sim.logins == 0
    assert sim.login_failures == 1


def test_bad_auth_fault_refuses_even_the_right_secret(serve, connect):
    sim = serve(faults=Faults(bad_auth=True, auth_fail_delay=0.05))
    client = connect(sim)
    assert get(client.login(), "Message") == "Authentication failed"
    assert client.closed()


def test_md5_challenge_login_is_accepted(serve, connect):
    sim = serve()
    client = connect(sim)
    client.send("Challenge", AuthType="MD5", ActionID="c")
    challenge = client.read()
    assert keys(challenge) == ["Response", "ActionID", "Challenge"]
    answer = (get(challenge, "Challenge") or "") + "morsecret"
    key = hashlib.md5(answer.encode(), usedforsecurity=False).hexdigest()
    client.send("Login", AuthType="MD5", Username="mor", Key=key, Events="off")
    assert get(client.read(), "Message") == "Authentication accepted"


@pytest.mark.parametrize(
    ("version", "message"),
    [("11", "Permission denied"), ("20", "Permission denied"), ("1.4", "Authentication Required")],
)
def test_actions_before_login_are_refused(serve, connect, version, message):
    client = connect(serve(version=version))
    client.send("SIPpeers", ActionID="p")
    assert client.read() == [("Response", "Error"), ("ActionID", "p"), ("Message", message)]


def test_a_message_without_action_is_an_error(serve, connect):
    client = connect(serve())
    client.send_raw("ActionID: 7\r\nFoo: bar\r\n\r\n")
    assert client.read() == [
        ("Response", "Error"),
        ("ActionID", "7"),
        ("Message", "Missing action in request"),
    ]


def test_keys_of_client_actions_are_case_insensitive(serve, connect):
    sim = serve()
    client = connect(sim)
    client.send_raw("action: login\r\nusername: mor\r\nsecret: morsecret\r\nevents: off\r\n\r\n")
    assert get(client.read(), "Message") == "Authentication accepted"
    client.send_raw("ACTION: sippeers\r\nactionid: lower\r\n\r\n")
    assert get(client.read(), "ActionID") == "lower"
    assert sim.actions["SIPpeers"] == 1


@pytest.mark.parametrize(
    ("version", "fully_booted"),
    [
        ("11", ["Event", "Privilege", "Status"]),
        ("20", ["Event", "Privilege", "Uptime", "LastReload", "Status"]),
    ],
)
def test_login_with_events_on_gets_fully_booted_and_events_off_does_not(
    serve, connect, version, fully_booted
):
    sim = serve(version=version)
    on = connect(sim)
    on.send("Login", Username="mor", Secret="morsecret", Events="on")
    assert get(on.read(), "Message") == "Authentication accepted"
    assert keys(on.read()) == fully_booted
    off = connect(sim)
    off.login()
    off.send("Ping", ActionID="next")
    assert get(off.read(), "Ping") == "Pong"  # the very next message: no FullyBooted


# -- SIPpeers -----------------------------------------------------------------


def logged_in(serve, connect, **kwargs: Any) -> tuple[AmiSimulator, AmiClient]:
    sim = serve(**kwargs)
    client = connect(sim)
    assert get(client.login(), "Response") == "Success"
    return sim, client


@pytest.mark.parametrize("version", CHAN_SIP_VERSIONS)
def test_peer_entries_carry_the_fields_of_the_version(serve, connect, version):
    _, client = logged_in(serve, connect, version=version)
    _, entries, _ = client.sippeers(ActionID="fields")
    assert len(entries) == len(PEERS)
    for entry in entries:
        assert keys(entry) == ENTRY_KEYS[version]


@pytest.mark.parametrize("version", CHAN_SIP_VERSIONS)
def test_action_id_is_second_in_responses_and_entries(serve, connect, version):
    _, client = logged_in(serve, connect, version=version)
    response, entries, complete = client.sippeers(ActionID="id-42")
    assert response[:2] == [("Response", "Success"), ("ActionID", "id-42")]
    assert all(entry[1] == ("ActionID", "id-42") for entry in entries)
    if version in NEW_LIST_VERSIONS:  # 13.2+: astman_send_list_complete_start
        assert keys(complete) == ["Event", "ActionID", "EventList", "ListItems"]
    elif version == "1.4":
        assert keys(complete) == ["Event", "ListItems", "ActionID"]
    else:
        assert keys(complete) == ["Event", "EventList", "ListItems", "ActionID"]
    assert get(complete, "ActionID") == "id-42"


@pytest.mark.parametrize("version", ["1.4", "11", "20"])
def test_without_action_id_nothing_echoes_one(serve, connect, version):
    _, client = logged_in(serve, connect, version=version)
    response, entries, complete = client.sippeers()
    assert "ActionID" not in keys(response) + keys(complete)
    assert all("ActionID" not in keys(entry) for entry in entries)


def test_list_response_and_complete_frame_the_entries(serve, connect):
    _, client = logged_in(serve, connect, version="11")
    response, entries, complete = client.sippeers(ActionID="x")
    assert response == [
        ("Response", "Success"),
        ("ActionID", "x"),
        ("EventList", "start"),
        ("Message", "Peer status list will follow"),
    ]
    assert get(complete, "EventList") == "Complete"
    assert get(complete, "ListItems") == str(len(entries))


def test_asterisk_1_4_lists_without_event_list_lines(serve, connect):
    _, client = logged_in(serve, connect, version="1.4")
    response, _, complete = client.sippeers(ActionID="x")
    assert keys(response) == ["Response", "ActionID", "Message"]
    assert "EventList" not in keys(complete)


def test_list_items_equals_the_number_of_entries_and_names_come_sorted(serve, connect):
    peers = realistic_peers(250, seed=3)
    _, client = logged_in(serve, connect, peers=list(reversed(peers)))
    _, entries, complete = client.sippeers()
    names = [get(entry, "ObjectName") for entry in entries]
    assert get(complete, "ListItems") == "250"
    assert names == sorted(p.name for p in peers)  # chan_sip >= 1.6 sorts by name


def test_entries_report_each_peer_as_chan_sip_prints_it(serve, connect):
    _, client = logged_in(serve, connect, version="11")
    _, entries, _ = client.sippeers()
    by_name = {get(entry, "ObjectName"): dict(entry) for entry in entries}
    assert by_name["2001"]["Status"] == "OK (23 ms)"
    assert (by_name["2001"]["IPaddress"], by_name["2001"]["IPport"]) == ("10.1.2.3", "5062")
    assert by_name["2002"]["Status"] == "LAGGED (2345 ms)"
    assert by_name["2005"]["Description"] == "Reception"
    assert by_name["provider1"]["Dynamic"] == "no"
    assert by_name["2001"]["Dynamic"] == "yes"


@pytest.mark.parametrize("version", ["1.4", "11", "20"])
def test_a_peer_without_address_lists_none_and_port_0(serve, connect, version):
    _, client = logged_in(serve, connect, version=version)
    _, entries, _ = client.sippeers()
    entry = next(e for e in entries if get(e, "ObjectName") == "2004")
    assert (get(entry, "IPaddress"), get(entry, "IPport")) == ("-none-", "0")
    assert get(entry, "Status") == "UNKNOWN"


@pytest.mark.parametrize(
    ("version", "line"),
    [
        ("10", b"Description: \r\n"),
        ("11", b"Description: \r\n"),
        ("13", b"Accountcode: \r\n"),
        ("20", b"Accountcode: \r\n"),
    ],
)
def test_empty_values_keep_their_trailing_space(serve, connect, version, line):
    _, client = logged_in(serve, connect, version=version, peers=[SimPeer("9")])
    client.send("SIPpeers")
    client.raw()
    assert line in client.raw()


def test_every_line_ends_in_crlf(serve, connect):
    _, client = logged_in(serve, connect)
    client.send("SIPpeers")
    stream = b"".join(client.raw() for _ in range(len(PEERS) + 2))
    assert stream.count(b"\n") == stream.count(b"\r\n")


def test_lists_are_byte_identical_without_drift(serve, connect):
    _, client = logged_in(serve, connect, peers=realistic_peers(300, seed=5))
    lists = []
    for _ in range(2):
        client.send("SIPpeers", ActionID="a")
        lists.append(b"".join(client.raw() for _ in range(300 + 2)))
    assert lists[0] == lists[1]


def test_drift_moves_latencies_a_few_ms_between_lists(serve, connect):
    peers = realistic_peers(300, seed=5)
    _, client = logged_in(serve, connect, peers=peers, drift=True, seed=1)
    first = {get(e, "ObjectName"): get(e, "Status") for e in client.sippeers()[1]}
    second = {get(e, "ObjectName"): get(e, "Status") for e in client.sippeers()[1]}
    assert first != second
    timed = re.compile(r"^(OK|LAGGED) \((\d+) ms\)$")
    for name, before in first.items():
        after = second[name]
        m1, m2 = timed.match(before or ""), timed.match(after or "")
        if m1 is None:
            assert after == before  # UNREACHABLE/UNKNOWN/Unmonitored do not drift
        else:
            assert m2 is not None and m2.group(1) == m1.group(1)
            assert abs(int(m2.group(2)) - int(m1.group(2))) <= 3


def test_changes_between_runs_show_in_the_next_list(serve, connect):
    sim, client = logged_in(serve, connect)
    sim.set_status("2003", "OK (31 ms)")
    sim.peers.append(SimPeer("2999", "OK (5 ms)", "10.0.0.9", 5060))
    _, entries, complete = client.sippeers()
    by_name = {get(e, "ObjectName"): get(e, "Status") for e in entries}
    assert by_name["2003"] == "OK (31 ms)"
    assert "2999" in by_name
    assert get(complete, "ListItems") == str(len(PEERS) + 1)
    with pytest.raises(KeyError):
        sim.set_status("nobody", "UNKNOWN")


def test_streams_100k_peers_fast(serve, connect):
    peers = realistic_peers(100_000)
    _, client = logged_in(serve, connect, peers=peers)
    started = time.perf_counter()
    client.send("SIPpeers", ActionID="big")
    total, tail = 0, b""
    while not (b"ListItems: 100000\r\n" in tail and tail.endswith(b"\r\n\r\n")):
        data = client.sock.recv(1 << 20)
        assert data
        total += len(data)
        tail = (tail + data)[-256:]
    elapsed = time.perf_counter() - started
    assert total > 30_000_000
    assert elapsed < 1.5, f"100k peers took {elapsed:.2f} s"


# -- faults ---------------------------------------------------------------------


def test_drop_after_closes_the_connection_after_n_entries(serve, connect):
    _, client = logged_in(serve, connect, faults=Faults(drop_after=3))
    client.send("SIPpeers")
    client.read()
    assert [get(client.read(), "Event") for _ in range(3)] == ["PeerEntry"] * 3
    assert client.closed()


def test_hang_after_goes_silent_until_stop_closes_the_connection(connect):
    sim = AmiSimulator(PEERS, faults=Faults(hang_after=2))
    with run_in_thread(sim):
        client = connect(sim)
        client.login()
        client.send("SIPpeers")
        client.read()
        assert [get(client.read(), "Event") for _ in range(2)] == ["PeerEntry"] * 2
        assert not client.closed(within=0.3)  # open, and nothing more arrives
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 2
    assert client.closed()


def test_stop_closes_idle_and_unread_connections(connect):
    sim = AmiSimulator(realistic_peers(20_000))
    with run_in_thread(sim):
        idle = connect(sim)
        idle.login()
        stuck = connect(sim)  # asks for a big list and never reads it
        stuck.login()
        stuck.send("SIPpeers")
        time.sleep(0.2)
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 2
    assert idle.closed()


def test_slow_spaces_out_the_entries(serve, connect):
    _, client = logged_in(serve, connect, faults=Faults(slow=0.05))
    started = time.monotonic()
    _, entries, _ = client.sippeers()
    assert len(entries) == len(PEERS)
    assert time.monotonic() - started >= 0.05 * (len(PEERS) - 1)


def test_garbage_is_injected_but_every_peer_still_arrives(serve, connect):
    _, client = logged_in(serve, connect, faults=Faults(garbage=True))
    client.send("SIPpeers", ActionID="g")
    client.raw()
    raws: list[bytes] = []
    while b"PeerlistComplete" not in (raws[-1] if raws else b""):
        raws.append(client.raw())
    stream = b"".join(raws)
    assert any(byte >= 0x80 for byte in stream) and b"\x00" in stream
    messages = [parse(raw) for raw in raws]
    assert any(get(m, "Event") is None for m in messages)  # lines without ": "
    half = [m for m in messages if get(m, "ObjectName") == "garbage-half"]
    assert half and get(half[0], "Status") is None
    real = [m for m in messages if get(m, "Event") == "PeerEntry" and get(m, "Status")]
    assert sorted(get(m, "ObjectName") for m in real) == sorted(p.name for p in PEERS)
    assert get(messages[-1], "ListItems") == str(len(PEERS))


def test_wrong_count_lies_in_list_items(serve, connect):
    _, client = logged_in(serve, connect, faults=Faults(wrong_count=True))
    _, entries, complete = client.sippeers()
    assert get(complete, "ListItems") != str(len(entries))


def test_no_complete_sends_every_entry_then_closes(serve, connect):
    _, client = logged_in(serve, connect, faults=Faults(no_complete=True))
    client.send("SIPpeers")
    client.read()
    assert [get(client.read(), "Event") for _ in PEERS] == ["PeerEntry"] * len(PEERS)
    assert client.closed()


@pytest.mark.parametrize(
    ("version", "faults"), [("11", Faults(no_chan_sip=True)), ("21", None), ("22", None)]
)
def test_without_chan_sip_sippeers_is_an_unknown_command(serve, connect, version, faults):
    _, client = logged_in(serve, connect, version=version, faults=faults)
    for action in ("SIPpeers", "SIPshowpeer"):
        client.send(action, ActionID="n", Peer="2001")
        assert client.read() == [
            ("Response", "Error"),
            ("ActionID", "n"),
            ("Message", f"Invalid/unknown command: {action}. {LIST_COMMANDS}"),
        ]


def test_faults_can_change_between_runs(serve, connect):
    sim, client = logged_in(serve, connect)
    sim.faults = Faults(no_chan_sip=True)
    client.send("SIPpeers")
    assert get(client.read(), "Response") == "Error"
    sim.faults = Faults()
    assert len(client.sippeers()[1]) == len(PEERS)


# -- other actions ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "asterisk", "ami"),
    [
        ("1.8", "1.8.32.3", "1.1"),
        ("11", "11.25.3", "1.3"),
        ("13", "13.38.3", "2.10.6"),
        ("16", "16.28.0~dfsg-0+deb11u4", "5.0.4"),
        ("18", "18.24.2", "7.0.3"),
        ("20", "20.10.0", "9.0.0"),
        ("22", "22.10.1+dfsg+~cs6.17.60671434-1", "11.0.0"),
    ],
)
def test_core_settings_report_the_versions(serve, connect, version, asterisk, ami):
    _, client = logged_in(serve, connect, version=version)
    client.send("CoreSettings", ActionID="cs")
    reply = client.read()
    assert reply[:4] == [
        ("Response", "Success"),
        ("ActionID", "cs"),
        ("AMIversion", ami),
        ("AsteriskVersion", asterisk),
    ]
    expected = ["SystemName", "CoreMaxCalls", "CoreMaxLoadAvg", "CoreRunUser", "CoreRunGroup"]
    expected += ["CoreMaxFilehandles", "CoreRealTimeEnabled", "CoreCDRenabled", "CoreHTTPenabled"]
    if version in ("18", "20", "22"):
        expected.append("SoundsSearchCustomDir")
    assert keys(reply)[4:] == expected


def test_core_status_reports_the_startup_time(serve, connect):
    startup = datetime(2024, 3, 9, 7, 5, 1)
    _, client = logged_in(serve, connect, startup=startup)
    client.send("CoreStatus", ActionID="st")
    assert client.read() == [
        ("Response", "Success"),
        ("ActionID", "st"),
        ("CoreStartupDate", "2024-03-09"),
        ("CoreStartupTime", "07:05:01"),
        ("CoreReloadDate", "2024-03-09"),
        ("CoreReloadTime", "07:05:01"),
        ("CoreCurrentCalls", "0"),
    ]


def test_core_status_defaults_to_a_startup_three_days_ago(serve, connect):
    _, client = logged_in(serve, connect)
    client.send("CoreStatus")
    reply = dict(client.read())
    started = datetime.strptime(
        f"{reply['CoreStartupDate']} {reply['CoreStartupTime']}", "%Y-%m-%d %H:%M:%S"
    )
    age = (datetime.now() - started).total_seconds()
    assert abs(age - (3 * 86400 + 4 * 3600 + 5 * 60)) < 60


def test_asterisk_1_4_knows_neither_core_settings_nor_core_status(serve, connect):
    _, client = logged_in(serve, connect, version="1.4")
    for action in ("CoreSettings", "CoreStatus"):
        client.send(action, ActionID="old")
        assert client.read() == [
            ("Response", "Error"),
            ("ActionID", "old"),
            ("Message", "Invalid/unknown command"),
        ]


def test_ping_answers_pong_with_a_timestamp(serve, connect):
    _, client = logged_in(serve, connect)
    client.send("Ping", ActionID="p")
    reply = client.read()
    assert keys(reply) == ["Response", "ActionID", "Ping", "Timestamp"]
    assert re.fullmatch(r"\d{10}\.\d{6}", get(reply, "Timestamp") or "")
    assert abs(float(get(reply, "Timestamp") or 0) - time.time()) < 5


def test_asterisk_1_4_ping_is_a_pong_response(serve, connect):
    _, client = logged_in(serve, connect, version="1.4")
    client.send("Ping", ActionID="p")
    assert client.read() == [("Response", "Pong"), ("ActionID", "p")]


def test_logoff_says_goodbye_and_closes(serve, connect):
    sim, client = logged_in(serve, connect)
    client.send("Logoff", ActionID="bye")
    assert client.read() == [
        ("Response", "Goodbye"),
        ("ActionID", "bye"),
        ("Message", "Thanks for all the fish."),
    ]
    assert client.closed()
    assert sim.actions["Logoff"] == 1


def test_an_unknown_action_is_an_error(serve, connect):
    sim, client = logged_in(serve, connect)
    client.send("FrobnicateAll", ActionID="u")
    assert client.read() == [
        ("Response", "Error"),
        ("ActionID", "u"),
        ("Message", f"Invalid/unknown command: FrobnicateAll. {LIST_COMMANDS}"),
    ]
    assert sim.actions["FrobnicateAll"] == 1


@pytest.mark.parametrize("version", ["1.4", "1.8", "11", "13", "20"])
def test_sip_show_peer_describes_one_peer(serve, connect, version):
    _, client = logged_in(serve, connect, version=version)
    client.send("SIPshowpeer", Peer="2001", ActionID="sp")
    reply = dict(client.read())
    assert (reply["Response"], reply["ActionID"], reply["ObjectName"]) == ("Success", "sp", "2001")
    assert (reply["Status"], reply["Address-IP"], reply["Address-Port"]) == (
        "OK (23 ms)",
        "10.1.2.3",
        "5062",
    )
    assert reply["SIP-Useragent"] == "Yealink SIP-T46S 66.86.0.15"
    assert reply["MaxCallBR"] == "384 kbps"
    client.send("SIPshowpeer", Peer="2004")
    address = dict(client.read())["Address-IP"]
    assert address == ("" if version == "1.4" else "(null)")


@pytest.mark.parametrize(
    ("version", "peer", "ending"),
    [
        ("11", "2004", b"Description: \r\n\r\n"),
        ("11", "ghost", b"Message: Peer ghost not found.\r\n\r\n\r\n"),
        ("1.4", "2004", b"Reg-Contact : \r\n\r\n\r\n"),
        ("1.4", "ghost", b"Message: Peer ghost not found.\r\n\r\n\r\n\r\n"),
    ],
)
def test_sip_show_peer_ends_exactly_as_chan_sip_ends_it(serve, connect, version, peer, ending):
    _, client = logged_in(serve, connect, version=version)
    client.send("SIPshowpeer", Peer=peer)
    client.send("Ping", ActionID="after")
    stream = b""
    while b"ActionID: after" not in stream:
        stream += client.sock.recv(1 << 16)
    reply, _, _ = stream.partition(b"Response: ")[2].partition(b"Response: ")
    assert reply.endswith(ending)  # starts with a key line, so the CRLF count is exact


def test_sip_show_peer_of_an_unknown_peer_is_an_error(serve, connect):
    _, client = logged_in(serve, connect)
    client.send("SIPshowpeer", Peer="ghost", ActionID="g")
    assert client.read() == [
        ("Response", "Error"),
        ("ActionID", "g"),
        ("Message", "Peer ghost not found."),
    ]


# -- construction and command line ------------------------------------------------


def test_versions_are_accepted_in_full_and_unknown_ones_refused():
    assert AmiSimulator(version="11.25.3").version == "11"
    assert AmiSimulator(version="1.8.32.3").version == "1.8"
    with pytest.raises(ValueError, match="unsupported Asterisk version"):
        AmiSimulator(version="9")


def test_only_loopback_addresses_are_accepted():
    with pytest.raises(ValueError, match="loopback"):
        AmiSimulator(host="0.0.0.0")


def test_realistic_peers_are_a_deterministic_mix():
    peers = realistic_peers(2000, seed=7, prefix="d")
    assert peers == realistic_peers(2000, seed=7, prefix="d")
    assert peers != realistic_peers(2000, seed=8, prefix="d")
    assert peers[0].name == "d100000" and peers[-1].name == "d101999"
    kinds = {p.status.split(" ")[0] for p in peers}
    assert kinds == {"OK", "LAGGED", "UNREACHABLE", "UNKNOWN", "Unmonitored"}
    ok = [p for p in peers if p.status.startswith("OK")]
    assert len(ok) > len(peers) / 2
    assert len({p.status for p in ok}) > 20  # varied latency
    for p in peers:
        if p.status == "UNKNOWN":
            assert p.ip is None and p.port == 0
        if p.ip is not None:
            assert p.ip.startswith(("10.", "192.168.")) and 5060 <= p.port <= 5099


def test_main_rejects_an_unknown_asterisk_version(capsys):
    assert main(["--asterisk", "9"]) == 2
    assert "unsupported Asterisk version '9'" in capsys.readouterr().err


def test_version_prints_the_programs_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"mor-ami-simulator {mor_plugin.__version__}\n"


def test_help_names_both_channel_drivers_and_every_default():
    script = Path(sys.executable).with_name("mor-ami-simulator")
    shown = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())
    assert "chan_sip peers" in text and "PJSIP endpoints" in text
    for option, default in [
        ("--host HOST", "127.0.0.1"),
        ("--port PORT", "5038"),
        ("--peers PEERS", "100"),
        ("--endpoints ENDPOINTS", "0"),
        ("--asterisk VERSION", "11"),
        ("--username USERNAME", "mor"),
        ("--secret SECRET", "morsecret"),
        ("--seed SEED", "0"),
    ]:
        described = text.split(f" {option} ", 1)[1].split(" --", 1)[0]
        assert described.endswith(f"(default {default})"), (option, described)


@contextmanager
def simulator_process(*args: str) -> Iterator[tuple[subprocess.Popen[str], str, int]]:
    """``python -m mor_plugin.simulator --port 0 ARGS``: the process, the line it prints once
    it listens, and its port; killed if the test leaves it running."""
    command = [sys.executable, "-m", "mor_plugin.simulator", "--port", "0", *args]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            port = re.search(r"listening on 127\.0\.0\.1:(\d+) ", line)
            assert port, line
            yield proc, line, int(port.group(1))
        finally:
            if proc.poll() is None:
                proc.kill()


def test_command_line_serves_until_sigterm():
    with simulator_process("--peers", "7") as (proc, line, port):
        assert re.fullmatch(
            r"AMI simulator \(Asterisk 11\) listening on 127\.0\.0\.1:\d+ with 7 peers", line
        )
        client = AmiClient(port)
        client.login()
        assert len(client.sippeers()[1]) == 7
        client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_command_line_imitates_the_asterisk_version_it_is_given():
    with simulator_process("--asterisk", "22", "--peers", "3", "--endpoints", "4") as running:
        proc, line, port = running
        assert line.endswith("with 3 peers and 4 PJSIP endpoints")
        client = AmiClient(port)
        assert client.banner == BANNERS["22"]
        client.login()
        client.send("SIPpeers")
        assert get(client.read(), "Response") == "Error"  # no chan_sip in 22
        client.send("PJSIPShowEndpoints")
        assert get(client.read(), "Response") == "Success"
        client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


# -- conformance with traffic recorded from Debian's real Asterisk 16 and 22 ---------------
#
# Every file of tests/data/ami (README.md there describes them) is one TCP conversation
# with a real Asterisk. Each is replayed against the simulator of the same version, set
# up with the peers, contacts and AMI user the recording shows, and what comes back is
# compared byte for byte with what Asterisk sent: framing, CRLFs, key names and order,
# fixed messages, trailing spaces of empty values. Only the values a test names in its
# masks are replaced by "<masked>" -- in both streams, before comparing.

MASK = b"<masked>"
SECRET = "s3cret-sim"
#: a recorded Login carries "Secret: <masked>"; the replay sends the simulator's secret
SECRET_LINE = b"Secret: <masked>\r\n"

#: key -> regular expression of the part of its value to mask ("^.*$": all of it, even
#: an empty value; ".+": a value that is not empty)
Masks = dict[str, str]

#: values that change with the clock or the moment the recorded Asterisk started
CLOCK: Masks = {"Timestamp": ".+", "Uptime": ".+", "LastReload": ".+"}
STARTED: Masks = {
    f"Core{what}{part}": ".+" for what in ("Startup", "Reload") for part in ("Date", "Time")
}
#: registration expiry: seconds left (SIPshowpeer) or a Unix time (PJSIP)
EXPIRY: Masks = {"RegExpire": r"\d+", "ExpirationTime": ".+"}
#: qualify measures again between the two lists of one recording: the digits only
QUALIFY: Masks = {"Status": r"(?<=\()\d+(?= ms\)$)", "RoundtripUsec": r"^\d+$"}
#: the test bed's own configuration of a chan_sip device (MOR's devices row, sip.conf),
#: not protocol: the simulator prints fixed plausible values there
SIP_DEVICE_CONFIG: Masks = {
    key: "^.*$"
    for key in ("Context", "Language", "Maxforwards", "Call-limit", "Callerid", "Codecs")
    + ("QualifyFreq",)
}
#: the same for PJSIP objects (pjsip.conf of the test bed; the simulator takes an AOR's
#: QualifyFrequency from its first contact, and has none for an AOR without contacts);
#: Password is masked in the recording (Asterisk 16 prints it in clear)
PJSIP_CONFIG: Masks = {
    key: "^.*$" for key in ("Context", "Allow", "MaxContacts", "QualifyFrequency", "Password")
}


def mask(data: bytes, masks: Masks) -> bytes:
    for key, part in masks.items():
        pattern = re.compile(rb"(?m)^(" + re.escape(key.encode()) + rb": )([^\r\n]*)\r$")
        value = re.compile(part.encode())

        def masked(m: re.Match[bytes], value: re.Pattern[bytes] = value) -> bytes:
            return m.group(1) + value.sub(MASK, m.group(2)) + b"\r"

        data = pattern.sub(masked, data)
    return data


def lines(data: bytes) -> list[str]:
    """For readable failures: the lines of a stream, each with its line ending."""
    return data.decode("utf-8", "replace").splitlines(keepends=True)


def receive(
    sock: socket.socket, size: int, masks: Masks, until_closed: bool, within: float = 5.0
) -> tuple[bytes, bool]:
    """What arrives until it is as long as the recording (masked), or the server closed
    (or ``within`` seconds passed)."""
    deadline = time.monotonic() + within
    data = b""
    while until_closed or len(mask(data, masks)) < size or not data.endswith(b"\n"):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(1 << 16)
        except socket.timeout:
            return data, False
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def replay(
    sim: AmiSimulator,
    recorded: Transcript,
    masks: Masks,
    provoke: Optional[Callable[[bytes], None]] = None,
) -> None:
    """Send what the client sent; compare each answer with Asterisk's, masked by name.
    ``provoke(recorded burst)`` makes the simulator send what Asterisk sent by itself."""
    with socket.create_connection(("127.0.0.1", sim.port), timeout=5) as sock:
        for number, exchange in enumerate(recorded.exchanges()):
            if exchange.sent is not None:
                secret = f"Secret: {sim.secret}\r\n".encode()
                sock.sendall(exchange.sent.replace(SECRET_LINE, secret))
            elif provoke is not None and number > 0:
                provoke(exchange.received)
            want = mask(exchange.received, masks)
            got, closed = receive(sock, len(want), masks, exchange.closed)
            where = f"{recorded.name}, exchange {number} (after {exchange.sent!r})"
            assert lines(mask(got, masks)) == lines(want), where
            assert mask(got, masks) == want, where
            assert closed == exchange.closed, where
        if recorded.client_closed():  # and nothing more arrived before the client closed
            assert receive(sock, 1 << 30, masks, False, within=0.3)[0] == b""


def recorded_sim(serve, recorded: Transcript, version: str, **kwargs: Any) -> AmiSimulator:
    """The simulator of ``version``, with the AMI user the recording logs in as."""
    login = next(m for m in recorded.messages(">>>") if get(m, "Action") == "Login")
    kwargs.setdefault("peers", [])
    return serve(version=version, username=get(login, "Username"), secret=SECRET, **kwargs)


def test_every_recording_says_how_where_and_when_it_was_recorded():
    names = sorted(path.name for path in RECORDED.glob("*.txt"))
    assert len(names) >= 25, names
    packages = {"16": "1:16.28.0~dfsg-0+deb11u4", "22": "1:22.10.1+dfsg+~cs6.17.60671434-1"}
    for name in names:
        head = "\n".join(transcript(name).header)
        assert "`python -m testbed.record`" in head, name
        assert f"package asterisk {packages[name[3:5]]}" in head, name
        assert re.search(r"^# Date: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$", head, re.M), name
        raw = (RECORDED / name).read_bytes()
        assert b"\r\n" in raw and b"\n# FIXTURE-HEADER-END\n" in raw, name


@pytest.mark.parametrize("version", ["16", "22"])
@pytest.mark.parametrize(
    ("name", "masks"),
    [
        ("login", {}),
        ("logoff", {}),
        ("ping", CLOCK),
        ("coresettings", {}),
        ("corestatus", STARTED),
        ("permission-denied", CLOCK),
    ],
)
def test_simple_actions_answer_as_the_recorded_asterisk(serve, version, name, masks):
    recorded = transcript(f"ast{version}-{name}.txt")
    write = "" if name == "permission-denied" else "system,reporting"
    if version == "22" and name == "coresettings":
        # the recorded 22 has no realtime configured; MOR's servers (and the simulator) do
        masks = {"CoreRealTimeEnabled": ".+"}
    replay(recorded_sim(serve, recorded, version, write=write), recorded, masks)


@pytest.mark.parametrize("version", ["16", "22"])
def test_a_refused_login_is_answered_and_closed_as_the_recorded_asterisk(serve, version):
    recorded = transcript(f"ast{version}-login-refused.txt")
    faults = Faults(auth_fail_delay=0.05)  # Asterisk's 1 s: test_a_wrong_secret_is_refused...
    replay(recorded_sim(serve, recorded, version, faults=faults), recorded, {})


def recorded_peers(recorded: Transcript) -> list[SimPeer]:
    """The chan_sip peers of a SIPpeers or SIPshowpeer recording, first mention wins."""
    peers: dict[str, SimPeer] = {}
    for message in recorded.messages():
        m = dict(message)
        if m.get("Event") == "PeerEntry":
            name, ip, port, flag = m["ObjectName"], m["IPaddress"], m["IPport"], "yes"
            useragent, dynamic = "", m["Dynamic"] == "yes"
        elif m.get("Response") == "Success" and "ObjectName" in m:
            name, ip, port, flag = m["ObjectName"], m["Address-IP"], m["Address-Port"], "Y"
            useragent, dynamic = m["SIP-Useragent"], m["Dynamic"] == "Y"
        else:
            continue
        peers.setdefault(
            name,
            SimPeer(
                name,
                m["Status"],
                None if ip in ("-none-", "(null)") else ip,
                int(port),
                dynamic=dynamic,
                description=m.get("Description", ""),
                useragent=useragent,
                acl=m["ACL"] == flag,
                accountcode=m.get("Accountcode", ""),
            ),
        )
    return list(peers.values())


def test_sippeers_lists_as_the_recorded_asterisk_16(serve):
    recorded = transcript("ast16-sippeers.txt")
    assert [p.status.split(" ")[0] for p in recorded_peers(recorded)] == [
        "OK",
        "LAGGED",
        "UNREACHABLE",
        "Unmonitored",
    ]
    sim = recorded_sim(serve, recorded, "16", peers=recorded_peers(recorded))
    replay(sim, recorded, QUALIFY)


@pytest.mark.parametrize("name", ["sipshowpeer", "sipshowpeer-unknown"])
def test_sipshowpeer_answers_as_the_recorded_asterisk_16(serve, name):
    recorded = transcript(f"ast16-{name}.txt")
    sim = recorded_sim(serve, recorded, "16", peers=recorded_peers(recorded))
    replay(sim, recorded, {**EXPIRY, **SIP_DEVICE_CONFIG})


def test_sipshowpeer_status_is_the_string_sippeers_lists_as_on_16(serve, connect):
    """The listener asks SIPshowpeer for a Reachable that came without Time: its Status
    is the very string SIPpeers lists (recorded from 16: the same peers both ways)."""
    listed = {p.name: p.status for p in recorded_peers(transcript("ast16-sippeers.txt"))}
    shown = {p.name: p.status for p in recorded_peers(transcript("ast16-sipshowpeer.txt"))}
    latency = re.compile(r"\d+(?= ms\)$)")  # qualify measured again in between
    assert {n: latency.sub("N", s) for n, s in shown.items()} == {
        n: latency.sub("N", s) for n, s in listed.items()
    }
    peers = recorded_peers(transcript("ast16-sippeers.txt"))
    client = connect(serve(version="16", peers=peers, secret=SECRET))
    client.login(secret=SECRET)
    for name, status in listed.items():
        client.send("SIPshowpeer", Peer=name)
        assert get(client.read(), "Status") == status


def test_22_refuses_chan_sip_actions_as_unknown_commands(serve):
    recorded = transcript("ast22-sippeers.txt")
    replay(recorded_sim(serve, recorded, "22"), recorded, {})


def recorded_endpoints(recorded: Transcript) -> list[SimEndpoint]:
    """PJSIP endpoints and contacts of a PJSIPShowContacts, PJSIPShowEndpoints or
    PJSIPShowEndpoint recording, in the order the recording first names them."""
    endpoints: dict[str, SimEndpoint] = {}
    for message in recorded.messages():
        m = dict(message)
        event = m.get("Event")
        if event == "EndpointList":
            ep = endpoints.setdefault(m["ObjectName"], SimEndpoint(m["ObjectName"]))
            for item in filter(None, m["Contacts"].split(",")):
                aor, _, uri = item.partition("/")
                if all(c.uri != uri for c in ep.contacts):
                    ep.contacts.append(SimContact(uri, aor=aor))
            continue
        if event == "ContactList":
            name, uri, rtt = m["Endpoint"], m["Uri"], m["RoundtripUsec"]
            via_addr, via_port, call_id = m["ViaAddr"], int(m["ViaPort"]), m["CallId"]
            frequency, timeout = int(m["QualifyFrequency"]), float(m["QualifyTimeout"])
        elif event == "ContactStatusDetail":
            name, uri, rtt = m["EndpointName"], m["URI"], m["RoundtripUsec"]
            address, _, port = m["ViaAddress"].rpartition(":")
            via_addr, via_port, call_id = address, int(port), m["CallID"]
            frequency, timeout = int(m["QualifyFrequency"]), float(m["QualifyTimeout"])
        else:
            continue
        ep = endpoints.setdefault(name, SimEndpoint(name))
        if any(c.uri == uri for c in ep.contacts):
            continue
        ep.contacts.append(
            SimContact(
                uri,
                m["Status"],
                int(rtt) if rtt.isdigit() else 0,
                m["UserAgent"],
                via_addr,
                via_port,
                call_id,
                qualify_frequency=frequency,
                qualify_timeout=timeout,
            )
        )
    return list(endpoints.values())


@pytest.mark.parametrize("version", ["16", "22"])
def test_pjsipshowcontacts_lists_as_the_recorded_asterisk(serve, version):
    recorded = transcript(f"ast{version}-pjsipshowcontacts.txt")
    endpoints = recorded_endpoints(recorded)
    assert [(ep.name, len(ep.contacts)) for ep in endpoints] == [("pj1", 2), ("pj2", 1)]
    sim = recorded_sim(serve, recorded, version, endpoints=endpoints)
    replay(sim, recorded, {**EXPIRY, **QUALIFY})


@pytest.mark.parametrize("version", ["16", "22"])
def test_pjsipshowendpoints_lists_as_the_recorded_asterisk(serve, version):
    recorded = transcript(f"ast{version}-pjsipshowendpoints.txt")
    # pjsip.conf's order: what 16 walks its hash buckets in; 22 sorts by name
    endpoints = sorted(recorded_endpoints(recorded), key=lambda ep: ep.name)
    listed = [
        get(m, "ObjectName") for m in recorded.messages() if get(m, "Event") == "EndpointList"
    ]
    assert listed[:4] == (["pj3", "pj2", "pj1", "pj4"] if version == "16" else sorted(listed[:4]))
    sim = recorded_sim(serve, recorded, version, endpoints=endpoints)
    replay(sim, recorded, {})


#: PJSIPShowEndpoint's events of the endpoint, its auth and its AOR: sorcery dumps of every
#: field (over a hundred for the endpoint), of which the simulator writes a few
OBJECT_DETAILS = ("EndpointDetail", "AuthDetail", "AorDetail")


@pytest.mark.parametrize("version", ["16", "22"])
def test_pjsipshowendpoint_answers_as_the_recorded_asterisk(serve, version):
    recorded = transcript(f"ast{version}-pjsipshowendpoint.txt")
    endpoints = recorded_endpoints(recorded) + [SimEndpoint("pj3")]
    sim = recorded_sim(serve, recorded, version, endpoints=endpoints)
    masks = {**EXPIRY, **QUALIFY, **PJSIP_CONFIG}
    with socket.create_connection(("127.0.0.1", sim.port), timeout=5) as sock:
        for exchange in recorded.exchanges():
            if exchange.sent is not None:
                sock.sendall(exchange.sent.replace(SECRET_LINE, f"Secret: {SECRET}\r\n".encode()))
            want = mask(exchange.received, masks)
            if b"Event: EndpointDetail\r\n" not in want:  # banner, login, error, logoff
                got, closed = receive(sock, len(want), masks, exchange.closed)
                assert lines(mask(got, masks)) == lines(want)
                assert closed == exchange.closed
                continue
            got = b""
            while not (b"Event: EndpointDetailComplete" in got and got.endswith(b"\r\n\r\n")):
                chunk = sock.recv(1 << 16)
                assert chunk, got
                got += chunk
            got = mask(got, masks)
            assert got.count(b"\r\n\r\n\r\n") == want.count(b"\r\n\r\n\r\n") == 0
            ours, real = split_messages(got), split_messages(want)
            assert [get(parse(m), "Event") for m in ours] == [get(parse(m), "Event") for m in real]
            for message, recorded_message in zip(ours, real):
                if get(parse(recorded_message), "Event") not in OBJECT_DETAILS:
                    # framing, ContactStatusDetail, EndpointDetailComplete with ListItems
                    assert lines(message) == lines(recorded_message)
                    continue
                # of the hundred-odd fields: each of the simulator's is one of Asterisk's,
                # with Asterisk's value, in Asterisk's order
                pairs, recorded_pairs = parse(message), parse(recorded_message)
                assert pairs[:4] == recorded_pairs[:4]  # Event, ActionID, ObjectType, ObjectName
                positions = [recorded_pairs.index(pair) for pair in pairs]
                assert positions == sorted(positions), (pairs, recorded_pairs)


def provoke_peer_status(sim: AmiSimulator) -> Callable[[bytes], None]:
    """Emit each chan_sip PeerStatus of a recorded burst as chan_sip's qualify would see it:
    Reachable and Lagged with the round trip the phone answered in (50 ms, 700 ms)."""

    def provoke(burst: bytes) -> None:
        for message in (dict(parse(m)) for m in split_messages(burst)):
            status, peer = message["PeerStatus"], message["Peer"].split("/", 1)[1]
            latency = {"Reachable": 50, "Lagged": 700}.get(status)
            time_ms = int(message["Time"]) if "Time" in message else latency
            address = message.get("Address")
            host, _, port = (address or "").rpartition(":")
            sim.emit_peer_status(
                peer,
                status,
                time_ms,
                address=(host, int(port)) if address else None,
                cause=message.get("Cause"),
            )

    return provoke


def test_chan_sip_peer_status_events_are_those_of_the_recorded_asterisk_16(serve):
    recorded = transcript("ast16-events-sip.txt")
    seen = [(get(m, "PeerStatus"), get(m, "Time")) for m in recorded.messages()]
    assert [s for s in seen if s[0]] == [
        ("Registered", None),
        ("Reachable", None),  # no Time on 16, though qualify measured one
        ("Lagged", None),
        ("Reachable", None),
        ("Unreachable", "-1"),
        ("Reachable", None),  # after Unreachable: no Time either
        ("Unregistered", None),
    ]
    sim = recorded_sim(serve, recorded, "16", peers=[SimPeer("105", "UNKNOWN")])
    replay(sim, recorded, CLOCK, provoke_peer_status(sim))


@pytest.mark.parametrize("version", ["16", "22"])
def test_pjsip_contact_and_peer_status_events_are_those_of_the_recorded_asterisk(serve, version):
    recorded = transcript(f"ast{version}-events-pjsip.txt")
    kinds = [(get(m, "Event"), get(m, "PeerStatus") or get(m, "ContactStatus")) for m in
             recorded.messages() if get(m, "Event") in ("PeerStatus", "ContactStatus")]  # fmt: skip
    assert kinds == [
        ("ContactStatus", "NonQualified"),
        ("PeerStatus", "Reachable"),  # ChannelType: PJSIP, before the contact's event
        ("ContactStatus", "Reachable"),
        ("PeerStatus", "Unreachable"),
        ("ContactStatus", "Unreachable"),
        ("PeerStatus", "Reachable"),
        ("ContactStatus", "Reachable"),
        ("PeerStatus", "Unreachable"),
        ("ContactStatus", "Removed"),
    ]
    sim = recorded_sim(serve, recorded, version)

    def provoke(burst: bytes) -> None:
        # only the contacts' events: the simulator must add the endpoint's PeerStatus
        for message in (dict(parse(m)) for m in split_messages(burst)):
            if message["Event"] == "ContactStatus":
                rtt = int(message["RoundtripUsec"])
                status = message["ContactStatus"]
                sim.emit_contact_status(message["EndpointName"], message["URI"], status, rtt)

    replay(sim, recorded, CLOCK, provoke)
